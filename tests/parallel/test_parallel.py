"""Our DDP, ZeRO-1 and FSDP against single-process references on 2 gloo ranks, resume of sharded runs,
`scratchlm train --nproc 2`, and a failing rank ending the launch instead of hanging.

One spawned group runs every numeric check (workers.py explains the exactness references); each test
below reads its check's outcome."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from scratchlm.parallel import partition_params
from scratchlm.parallel.ddp import make_buckets
from scratchlm.train import load_checkpoint
from scratchlm.train.metrics import read_metrics
from tests.parallel import workers
from tests.train.conftest import write_markov_file

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("parallel")
    tokens = (str(write_markov_file(folder / "train.bin", 20_000, seed=0)),
              str(write_markov_file(folder / "val.bin", 2_000, seed=1)))
    mp.spawn(workers.run_group, args=(WORLD, free_port(), str(folder), tokens), nprocs=WORLD, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]


def outcome(results: list[dict], name: str, rank: int = 0) -> dict:
    for r in range(WORLD):
        assert results[r][name]["ok"], f"rank {r}:\n{results[r][name]['error']}"
    return results[rank][name]


@pytest.mark.parametrize("name", ["ddp per-parameter", "ddp bucket smaller than any parameter",
                                  "ddp medium buckets, no_sync accumulation", "ddp one bucket larger than all, no_sync"])
def test_ddp_equals_single_process_bit_for_bit(results, name):
    for rank in range(WORLD):  # every replica, not only rank 0
        out = outcome(results, name, rank)
        assert out["difference"] is None, out["difference"]
    out = outcome(results, name)
    if "smaller" in name or "per-parameter" in name:
        assert out["n_buckets"] == out["n_params"] and out["flat_buckets"] == 0
    elif "larger" in name:
        assert out["n_buckets"] == 1
    else:
        assert 1 < out["n_buckets"] < out["n_params"]
    # find_unused_parameters: a parameter no rank used keeps grad None; otherwise it is zero-filled
    assert out["unused_is_none"] == ("per-parameter" in name or "medium" in name)


def test_ddp_refuses_accumulation_outside_no_sync(results):
    for rank in range(WORLD):
        assert "no_sync" in (outcome(results, "ddp accumulation without no_sync", rank)["message"] or "")


def test_ddp_float64_equals_one_forward_on_the_concatenated_batch(results):
    assert outcome(results, "ddp float64 vs concatenated batch")["max_diff"] < 1e-10


@pytest.mark.parametrize("name", ["zero1 ours", "zero1 torch"])
def test_zero1_equals_the_unsharded_optimizer(results, name):
    owned = [outcome(results, name, r)["owned"] for r in range(WORLD)]
    total = outcome(results, name)["total"]
    assert sum(owned) == total and max(owned) < 0.75 * total  # each rank keeps state for its share only
    for rank in range(WORLD):
        out = outcome(results, name, rank)
        assert out["difference"] is None, out["difference"]
        assert out["difference_after_reload"] is None, out["difference_after_reload"]
    assert outcome(results, name)["state_equal"]  # gathered state_dict == the unsharded optimizer's


def test_fsdp_float32_equals_single_process(results):
    out = outcome(results, "fsdp float32")
    assert out["difference"] is None, out["difference"]  # gathered full params, bit for bit
    assert out["grad_rel_error"] == 0.0 and out["losses"] == out["ref_losses"]
    assert all(outcome(results, "fsdp float32", r)["is_none_off_rank0"] for r in range(WORLD))
    # every unit gathered once for forward and once more for backward; nothing stays gathered
    assert set(out["gathers_per_step"].values()) == {2} and "layers.1/decay" in out["gathers_per_step"]
    assert out["gathered_after_forward"] == 0 and out["alive_after_backward"] == 0


def test_fsdp_bfloat16_compute_is_close(results):
    out = outcome(results, "fsdp bfloat16 compute")
    assert out["grad_rel_error"] < 0.05
    assert out["losses"] == pytest.approx(out["ref_losses"], rel=1e-2)
    assert out["gathered_after_forward"] == 0 and out["alive_after_backward"] == 0


@pytest.mark.parametrize("mode", ["zero1", "fsdp"])
def test_sharded_checkpoint_resumes_exactly(results, mode):
    out = outcome(results, f"trainer {mode} resume")
    full, resumed = out["losses_full"], out["losses_resumed"]
    assert sorted(resumed) == ["4", "5", "6"] and all(resumed[s] == full[s] for s in resumed)
    assert out["difference"] is None, out["difference"]
    assert out["world_size"] == WORLD and out["model_keys_match"]  # full, unwrapped state_dict


def test_partition_is_balanced_and_buckets_follow_reverse_order():
    numels = [100, 7, 60, 40, 3, 55]
    owner = partition_params(numels, 2)
    loads = [sum(n for n, o in zip(numels, owner) if o == r) for r in range(2)]
    # by hand: 100 -> r0, 60 -> r1, 55 -> r1 (115), 40 -> r0 (140), 7 -> r1 (122), 3 -> r1 (125)
    assert loads == [140, 125]
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (256, 256, 512, 1024)]  # bytes: 1, 1, 2, 4 KiB
    buckets = make_buckets(params, bucket_size_mb=2 / 1024)
    assert [[p.numel() for p in b.params] for b in buckets] == [[1024], [512], [256, 256]]


@pytest.mark.parametrize("name", ["adamw", "muon", "torch-adamw"])
def test_shard_optimizer_wraps_any_optimizer(name):
    """One process owns everything: the sharded optimizer must step exactly like the one it wraps."""
    from scratchlm.optim import OptimizerConfig, build_optimizer
    from scratchlm.parallel import shard_optimizer

    models = [workers.make_model(seed=1) for _ in range(2)]
    if name == "torch-adamw":
        optimizers = [torch.optim.AdamW(workers.trainable(m), lr=1e-2) for m in models]
    else:
        optimizers = [build_optimizer(m, OptimizerConfig(name=name, lr=1e-2)) for m in models]
    optimizers[1] = shard_optimizer(optimizers[1])
    for step in range(3):
        for model, optimizer in zip(models, optimizers):
            x, y = workers.batch(0, step)
            workers.loss_of(model, x, y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert workers.first_difference(models[0].state_dict(), models[1].state_dict()) is None


def scratchlm(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scratchlm", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_train_nproc_2_end_to_end(tmp_path):
    train = write_markov_file(tmp_path / "train.bin", 20_000, seed=0)
    val = write_markov_file(tmp_path / "val.bin", 2_000, seed=1)
    out = tmp_path / "run"
    proc = scratchlm("train", "--config", "train/cpu-tiny", "--nproc", "2", "--parallel", "ddp", "--data.train",
                     str(train), "--data.val", str(val), "--out", str(out), "--steps", "4", "--batch-size", "2",
                     "--log-interval", "2", "--eval-batches", "2", "--sample-tokens", "0", "--model.vocab_size=64",
                     "--model.context_length=32", "--model.n_layers=2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done: 4 steps") == 1  # rank 0 only
    assert "x 2 ranks (ddp)" in proc.stdout
    state = load_checkpoint(out)
    assert state["world_size"] == 2 and state["config"]["parallel"]["mode"] == "ddp"
    assert [r["tokens"] for r in read_metrics(out) if r["split"] == "train"] == [2 * 2 * 32 * 2, 4 * 2 * 32 * 2]


def test_a_failing_rank_fails_the_launch_with_its_message(tmp_path):
    code = "import sys; from scratchlm.parallel import launch; sys.exit(launch(2, 'tests.parallel.failing_worker', []))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert "of 2 failed (exit codes" in proc.stderr


def test_fsdp_model_generates_like_the_plain_model():
    """The trainer samples through the FSDP wrapper (every rank gathers); one process suffices to check it."""
    from scratchlm.inference import generate_batch
    from scratchlm.parallel import FSDP

    plain = workers.make_model(seed=3)
    prompts = [[1, 2, 3], [4, 5]]
    expected = generate_batch(plain, prompts, 6, seed=0)
    for per_block in (False, True):
        model = workers.make_model(seed=3)
        wrapped = FSDP(model, units=model.layers if per_block else ())
        assert generate_batch(wrapped, prompts, 6, seed=0) == expected
