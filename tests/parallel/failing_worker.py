"""A torchrun worker whose rank 1 raises while rank 0 waits in a collective (test_parallel's launcher check)."""

import torch
import torch.distributed as dist

from scratchlm.parallel import distributed, rank

if __name__ == "__main__":
    with distributed(torch.device("cpu"), timeout_s=60):
        if rank() == 1:
            raise ValueError("rank 1 failed on purpose")
        dist.barrier()  # never completes: rank 1 is gone
