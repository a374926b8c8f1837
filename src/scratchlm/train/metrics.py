"""Run metrics: one JSON object per line in `metrics.jsonl` (TensorBoard too, when asked), the device's peak
FLOP/s for MFU, and the one-line progress report."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from scratchlm.atomic import write_text_atomic

log = logging.getLogger(__name__)

# Dense (no sparsity) tensor-core peaks in FLOP/s, from the vendors' datasheets: (bfloat16, float32 via TF32).
PEAK_FLOPS = {
    "H200": (989.4e12, 494.7e12),
    "H100 NVL": (835e12, 417.5e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989.4e12, 494.7e12),  # SXM
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10G": (70e12, 35e12),
    "RTX 4090": (165e12, 82.6e12),
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak matmul FLOP/s in `dtype`, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, fp32) in PEAK_FLOPS.items():  # most specific names first
        if key in name:
            return bf16 if dtype in (torch.bfloat16, torch.float16) else fp32
    return None


class MetricsLog:
    """Appends records to `run_dir/metrics.jsonl` (flushed per record, so a killed run loses nothing logged)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to %s only", self.path)

    def log(self, record: dict[str, Any]) -> None:
        """`record` holds "step" and "split" ("train" or "val") and numbers."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path} (is {run_dir} a training run folder?)")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: everything before it is intact
            continue
    return records


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop records after `step` (a resumed run logs those steps again)."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        kept = [json.dumps(r) + "\n" for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(kept))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def step_line(r: dict[str, Any], total_steps: int) -> str:
    """`step 120/1000 | loss 3.412 | lr 6.0e-04 | gnorm 0.71 | 52.1k tok/s | MFU 41.2% | mem 3.2 GiB | ETA 4m10s`."""
    parts = [f"step {r['step']}/{total_steps}", f"loss {r['loss']:.4f}", f"lr {r['lr']:.2e}", f"gnorm {r['grad_norm']:.2f}",
             f"{r['tokens_per_second'] / 1e3:.1f}k tok/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if r.get("memory_gib") is not None:
        parts.append(f"mem {r['memory_gib']:.1f} GiB")
    parts.append(f"ETA {format_duration(r['eta_seconds'])}")
    return " | ".join(parts)
