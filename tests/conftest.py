"""Suite-wide helpers: files from the shared data folder, and the gpu/slow markers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from scratchlm.data import sources

MARKERS = {
    "gpu": "needs a CUDA device (run on the device machine)",
    "slow": "long-running; excluded from the default suite",
}


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; registered here too so the suite keeps working when pytest is run
    # with another ini file (`-c`) or from outside the repository.
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA (only when some are selected: importing torch costs time)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def missing_data(message: str) -> NoReturn:
    """Missing shared data fails under CI=true (CI must run what it claims to test) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def shared_data(relpath: str | os.PathLike) -> Path:
    """Path of `relpath` under the data folder (scratchlm.data.sources), or fail/skip the calling test."""
    try:
        return sources.shared_data_path(relpath)
    except FileNotFoundError as e:
        missing_data(str(e))


@pytest.fixture
def data_path():
    """The `shared_data` helper as a fixture: `data_path("tinystories/tinystories_sample.txt")`."""
    return shared_data


@pytest.fixture
def shared_data_dir() -> Path:
    """The data folder itself (sources.data_root()), with the same fail-under-CI, else skip rule."""
    try:
        return sources.data_root()
    except FileNotFoundError as e:
        missing_data(str(e))
