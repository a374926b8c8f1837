"""The training loop on a CUDA device: bf16 autocast, torch.compile, MFU and memory in the metrics."""

from __future__ import annotations

import pytest
import torch

from scratchlm.train import Trainer, load_checkpoint
from scratchlm.train.metrics import read_metrics
from tests.train.conftest import tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compile_", [False, True])
def test_bf16_training_on_cuda_learns(tmp_path, token_files, compile_):
    cfg = tiny_config(tmp_path / "run", token_files, steps=40, device="cuda", compile=compile_)
    summary = Trainer(cfg).fit(report=lambda _: None)
    assert summary["val"]["loss"] < 2.5
    record = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"][-1]
    assert record["memory_gib"] > 0
    if any(name in torch.cuda.get_device_name() for name in ("H100", "H200")):
        assert 0 < record["mfu"] < 1


def test_cuda_checkpoint_resumes_on_cpu(tmp_path, token_files):
    Trainer(tiny_config(tmp_path / "run", token_files, steps=10, device="cuda")).fit(report=lambda _: None)
    state = load_checkpoint(tmp_path / "run")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    cfg = tiny_config(tmp_path / "run", token_files, steps=12, device="cpu")
    Trainer(cfg, resume=True).fit(report=lambda _: None)
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 12
