"""`launch(nproc, module, args)`: run `python -m module args...` on nproc ranks of this machine through
torchrun (torch.distributed.run, in this process), as `torchrun --standalone --nproc-per-node N -m ...`.

`--standalone` picks a free local port for the rendezvous, so several runs can share a machine. When a
rank fails, torchrun stops the others; its own report names the rank and exit code, and the rank's
message (printed by the rank to the shared stderr) is just above it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def launch(nproc: int, module: str, args: list[str]) -> int:
    """Exit code: 0 when every rank succeeded, else the lowest failed rank's (1 when it has none)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", module, *args]))
    except ChildFailedError as e:
        # Which rank failed first is not reliably known (exit times are close): name them all. A rank that
        # lost its peer reports a closed connection; the other message is the cause.
        failed = sorted(e.failures)
        code = e.failures[failed[0]].exitcode
        log.error("rank(s) %s of %d failed (exit codes %s); their messages are above", ", ".join(map(str, failed)),
                  nproc, ", ".join(str(e.failures[r].exitcode) for r in failed))
        return code if code and code > 0 else 1
    return 0
