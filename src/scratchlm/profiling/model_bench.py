"""`scratchlm bench model`: how fast one training step of a preset's model runs, phase by phase.

For each variant (fp32 or bf16 autocast, eager or torch.compile) on random tokens:
1) build the model and optimizer as the trainer does (same seed, TF32 on CUDA, `build_optimizer`);
2) warm up (compilation, allocator growth) outside the clock;
3) per repeat, time one step phase by phase with a device sync after each phase: forward (loss),
   backward, optimizer (gradient clipping, step, zero_grad); then one full step with no sync inside it,
   as the trainer runs it. Throughput comes from the full step; the phases say where its time goes;
4) optionally profile a few steps (trace.json) and record a CUDA memory snapshot.
Achieved FLOP/s uses the exact training FLOPs per token of `ModelConfig.flops_per_token` and MFU the
device's datasheet peak (`train.metrics.PEAK_FLOPS`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from scratchlm.atomic import write_text_atomic
from scratchlm.config import ConfigError, build_config, configs_dir, resolve_preset, to_dict, write_run_info
from scratchlm.model import ATTENTION_BACKENDS, TransformerLM, get_attention
from scratchlm.model.config import AttentionBackend
from scratchlm.optim import build_optimizer, clip_grad_norm_, cross_entropy
from scratchlm.profiling import memory as mem
from scratchlm.profiling.timing import Stopwatch, TimingStats, stopwatch_for, synchronize
from scratchlm.profiling.trace import layer_ranges, phase_range, profile_steps, top_ops_table
from scratchlm.train import TrainConfig, resolve_device
from scratchlm.train.loop import autocast_dtype
from scratchlm.train.metrics import peak_flops

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROFILE_STEPS = 2  # steps in trace.json: enough to see a steady-state step next to the first one


@dataclass(kw_only=True)
class BenchConfig:
    # Named train_preset, not preset: build_config's own `preset` argument is a preset of BenchConfig itself.
    train_preset: str = field(default="cpu-tiny", metadata={"flag": "--preset", "help": "training preset whose model and optimizer to measure: a name under configs/train/ or a path"})
    batch: int | None = field(default=None, metadata={"help": "sequences per step; unset = the preset's batch_size"})
    seq: int | None = field(default=None, metadata={"help": "tokens per sequence; unset = the model's context_length"})
    dtype: Literal["auto", "fp32", "bf16", "both"] = field(default="auto", metadata={"help": "compute dtype (bf16 = autocast over fp32 weights); both = one row each; auto = bf16 on CUDA, fp32 elsewhere"})
    compile: Literal["auto", "off", "on", "both"] = field(default="auto", metadata={"help": "torch.compile the forward and loss; both = one row each; auto = the preset's setting on CUDA, off on CPU"})
    attention: AttentionBackend | None = field(default=None, metadata={"help": "attention backend, passed to model.attention; unset = the preset's"})
    repeats: int = field(default=10, metadata={"help": "timed steps per row (median and spread over them)"})
    warmup: int = field(default=3, metadata={"help": "untimed steps first (compilation, allocator warm-up)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto"})
    seed: int = field(default=0, metadata={"help": "seed for the weights and the random tokens"})
    out: str | None = field(default=None, metadata={"help": "run folder for bench.json; unset = runs/bench/<preset>-<time>"})
    profile: bool = field(default=False, metadata={"help": f"write a torch.profiler trace of {PROFILE_STEPS} steps (trace.json, Chrome/Perfetto) and print the top ops"})
    memory: bool = field(default=False, metadata={"help": "write a CUDA memory snapshot (memory_snapshot.pickle) and where peak memory goes"})

    def __post_init__(self) -> None:
        if not self.train_preset:
            raise ConfigError("train_preset must name a training preset, e.g. cpu-tiny")
        for name in ("batch", "seq"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.compile in ("on", "both") and self.warmup < 1:
            raise ConfigError("compile needs warmup >= 1: the first step compiles, and that must not be timed")


@dataclass(frozen=True)
class Variant:
    dtype: str  # "fp32" or "bf16"
    compile: bool

    @property
    def label(self) -> str:
        return f"{self.dtype} {'compiled' if self.compile else 'eager'}"

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-")


def load_train_config(cfg: BenchConfig) -> TrainConfig:
    """The preset's TrainConfig with the bench's attention backend; unknown presets and too-long sequences
    are ConfigErrors that list what is available."""
    name = cfg.train_preset
    try:  # a bare name means configs/train/NAME (configs/speedrun/ has presets of the same names)
        path = resolve_preset(name if Path(name).is_file() or "/" in name else f"train/{name}")
    except ConfigError:
        available = sorted(p.stem for p in (configs_dir() / "train").glob("*.toml"))
        raise ConfigError(f"unknown preset {name!r}; training presets: {', '.join(available) or 'none'} "
                          "(or give a path to a TOML file)") from None
    train_cfg = build_config(TrainConfig, path)
    if cfg.attention is not None:
        train_cfg = dataclasses.replace(train_cfg, model=dataclasses.replace(train_cfg.model, attention=cfg.attention))
    seq = cfg.seq or train_cfg.model.context_length
    if seq > train_cfg.model.context_length:
        raise ConfigError(f"seq {seq} exceeds the model's context_length {train_cfg.model.context_length} "
                          f"(preset {cfg.train_preset}); use --seq <= {train_cfg.model.context_length}")
    return train_cfg


def variants(cfg: BenchConfig, train_cfg: TrainConfig, device: torch.device) -> list[Variant]:
    """One row per (dtype, compile) combination that the config asks for."""
    if cfg.dtype == "auto":
        dtypes = ["bf16" if autocast_dtype("auto", device) == torch.bfloat16 else "fp32"]
    else:
        dtypes = ["fp32", "bf16"] if cfg.dtype == "both" else [cfg.dtype]
    if cfg.compile == "auto":
        compiles = [train_cfg.compile and device.type == "cuda"]  # Inductor on CPU: minutes of C++ builds
    else:
        compiles = {"off": [False], "on": [True], "both": [False, True]}[cfg.compile]
    return [Variant(d, c) for d in dtypes for c in compiles]


class StepRunner:
    """The model, optimizer and one random batch of a variant, with the step split into its three phases."""

    def __init__(self, train_cfg: TrainConfig, variant: Variant, batch: int, seq: int, device: torch.device, seed: int):
        self.cfg, self.device, self.variant = train_cfg, device, variant
        self.dtype = DTYPES[variant.dtype]
        torch.manual_seed(seed)
        self.model = TransformerLM(train_cfg.model, device=device)
        self.optimizer = build_optimizer(self.model, train_cfg.optimizer)
        gen = torch.Generator(device=device).manual_seed(seed)
        tokens = torch.randint(0, train_cfg.model.vocab_size, (batch, seq + 1), device=device, generator=gen)
        self.x, self.y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (batch, seq) each
        self.loss_fn = torch.compile(self._loss) if variant.compile else self._loss
        self.max_norm = train_cfg.optimizer.grad_clip if train_cfg.optimizer.grad_clip > 0 else math.inf
        self.nvtx = device.type == "cuda"

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:  # as Trainer._loss
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(x)  # (batch, seq, vocab)
        return cross_entropy(logits, y, z_loss_weight=self.cfg.z_loss_weight)

    def forward(self) -> Tensor:
        with phase_range("forward", self.nvtx):
            return self.loss_fn(self.x, self.y)

    def backward(self, loss: Tensor) -> None:
        with phase_range("backward", self.nvtx):
            loss.backward()

    def optimizer_step(self) -> None:
        with phase_range("optimizer", self.nvtx):
            clip_grad_norm_(self.model.parameters(), self.max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One training step as the trainer runs it: no host sync inside."""
        self.backward(self.forward())
        self.optimizer_step()

    def phased_step(self, stopwatch: Stopwatch) -> tuple[float, float, float]:
        """One step with each phase timed on its own (the stopwatch syncs at each stop): seconds (fwd, bwd, opt)."""
        stopwatch.start()
        loss = self.forward()
        t_fwd = stopwatch.stop()
        stopwatch.start()
        self.backward(loss)
        t_bwd = stopwatch.stop()
        stopwatch.start()
        self.optimizer_step()
        return t_fwd, t_bwd, stopwatch.stop()


def bench_variant(cfg: BenchConfig, train_cfg: TrainConfig, variant: Variant, device: torch.device,
                  run_dir: Path, file_suffix: str) -> tuple[dict[str, Any], str | None, mem.MemoryBreakdown | None]:
    """Measure one row: its JSON record, the profiler's top-ops table (with --profile) and the memory
    breakdown (with --memory)."""
    batch, seq = cfg.batch or train_cfg.batch_size, cfg.seq or train_cfg.model.context_length
    if device.type == "cuda":  # the previous row's model (in reference cycles of compiled code) must not count
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    runner = StepRunner(train_cfg, variant, batch, seq, device, cfg.seed)

    t0 = time.perf_counter()
    for _ in range(cfg.warmup):
        runner.step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - t0

    stopwatch = stopwatch_for(device)
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for _ in range(cfg.repeats):  # phased and full steps interleaved, so drift affects both alike
        for name, seconds in zip(("forward", "backward", "optimizer"), runner.phased_step(stopwatch)):
            phases[name].append(seconds)
        stopwatch.start()
        runner.step()
        phases["step"].append(stopwatch.stop())
    stats = {name: TimingStats.from_samples(samples) for name, samples in phases.items()}
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None  # before memory_pass resets it

    tokens = batch * seq
    tokens_per_second = tokens / stats["step"].median
    flops_per_token = train_cfg.model.flops_per_token(seq)
    forward_flops = train_cfg.model.forward_flops_per_token(seq) * tokens
    peak = peak_flops(device, runner.dtype)
    record: dict[str, Any] = {
        "label": variant.label, "dtype": variant.dtype, "compile": variant.compile,
        **{name: s.to_dict() for name, s in stats.items()},
        "phases_sum_median": sum(stats[p].median for p in ("forward", "backward", "optimizer")),
        "tokens_per_second": tokens_per_second,
        "tflops": flops_per_token * tokens_per_second / 1e12,
        # forward = 1x, backward = 2x the forward FLOPs (Kaplan et al. 2020, as in flops_per_token)
        "forward_tflops": forward_flops / stats["forward"].median / 1e12,
        "backward_tflops": 2 * forward_flops / stats["backward"].median / 1e12,
        "mfu": flops_per_token * tokens_per_second / peak if peak else None,
        "peak_flops": peak,
        "warmup_seconds": warmup_seconds,
        "trace": None, "memory_snapshot": None, "memory": None,
    }
    # Memory before profiling: the profiler's own buffers would count on CPU.
    breakdown = memory_pass(runner, run_dir / f"memory_snapshot{file_suffix}.pickle" if cfg.memory else None)
    record["memory"] = breakdown.to_dict()
    if cfg.memory and device.type == "cuda":
        record["memory_snapshot"] = f"memory_snapshot{file_suffix}.pickle"
    # The table's peak: on CUDA the allocator's over all timed steps (as the trainer logs it); on CPU the
    # memory pass's count of tensor bytes (see CpuAllocationTracker).
    record["peak_memory_bytes"] = cuda_peak if cuda_peak is not None else breakdown.peak_allocated
    top_ops = None
    if cfg.profile:
        trace_path = run_dir / f"trace{file_suffix}.json"
        with layer_ranges(runner.model) if not variant.compile else nullcontext():  # see layer_ranges on compile
            prof = profile_steps(runner.step, PROFILE_STEPS, device, trace_path)
        record["trace"] = trace_path.name
        top_ops = top_ops_table(prof, device)
    return record, top_ops, breakdown if cfg.memory else None


def memory_pass(runner: StepRunner, snapshot_path: Path | None) -> mem.MemoryBreakdown:
    """One more step, to account for memory: exact sizes of parameters, buffers, gradients and optimizer state;
    the peak and the activations the forward pass saves (CUDA: allocator statistics; CPU: the profiler's
    allocation events); on CUDA with `snapshot_path`, an allocator snapshot of the step."""
    device, model = runner.device, runner.model
    synchronize(device)
    sizes = dict(parameters=mem.parameter_bytes(model), buffers=mem.buffer_bytes(model),
                 optimizer_state=mem.optimizer_state_bytes(runner.optimizer))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        with mem.record_memory_history(device) if snapshot_path else nullcontext():
            before = torch.cuda.memory_allocated(device)  # allocator bookkeeping is on the host: no sync needed
            loss = runner.forward()
            saved = torch.cuda.memory_allocated(device) - before
            runner.backward(loss)
            grads = mem.gradient_bytes(model)
            runner.optimizer_step()
            synchronize(device)
            if snapshot_path:
                mem.dump_snapshot(snapshot_path)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        # Alive before the step: the sizes above and the batch; the tracker counts everything allocated after.
        before = sum(sizes.values()) + mem.tensor_bytes([runner.x, runner.y])
        with mem.CpuAllocationTracker() as allocations:
            loss = runner.forward()
            allocations.mark("forward")
            runner.backward(loss)
            grads = mem.gradient_bytes(model)
            runner.optimizer_step()
        peak, saved = before + allocations.peak, allocations.net_at("forward")
    return mem.MemoryBreakdown(**sizes, gradients=grads, peak_allocated=peak, saved_activations=saved)


def default_run_dir(preset: str) -> Path:
    return Path("runs") / "bench" / f"{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class BenchResult:
    run_dir: Path
    record: dict[str, Any]  # what bench.json holds
    top_ops: dict[str, str] = field(default_factory=dict)  # row label -> profiler table (--profile)
    memory: dict[str, mem.MemoryBreakdown] = field(default_factory=dict)  # row label -> breakdown (--memory)


def run(cfg: BenchConfig) -> BenchResult:
    """Measure every variant of `cfg`, write bench.json, config.json and run_info.json in the run folder."""
    train_cfg = load_train_config(cfg)
    device = resolve_device(cfg.device)
    rows = variants(cfg, train_cfg, device)
    batch, seq = cfg.batch or train_cfg.batch_size, cfg.seq or train_cfg.model.context_length
    backend = attention_backend(train_cfg.model.attention, device)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.train_preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, cfg)
    if device.type == "cuda":  # as the trainer: float32 matmuls on TF32 tensor cores (MFU uses the TF32 peak)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.memory and device.type != "cuda":
        log.warning("--memory on %s: no allocator snapshot (it needs CUDA); the memory summary comes from tensor "
                    "sizes and the profiler's allocation events", device)
    record: dict[str, Any] = {
        "preset": cfg.train_preset, "device": _device_name(device), "batch": batch, "seq": seq, "tokens_per_step": batch * seq,
        "attention": train_cfg.model.attention, "attention_backend": backend,
        "params": train_cfg.model.n_params(),
        "flops_per_token": train_cfg.model.flops_per_token(seq), "train_config": to_dict(train_cfg), "rows": [],
    }
    result = BenchResult(run_dir, record)
    for variant in rows:
        log.info("benchmarking %s: %d warm-up + %d timed steps", variant.label, cfg.warmup, cfg.repeats)
        suffix = "" if len(rows) == 1 else f"-{variant.slug}"
        row, table, breakdown = bench_variant(cfg, train_cfg, variant, device, run_dir, suffix)
        record["rows"].append(row)
        if table is not None:
            result.top_ops[variant.label] = table
        if breakdown is not None:
            result.memory[variant.label] = breakdown
    write_text_atomic(run_dir / "bench.json", json.dumps(record, indent=2) + "\n")
    return result


def attention_backend(name: str, device: torch.device) -> str:
    """The backend `name` resolves to on `device` ("auto" -> naive/sdpa/flash); raises now, before any warm-up,
    when it is not available here."""
    fn = get_attention(name, device.type)
    return next((key for key, backend in ATTENTION_BACKENDS.items() if backend is fn), name)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def format_table(record: dict[str, Any]) -> str:
    """The rows of a bench.json as an aligned text table (times are medians in ms; ± is half the IQR)."""
    header = ["config", "fwd ms", "bwd ms", "opt ms", "step ms ± spread", "tok/s", "TFLOP/s", "MFU", "peak mem"]
    lines = [header]
    for r in record["rows"]:
        lines.append([
            r["label"], _ms(r["forward"]["median"]), _ms(r["backward"]["median"]), _ms(r["optimizer"]["median"]),
            f"{_ms(r['step']['median'])} ± {_ms(r['step']['q75'] / 2 - r['step']['q25'] / 2)}",
            f"{r['tokens_per_second']:,.0f}", f"{r['tflops']:.3g}",
            f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a", _bytes(r["peak_memory_bytes"]),
        ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in lines]
    title = (f"{record['preset']} ({record['params'] / 1e6:.2f}M params, {record['attention_backend']} attention) on "
             f"{record['device']}: batch {record['batch']} x seq {record['seq']}, "
             f"{record['flops_per_token'] / 1e6:.1f} MFLOP/token")
    return "\n".join([title, text[0], "-" * len(text[0]), *text[1:]])


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _bytes(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"
