"""Executors: run a list of independent tasks, each `fn(job)` writing its own outputs and completion marker.

The pipeline (scratchlm.data.pipeline) owns resumption: it hands an executor only the tasks without a
marker, and a task's outputs appear (by rename) before its marker, so an executor needs no state of its own
and a crash anywhere loses at most the tasks in flight.

- `LocalExecutor(num_workers)`: in this process for one worker (easy to debug, no start-up cost), else a
  pool of spawned processes; a tqdm bar counts finished tasks.
- `RayExecutor(address)`: one Ray task per job on a running cluster (`ray start --head` on the head node,
  `ray start --address HEAD:6379` on the others) or, without an address, on a local Ray instance started
  here. Workers need scratchlm installed and the run folder on a shared file system.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm.auto import tqdm


class Executor(Protocol):
    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str) -> None: ...


@dataclass(frozen=True)
class LocalExecutor:
    num_workers: int = 1
    progress: bool = True

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str) -> None:
        """Run fn on every job; the first exception stops the run (finished tasks stay finished)."""
        if not jobs:
            return
        workers = min(self.num_workers or os.cpu_count() or 1, len(jobs))
        with tqdm(total=len(jobs), desc=desc, unit="task", disable=not self.progress) as bar:
            if workers == 1:
                for job in jobs:
                    fn(job)
                    bar.update()
                return
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending = {pool.submit(fn, job) for job in jobs}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            for other in pending:
                                other.cancel()
                            raise future.exception()
                        bar.update()


@dataclass(frozen=True)
class RayExecutor:
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str) -> None:
        if not jobs:
            return
        try:
            import ray
        except ImportError as e:
            raise ValueError("--executor ray needs Ray: pip install 'ray[default]'") from e
        if not ray.is_initialized():
            # no address: start a local instance (CI, one machine); else join the cluster at that address
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = [remote.remote(job) for job in jobs]
        with tqdm(total=len(jobs), desc=desc, unit="task", disable=not self.progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)  # re-raises a task's exception here
                bar.update(len(done))


def make_executor(kind: str, num_workers: int = 1, address: str | None = None, progress: bool = True) -> Executor:
    if kind == "local":
        return LocalExecutor(num_workers, progress)
    if kind == "ray":
        return RayExecutor(address, num_workers or None, progress)
    raise ValueError(f"unknown executor {kind!r}; expected local or ray")
