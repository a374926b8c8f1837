"""One torch thread for these tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: a thread pool only adds overhead (float64 matmuls on 2 busy cores slow down by
    orders of magnitude), and the distribution tests run thousands of forward passes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
