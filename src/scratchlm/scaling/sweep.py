"""IsoFLOP sweeps with our trainer: for each compute budget, a few model shapes from one size dial, each
trained for exactly the tokens the budget buys; one results table (JSONL) for `scratchlm scaling fit`.

Shapes: the dial is the depth; d_model = width_per_layer * depth (64: nanochat's aspect ratio; 32 gives
a finer dial for small budgets) in heads of head_dim, SwiGLU width 8/3 d_model; vocabulary, context, batch, optimizer and schedule come from the
base preset. Learning rate: base lr * (base d_model / d_model) ** lr_width_exponent (wider matrices take
smaller steps). Warmup: the base's, at most a tenth of the run. Batch: the base's tokens per step, so the
number of steps is tokens / tokens_per_step (rounded; the exact compute used is recorded).

Resumable: a run whose folder holds summary.json with its planned steps is skipped; one with a
checkpoint resumes. With several devices, runs execute in parallel, one `scratchlm train` process each.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.atomic import write_text_atomic
from scratchlm.config import ConfigError, build_config, save_config, to_dict
from scratchlm.model.config import ModelConfig
from scratchlm.train import DataConfig, TrainConfig, Trainer
from scratchlm.train.metrics import read_metrics

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SweepConfig:
    budgets: list[float] = field(default_factory=lambda: [1e13, 3e13, 1e14], metadata={"help": "training FLOP budgets"})
    depths: list[int] = field(default_factory=list, metadata={"help": "size dials to train at every budget (default: auto around the Chinchilla guess)"})
    params: list[float] = field(default_factory=list, metadata={"help": "model sizes (all parameters, the fits' N) to train at every budget, each on the nearest dial depth; instead of depths"})
    points: int = field(default=5, metadata={"help": "shapes per budget when depths are chosen automatically"})
    base: str = field(default="train/cpu-tiny", metadata={"help": "training preset for everything but the shape"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "token files (default: the base preset's)"})
    out: str = field(default="runs/scaling", metadata={"help": "sweep folder: runs/, plan.json, results.jsonl"})
    lr_width_exponent: float = field(default=1.0, metadata={"help": "lr = base lr * (base d_model / d_model) ** this"})
    width_per_layer: int = field(default=64, metadata={"help": "d_model per layer of depth (the dial's aspect ratio)"})
    head_dim: int = field(default=64, metadata={"help": "attention head width; must divide width_per_layer"})
    min_steps: int = field(default=20, metadata={"help": "shapes whose budget buys fewer steps are left out"})
    devices: list[str] = field(default_factory=lambda: ["auto"], metadata={"help": "devices to run on in parallel, e.g. cuda:0 cuda:1"})

    def __post_init__(self) -> None:
        if not self.budgets or any(b <= 0 for b in self.budgets):
            raise ConfigError(f"budgets must be positive FLOP counts, got {self.budgets}")
        if any(d <= 0 for d in self.depths) or self.points <= 0 or self.min_steps <= 0:
            raise ConfigError("depths, points and min_steps must be positive")
        if not self.devices:
            raise ConfigError("devices must name at least one device")
        if self.depths and self.params:
            raise ConfigError("give depths or params, not both")
        if any(n <= 0 for n in self.params):
            raise ConfigError(f"params must be positive parameter counts, got {self.params}")
        if self.width_per_layer <= 0 or self.head_dim <= 0 or self.width_per_layer % self.head_dim:
            raise ConfigError(f"head_dim ({self.head_dim}) must be positive and divide width_per_layer "
                              f"({self.width_per_layer})")


def shape(base: ModelConfig, depth: int, width_per_layer: int = 64, head_dim: int = 64) -> ModelConfig:
    d_model = width_per_layer * depth
    return dataclasses.replace(base, d_model=d_model, n_layers=depth, n_heads=d_model // head_dim, n_kv_heads=None,
                               d_ff=None)


def nearest_depths(cfg: SweepConfig, base: ModelConfig, targets: list[float], embeddings: bool,
                   max_depth: int = 64) -> list[int]:
    """The dial depths whose sizes (with or without the embedding table) are nearest in log to the targets."""
    sizes = {d: shape(base, d, cfg.width_per_layer, cfg.head_dim).n_params(embeddings=embeddings)
             for d in range(1, max_depth + 1)}
    return sorted({min(sizes, key=lambda d: abs(math.log(sizes[d] / t))) for t in targets})


def auto_depths(cfg: SweepConfig, base: ModelConfig, budget: float) -> list[int]:
    """Depths whose non-embedding size spans 1/4x..4x the Chinchilla guess N = sqrt(C / 120) (D = 20 N)."""
    guess = math.sqrt(budget / 120)
    targets = [guess * 4 ** (2 * i / max(cfg.points - 1, 1) - 1) for i in range(cfg.points)]
    return nearest_depths(cfg, base, targets, embeddings=False)


def sweep_depths(cfg: SweepConfig, base: ModelConfig, budget: float) -> list[int]:
    if cfg.depths:
        return sorted(set(cfg.depths))
    if cfg.params:  # sizes as the fits count them (the results' `params`), e.g. a planned N_opt
        return nearest_depths(cfg, base, cfg.params, embeddings=True)
    return auto_depths(cfg, base, budget)


def run_name(budget: float, depth: int) -> str:
    return f"C{budget:.1e}-depth{depth}".replace("+", "")


@dataclass(frozen=True)
class PlannedRun:
    budget: float
    config: TrainConfig

    @property
    def name(self) -> str:
        return Path(self.config.out).name


def plan_runs(cfg: SweepConfig) -> list[PlannedRun]:
    """Every (budget, depth) run with its training config, in order of budget then size."""
    base = build_config(TrainConfig, cfg.base)
    if cfg.data.train:
        base = dataclasses.replace(base, data=cfg.data)
    if not base.data.train or not base.data.val:
        raise ConfigError(f"the sweep needs data.train and data.val (the base preset {cfg.base} lacks them)")
    runs = []
    for budget in cfg.budgets:
        for depth in sweep_depths(cfg, base.model, budget):
            model = shape(base.model, depth, cfg.width_per_layer, cfg.head_dim)
            steps = round(budget / model.flops_per_token(base.seq_len) / base.tokens_per_step)
            if steps < cfg.min_steps:
                log.warning("%s: only %d steps in budget %.1e; left out", run_name(budget, depth), steps, budget)
                continue
            lr = base.optimizer.lr * (base.model.d_model / model.d_model) ** cfg.lr_width_exponent
            warmup = min(base.schedule.warmup_steps, max(1, steps // 10))
            runs.append(PlannedRun(budget, dataclasses.replace(
                base, model=model, steps=steps, out=str(Path(cfg.out) / "runs" / run_name(budget, depth)),
                optimizer=dataclasses.replace(base.optimizer, lr=lr),
                schedule=dataclasses.replace(base.schedule, warmup_steps=warmup),
                eval_interval=max(1, steps // 10), checkpoint_interval=max(1, steps // 4), keep_best=False,
                sample_tokens=0, log_interval=max(1, steps // 10))))
    if not runs:
        raise ConfigError("every planned run was left out: raise the budgets or lower min_steps")
    return runs


def is_done(run: PlannedRun) -> bool:
    try:
        return json.loads((Path(run.config.out) / "summary.json").read_text())["steps"] == run.config.steps
    except (OSError, KeyError, json.JSONDecodeError):
        return False


def result_row(run: PlannedRun) -> dict[str, Any]:
    """One results-table row from a finished run folder: sizes, compute used, final loss, validation curve."""
    cfg = run.config
    flops_per_step = cfg.model.flops_per_token(cfg.seq_len) * cfg.tokens_per_step
    val = [r for r in read_metrics(cfg.out) if r["split"] == "val"]
    return {"name": run.name, "budget": run.budget, "depth": cfg.model.n_layers,
            "params": cfg.model.n_params(), "params_non_embedding": cfg.model.n_params(embeddings=False),
            "tokens": cfg.steps * cfg.tokens_per_step, "compute": cfg.steps * flops_per_step,
            "loss": val[-1]["loss"], "curve": [[r["step"] * flops_per_step, r["loss"]] for r in val]}


def execute(run: TrainConfig, device: str, in_process: bool, threads: int | None = None) -> None:
    """Train one run on `device` (resuming its checkpoint if any): here, or in a `scratchlm train` process
    with `threads` CPU threads (runs in parallel would otherwise each spin one thread per core)."""
    resume = (Path(run.out) / "checkpoint.pt").exists()
    run = dataclasses.replace(run, device=device)
    if in_process:
        Trainer(run, resume=resume).fit(report=log.debug)
        return
    planned = Path(run.out) / "planned.json"
    planned.parent.mkdir(parents=True, exist_ok=True)
    save_config(run, planned)
    argv = [sys.executable, "-m", "scratchlm", "train", "--config", str(planned)] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads and "OMP_NUM_THREADS" not in os.environ else None
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{run.out} failed:\n{done.stderr[-2000:]}")


def write_results(runs: list[PlannedRun], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(result_row(r)) + "\n" for r in runs if is_done(r)))


def run_sweep(cfg: SweepConfig, report: Callable[[str], None] = print) -> Path:
    """Train every planned run not finished yet, one per free device; return the results table (rewritten
    after each run, so a crash loses at most the runs in flight)."""
    out = Path(cfg.out)
    runs = plan_runs(cfg)
    write_text_atomic(out / "plan.json", json.dumps([{"budget": r.budget, **to_dict(r.config)} for r in runs], indent=1) + "\n")
    save_config(cfg, out / "config.json")
    todo = [r for r in runs if not is_done(r)]
    report(f"{len(runs)} runs planned, {len(runs) - len(todo)} already done -> {out}")
    results, lock, free = out / "results.jsonl", threading.Lock(), queue.Queue()
    for device in cfg.devices:
        free.put(device)

    def train(i: int, run: PlannedRun) -> None:
        device = free.get()
        try:
            m = run.config.model
            report(f"[{i + 1}/{len(todo)}] {run.name}: {m.n_params(embeddings=False) / 1e6:.2f}M params, "
                   f"{run.config.steps * run.config.tokens_per_step:,} tokens, {run.config.steps} steps on {device}")
            execute(run.config, device, in_process=len(cfg.devices) == 1,
                    threads=max(1, (os.cpu_count() or 1) // len(cfg.devices)))
        finally:
            free.put(device)
        with lock:
            write_results(runs, results)
        report(f"    {run.name}: val loss {result_row(run)['loss']:.4f}")

    with ThreadPoolExecutor(max_workers=len(cfg.devices)) as pool:
        for future in [pool.submit(train, i, run) for i, run in enumerate(todo)]:
            future.result()
    write_results(runs, results)
    return results
