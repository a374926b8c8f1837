"""What each of the 2 gloo ranks runs in test_parallel.py: every check compares a wrapper with a single-process
reference computed on the same rank, and records its outcome instead of raising, so that one spawned group
(a few seconds of torch imports per process) serves every check.

Exactness: a data-parallel step averages per-rank mean gradients, (g0 + g1) / 2. A single process on the
concatenated batch computes the same mean, but its matmuls sum the 2B rows in another order, so float32
results differ in the last bits (bitwise equality with that is unattainable by any implementation). The
exact reference is therefore the single process computing g0 and g1 separately on the same model and
averaging them: with 2 ranks a + b = b + a and halving are exact, so DDP/FSDP must match it bit for bit
(torch.equal) in float32. The literal single-forward reference is checked in float64 to 1e-10.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.optim import AdamW, OptimizerConfig, build_optimizer
from scratchlm.optim.param_groups import uses_decay
from scratchlm.parallel import DDP, FSDP, ZeroRedundancyOptimizer
from scratchlm.parallel.fsdp import FlatParam

VOCAB, SEQ, BATCH = 64, 16, 2


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, unused: bool = False) -> TransformerLM:
    """Tied embeddings, a frozen norm gain, optionally a parameter that forward never uses."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, context_length=SEQ, d_model=32, n_layers=2, n_heads=2, tie_embeddings=True,
                      attention="naive")
    model = TransformerLM(cfg, dtype=dtype)
    model.layers[0].ffn_norm.weight.requires_grad_(False)
    if unused:
        model.unused = nn.Parameter(torch.randn(8, dtype=dtype))
    return model


def batch(rank: int, step: int, micro: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    t = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())  # in the logits' dtype (float64 stays float64)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def set_reference_grads(ref: nn.Module, step: int, world: int, accum: int = 1, none_if_unused: bool = True) -> None:
    """ref's grads = mean over ranks of each rank's accumulated gradient, as the ranks compute them."""
    per_rank = []
    for r in range(world):
        ref.zero_grad(set_to_none=True)
        for m in range(accum):
            x, y = batch(r, step, m)
            (loss_of(ref, x, y) / accum).backward()
        per_rank.append([p.grad for p in trainable(ref)])
    for i, p in enumerate(trainable(ref)):
        grads = [g[i] for g in per_rank]
        if all(g is None for g in grads):
            p.grad = None if none_if_unused else torch.zeros_like(p)
            continue
        total = grads[0] if grads[0] is not None else torch.zeros_like(p)
        for g in grads[1:]:
            total = total + (g if g is not None else torch.zeros_like(p))
        p.grad = total / world


def first_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> str | None:
    if a.keys() != b.keys():
        return f"keys differ: {sorted(a.keys() ^ b.keys())}"
    for k in a:
        if not isinstance(a[k], Tensor) or not isinstance(b[k], Tensor):
            if a[k] != b[k]:
                return f"{k}: {a[k]} != {b[k]}"
        elif not torch.equal(a[k], b[k]):
            return f"{k}: max |diff| {(a[k].double() - b[k].double()).abs().max().item():.3g}"
    return None


# -- checks -------------------------------------------------------------------------------------------


def check_ddp(rank: int, world: int, bucket_size_mb: float | None, find_unused: bool, accum: int,
              steps: int = 3) -> dict:
    model = make_model(seed=rank, unused=True)  # rank 1 starts elsewhere: DDP must broadcast rank 0's weights
    ref = make_model(seed=0, unused=True)
    ddp = DDP(model, bucket_size_mb=bucket_size_mb, find_unused_parameters=find_unused)
    opt, ref_opt = (build_optimizer(m, OptimizerConfig(lr=1e-2)) for m in (model, ref))
    for step in range(steps):
        for m in range(accum):
            x, y = batch(rank, step, m)
            with ddp.no_sync() if m < accum - 1 else nullcontext():
                (loss_of(ddp, x, y) / accum).backward()
        ddp.finish_gradient_synchronization()
        unused_is_none = model.unused.grad is None
        opt.step()
        opt.zero_grad(set_to_none=True)
        set_reference_grads(ref, step, world, accum, none_if_unused=find_unused)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    return {"difference": first_difference(model.state_dict(), ref.state_dict()),
            "unused_is_none": unused_is_none, "n_buckets": len(ddp.buckets),
            "n_params": len(trainable(model)), "flat_buckets": sum(b.flat is not None for b in ddp.buckets)}


def check_ddp_accumulation_needs_no_sync(rank: int, world: int) -> dict:
    """Two backwards before finish without no_sync would average a half-reduced gradient: refused."""
    ddp = DDP(make_model(), bucket_size_mb=0.02)
    x, y = batch(rank, 0)
    loss_of(ddp, x, y).backward()
    try:
        loss_of(ddp, x, y).backward()
    except RuntimeError as e:
        return {"message": str(e)}
    return {"message": None}


def check_ddp_float64_concatenated(rank: int, world: int, steps: int = 3) -> dict:
    """The literal reference: one forward over all ranks' batches, concatenated."""
    model, ref = make_model(torch.float64), make_model(torch.float64)
    ddp = DDP(model, bucket_size_mb=0.01)
    opt, ref_opt = (build_optimizer(m, OptimizerConfig(lr=1e-2)) for m in (model, ref))
    for step in range(steps):
        x, y = batch(rank, step)
        loss_of(ddp, x, y).backward()
        ddp.finish_gradient_synchronization()
        opt.step()
        opt.zero_grad(set_to_none=True)
        xs, ys = zip(*(batch(r, step) for r in range(world)))
        loss_of(ref, torch.cat(xs), torch.cat(ys)).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    sd, ref_sd = model.state_dict(), ref.state_dict()
    return {"max_diff": max((sd[k] - ref_sd[k]).abs().max().item() for k in sd)}


def check_zero(rank: int, world: int, optimizer_class: type, steps: int = 10) -> dict:
    """ZeRO-1 vs the unsharded optimizer on identical gradients; then state_dict round trip."""
    model, ref = make_model(), make_model()

    def groups(m: nn.Module) -> list[dict]:
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if uses_decay(n, p)], "weight_decay": 0.1},
                {"params": [p for n, p in named if not uses_decay(n, p)], "weight_decay": 0.0}]

    kwargs = {"lr": 1e-2, "betas": (0.9, 0.95)}
    zero = ZeroRedundancyOptimizer(groups(model), optimizer_class, **kwargs)
    ref_opt = optimizer_class(groups(ref), **kwargs)

    def step(i: int) -> None:
        g = torch.Generator().manual_seed(i)  # the same gradients on every rank, as after DDP
        for p, q in zip(trainable(model), trainable(ref)):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        zero.step()
        ref_opt.step()
        zero.zero_grad()
        ref_opt.zero_grad()

    for i in range(steps):
        step(i)
    out = {"difference": first_difference(model.state_dict(), ref.state_dict()),
           "owned": sum(p.numel() for p, r in zip(zero.all_params, zero.owner) if r == rank),
           "total": sum(p.numel() for p in zero.all_params)}
    full = zero.state_dict()
    if rank == 0:
        reference = ref_opt.state_dict()
        out["state_equal"] = (full["param_groups"] == reference["param_groups"]) and all(
            first_difference(full["state"][i], reference["state"][i]) is None for i in reference["state"])
    # a fresh sharded optimizer restored from the full state continues exactly like the reference
    full_list = [full]
    dist.broadcast_object_list(full_list, src=0)
    zero = ZeroRedundancyOptimizer(groups(model), optimizer_class, **kwargs)
    zero.load_state_dict(full_list[0])
    for i in range(steps, steps + 2):
        step(i)
    out["difference_after_reload"] = first_difference(model.state_dict(), ref.state_dict())
    return out


def check_fsdp(rank: int, world: int, compute_dtype: torch.dtype | None, steps: int = 3) -> dict:
    model, ref = make_model(seed=rank), make_model(seed=0)
    fsdp = FSDP(model, units=model.layers, compute_dtype=compute_dtype,
                group_fn=lambda n, p: "decay" if uses_decay(n, p) else "no_decay")
    shards = fsdp.shards_by_group()
    opt = AdamW([{"params": shards["decay"], "weight_decay": 0.1}, {"params": shards["no_decay"], "weight_decay": 0.0}],
                lr=1e-2, betas=(0.9, 0.95))  # as build_optimizer's defaults (OptimizerConfig)
    ref_opt = build_optimizer(ref, OptimizerConfig(lr=1e-2))
    gathers = count_gathers()
    out: dict = {"losses": [], "ref_losses": []}
    for step in range(steps):
        x, y = batch(rank, step)
        loss = loss_of(fsdp, x, y)
        gathered_after_forward = len(fsdp._gathered)
        loss.backward()
        fsdp.finish_gradient_synchronization()
        if step == 0:
            out["gathers_per_step"] = dict(gathers)
            out["gathered_after_forward"] = gathered_after_forward
            out["alive_after_backward"] = sum(f.full_for_backward is not None for f in fsdp.flat_params)
            set_reference_grads(ref, step, world)
            out["grad_rel_error"] = shard_grad_error(fsdp, ref, rank)
        else:
            set_reference_grads(ref, step, world)
        out["losses"].append(float(loss))
        out["ref_losses"].append(float(loss_of(ref, x, y).detach()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    gathers.restore()
    full = fsdp.full_state_dict()
    out["is_none_off_rank0"] = full is None if rank != 0 else True
    if rank == 0:
        out["difference"] = first_difference(full, ref.state_dict())
    return out


def shard_grad_error(fsdp: FSDP, ref: nn.Module, rank: int) -> float:
    """Largest relative L2 error of a shard's gradient against the reference's slice."""
    named = dict(ref.named_parameters())
    worst = 0.0
    for flat in fsdp.flat_params:
        expected = flat.slice_of(torch.cat([named[n[0]].grad.reshape(-1) for n in flat.names]))
        err = (flat.shard.grad - expected).norm() / expected.norm().clamp_min(1e-12)
        worst = max(worst, err.item())
    return worst


class count_gathers(dict):
    """Counts FlatParam.gather calls per unit while installed (restore() removes the patch)."""

    def __init__(self) -> None:
        super().__init__()
        original = FlatParam.gather

        def gather(flat: FlatParam) -> Tensor:
            key = flat.names[0][0].split(".")[0] + ("." + flat.names[0][0].split(".")[1]
                                                     if flat.names[0][0].startswith("layers") else "")
            self[f"{key}/{flat.group}"] = self.get(f"{key}/{flat.group}", 0) + 1
            return original(flat)

        self._original = original
        FlatParam.gather = gather

    def restore(self) -> None:
        FlatParam.gather = self._original


def check_trainer_resume(rank: int, world: int, mode: str, out_dir: Path, token_files: tuple[str, str]) -> dict:
    """A sharded run interrupted after a checkpoint and resumed equals the uninterrupted run."""
    from scratchlm.train import Trainer, load_checkpoint
    from scratchlm.train.metrics import read_metrics
    from tests.train.conftest import tiny_config

    def config(name: str):
        cfg = tiny_config(out_dir / f"{mode}-{name}", tuple(map(Path, token_files)), steps=6, checkpoint_interval=3,
                          eval_interval=3, eval_batches=2, batch_size=4)
        cfg.parallel.mode = mode
        cfg.model.tie_embeddings = True
        return cfg

    Trainer(config("full")).fit(report=lambda _: None)
    interrupted = Trainer(config("resumed"))
    for _ in range(3):
        interrupted.train_step()
    interrupted.save()
    dist.barrier()  # the checkpoint is on disk before any rank reads it
    Trainer(config("resumed"), resume=True).fit(report=lambda _: None)
    dist.barrier()
    if rank != 0:
        return {}
    losses = {name: {r["step"]: r["loss"] for r in read_metrics(out_dir / f"{mode}-{name}") if r["split"] == "train"}
              for name in ("full", "resumed")}
    full, resumed = (load_checkpoint(out_dir / f"{mode}-{name}") for name in ("full", "resumed"))
    return {"losses_full": losses["full"], "losses_resumed": losses["resumed"],
            "difference": first_difference(full["model"], resumed["model"]), "world_size": full["world_size"],
            "model_keys_match": set(full["model"]) == set(TransformerLM(config("full").model).state_dict())}


# -- the group ----------------------------------------------------------------------------------------


def checks(rank: int, world: int, out_dir: Path, token_files: tuple[str, str]) -> dict[str, Callable[[], dict]]:
    return {
        "ddp per-parameter": lambda: check_ddp(rank, world, None, find_unused=True, accum=1),
        "ddp bucket smaller than any parameter": lambda: check_ddp(rank, world, 1e-6, find_unused=False, accum=1),
        "ddp medium buckets, no_sync accumulation": lambda: check_ddp(rank, world, 0.02, find_unused=True, accum=2),
        "ddp one bucket larger than all, no_sync": lambda: check_ddp(rank, world, 100.0, find_unused=False, accum=2),
        "ddp accumulation without no_sync": lambda: check_ddp_accumulation_needs_no_sync(rank, world),
        "ddp float64 vs concatenated batch": lambda: check_ddp_float64_concatenated(rank, world),
        "zero1 ours": lambda: check_zero(rank, world, AdamW),
        "zero1 torch": lambda: check_zero(rank, world, torch.optim.AdamW),
        "fsdp float32": lambda: check_fsdp(rank, world, None),
        "fsdp bfloat16 compute": lambda: check_fsdp(rank, world, torch.bfloat16),
        "trainer zero1 resume": lambda: check_trainer_resume(rank, world, "zero1", out_dir, token_files),
        "trainer fsdp resume": lambda: check_trainer_resume(rank, world, "fsdp", out_dir, token_files),
    }


def run_group(rank: int, world: int, port: int, out_dir: str, token_files: tuple[str, str]) -> None:
    """torch.multiprocessing.spawn target: join the gloo group, run every check, write rank<r>.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    try:
        for name, check in checks(rank, world, Path(out_dir), token_files).items():
            try:
                results[name] = {"ok": True, **check()}
            except Exception:  # recorded, reported by the test of that check (and printed: the others may hang)
                results[name] = {"ok": False, "error": traceback.format_exc()}
                print(f"rank {rank}, {name}:\n{results[name]['error']}", file=sys.stderr, flush=True)
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, default=str))
        dist.destroy_process_group()
