import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data(relpath: str) -> Path:
    """A file under the shared data folder; fails under CI=true when it is missing, else skips."""
    root = Path(os.environ.get("SCRATCHLM_DATA", REPO.parent / "shared" / "data"))
    path = root / relpath
    if not path.exists():
        msg = f"{path} is missing: set SCRATCHLM_DATA to the shared data folder (see its MANIFEST.md)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def data_path():
    return shared_data
