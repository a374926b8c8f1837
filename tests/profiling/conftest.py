"""One intra-op thread for these tests: their models are tiny, so the thread pool's barriers are all the
parallelism buys, and on busy shared cores a barrier waits for a descheduled thread (a two-dtype cpu bench
run took 9.3 s with 2 threads and 1.1 s with 1 on the 2-core CI machine under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
