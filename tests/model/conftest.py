"""Model tests: every test starts from its own deterministic seed (module init draws from the global RNG)."""

from __future__ import annotations

import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def seeded(request: pytest.FixtureRequest) -> int:
    """Seed torch's global RNG from the test id: fresh inputs per test, the same ones on every run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed
