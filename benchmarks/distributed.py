"""Data-parallel training throughput and memory: scratchlm's DDP / ZeRO-1 / FSDP vs torch's DistributedDataParallel.

Run one world size per launch (NCCL_NVLS_ENABLE=0 turns NVLink multicast off, which the lab's machines need):

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 1 benchmarks/distributed.py
    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/distributed.py
    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 4 benchmarks/distributed.py
    python benchmarks/distributed.py --aggregate      # merges the runs: scaling efficiency 1 -> 2 -> 4

Each launch writes benchmarks/results/distributed_ws<N>.{json,md}; --aggregate writes distributed.{json,md}.

Throughput: for each preset (configs/train), the same model (bf16 autocast, float32 master weights, our AdamW,
global-norm clipping) wrapped by torch DDP (its defaults: 25 MiB buckets, overlap), our DDP per parameter,
and our bucketed DDP at --bucket-sizes; `--compile` compiles the forward + loss of every variant. Random
tokens, `--batch` sequences per GPU; CUDA-event timing of `--steps` steps after `--warmup`, median of
`--repeats` interleaved repeats. Tokens/s counts all ranks. "comm wait" is the GPU time between the end of
backward and the moment gradients are averaged, i.e. inside finish_gradient_synchronization (exposed
communication plus the bucket copies); torch DDP waits inside backward, where it cannot be told apart.
Memory: peak allocated per GPU over 3 training steps and the persistent state (parameters + gradients +
optimizer state, measured after the optimizer step) for our ddp-bucketed, zero1 and fsdp, next to the
expected model-state bytes per parameter (16, 8 + 8/N and 16/N with float32 weights and AdamW).
`--device cpu` (gloo, perf_counter timing) is a smoke test of the script on a tiny preset.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.config import build_config  # noqa: E402
from scratchlm.model import TransformerLM  # noqa: E402
from scratchlm.optim import build_optimizer, clip_grad_norm_, cross_entropy  # noqa: E402
from scratchlm.parallel import DDP, ParallelConfig, build_strategy, distributed, rank, world_size  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BATCH = {"gpt2-small-124m": 16, "gpt-350m": 8}
STATE_BYTES = {"ddp-bucketed": lambda n: 16.0, "zero1": lambda n: 8 + 8 / n, "fsdp": lambda n: 16 / n}


class Timer:
    """CUDA events on GPU (no host sync inside the timed loop), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: object, end: object) -> float:
        if not self.cuda:
            return end - start
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3


def make_step(model: torch.nn.Module, module: torch.nn.Module, cfg: TrainConfig, args: argparse.Namespace,
              finish: Callable[[], None] | None, timer: Timer, comm: list[float]) -> Callable:
    device_type = next(module.parameters()).device.type
    optimizer = build_optimizer(module, cfg.optimizer)

    def loss_fn(x, y):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            logits = model(x)
        return cross_entropy(logits, y)

    loss_fn = torch.compile(loss_fn) if args.compile else loss_fn
    marks: list[tuple[object, object]] = []

    def step(x, y):
        loss_fn(x, y).backward()
        if finish is not None:
            start = timer.mark()
            finish()
            marks.append((start, timer.mark()))
        clip_grad_norm_(module.parameters(), cfg.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def collect_comm() -> None:
        comm.extend(timer.seconds(a, b) for a, b in marks)
        marks.clear()

    step.collect_comm = collect_comm
    return step


def variants(cfg: TrainConfig, args: argparse.Namespace, device: torch.device, timer: Timer, comm: dict) -> dict:
    out = {}
    names = ["torch-ddp", "ours-per-param"] + [f"ours-bucketed-{mb:g}MB" for mb in args.bucket_sizes]
    for name in names:
        torch.manual_seed(0)
        module = TransformerLM(cfg.model, device=device)
        comm[name] = []
        if name == "torch-ddp":
            ids = [device.index] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids) if world_size() > 1 else module
            out[name] = make_step(model, module, cfg, args, None, timer, comm[name])
        else:
            bucket = None if name == "ours-per-param" else float(name.split("-")[-1].removesuffix("MB"))
            model = DDP(module, bucket_size_mb=bucket)
            out[name] = make_step(model, module, cfg, args, model.finish_gradient_synchronization, timer, comm[name])
    return out


def bench_throughput(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = build_config(TrainConfig, args.preset_path or f"train/{preset}")
    batch, seq = args.batch or DEFAULT_BATCH.get(preset, 4), cfg.model.context_length
    gen = torch.Generator(device=device).manual_seed(rank())
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), device=device, generator=gen)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    timer, comm = Timer(device), {}
    steps = variants(cfg, args, device, timer, comm)
    for step in steps.values():
        for _ in range(args.warmup):
            step(x, y)
        step.collect_comm()
    for name in comm:  # warmup (and compilation) is not measured
        comm[name].clear()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved: clock and thermal drift hit every variant alike
        for name, step in steps.items():
            dist.barrier()
            start = timer.mark()
            for _ in range(args.steps):
                step(x, y)
            times[name].append(timer.seconds(start, timer.mark()) / args.steps)
            step.collect_comm()
    rows = {}
    for name in steps:
        t = statistics.median(times[name])
        rows[name] = {"seconds_per_step": t, "spread": [min(times[name]), max(times[name])],
                      "tokens_per_second": world_size() * batch * seq / t,
                      "comm_wait_share": statistics.mean(comm[name]) / t if comm[name] else None}
    base = rows["torch-ddp"]["tokens_per_second"]
    for row in rows.values():
        row["vs_torch_ddp"] = row["tokens_per_second"] / base
    return {"preset": preset, "batch_per_gpu": batch, "seq_len": seq, "params": cfg.model.n_params(), "results": rows}


def bench_memory(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Per mode: peak and persistent bytes above what was allocated before the model was built (the batch),
    measured after the optimizer step with every activation and the logits freed."""
    cfg = build_config(TrainConfig, args.preset_path or f"train/{preset}")
    batch, seq = args.batch or DEFAULT_BATCH.get(preset, 4), cfg.model.context_length
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    cuda = device.type == "cuda"
    rows = {}
    for mode in STATE_BYTES:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if cuda else 0
        torch.manual_seed(0)
        strategy = build_strategy(TransformerLM(cfg.model, device=device), cfg.optimizer, ParallelConfig(mode=mode))
        state = 0
        for _ in range(3):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = cross_entropy(strategy.model(x), y)
            loss.backward()
            del loss
            strategy.finish_gradients()
            strategy.clip_grad_norm_(cfg.optimizer.grad_clip)
            strategy.optimizer.step()
            if cuda:
                state = torch.cuda.memory_allocated(device) - base  # params + grads + optimizer state (+ buckets)
            strategy.optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
        n = cfg.model.n_params()
        rows[mode] = {"peak_gib": peak / 2**30, "state_gib": state / 2**30,
                      "expected_state_gib": STATE_BYTES[mode](world_size()) * n / 2**30}
        del strategy
    return {"preset": preset, "batch_per_gpu": batch, "params": cfg.model.n_params(), "results": rows}


def markdown(report: dict) -> str:
    n = report["world_size"]
    lines = [f"# Distributed training on {n} x {report['device']}", "",
             f"torch {report['torch']}, bf16 autocast, compile={report['compile']}, {report['steps']} steps x "
             f"{report['repeats']} repeats (median), batch per GPU as listed, seq as the preset.", "",
             "| preset | impl | tokens/s (all GPUs) | vs torch DDP | comm wait share |", "|---|---|---|---|---|"]
    for run in report["throughput"]:
        for name, row in run["results"].items():
            share = f"{100 * row['comm_wait_share']:.1f}%" if row["comm_wait_share"] is not None else "n/a"
            lines.append(f"| {run['preset']} | {name} | {row['tokens_per_second']:,.0f} | "
                         f"{row['vs_torch_ddp']:.3f} | {share} |")
    lines += ["", "| preset | mode | peak GiB/GPU | state GiB/GPU | expected state GiB/GPU |", "|---|---|---|---|---|"]
    for run in report["memory"]:
        for mode, row in run["results"].items():
            lines.append(f"| {run['preset']} | {mode} | {row['peak_gib']:.2f} | {row['state_gib']:.2f} | "
                         f"{row['expected_state_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def aggregate(out: Path) -> None:
    """Merge distributed_ws<N>.json: per preset and impl, tokens/s at each N and efficiency tps_N / (N tps_1)."""
    runs = {}
    for path in sorted(out.parent.glob(f"{out.name}_ws*.json")):
        report = json.loads(path.read_text())
        runs[report["world_size"]] = report
    if 1 not in runs:
        raise SystemExit(f"no {out.name}_ws1.json in {out.parent}: run the benchmark with --nproc-per-node 1 first")
    table = []
    for run in runs[1]["throughput"]:
        for name, row in run["results"].items():
            entry = {"preset": run["preset"], "impl": name, "tokens_per_second": {}, "efficiency": {}}
            for n, report in sorted(runs.items()):
                match = [r for r in report["throughput"] if r["preset"] == run["preset"]]
                if match and name in match[0]["results"]:
                    tps = match[0]["results"][name]["tokens_per_second"]
                    entry["tokens_per_second"][n] = tps
                    entry["efficiency"][n] = tps / (n * row["tokens_per_second"])
            table.append(entry)
    sizes = sorted(runs)
    lines = ["# Scaling efficiency (tokens/s at N GPUs / (N x tokens/s at 1 GPU))", "",
             "| preset | impl | " + " | ".join(f"{n} GPU tok/s | eff" for n in sizes) + " |",
             "|---|---|" + "---|---|" * len(sizes)]
    for e in table:
        cells = [f"{e['tokens_per_second'].get(n, float('nan')):,.0f} | {100 * e['efficiency'].get(n, float('nan')):.1f}%"
                 for n in sizes]
        lines.append(f"| {e['preset']} | {e['impl']} | " + " | ".join(cells) + " |")
    out.with_suffix(".json").write_text(json.dumps({"scaling": table, "runs": runs}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + "\n".join(markdown(runs[n]) for n in sizes))
    print(out.with_suffix(".md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="gpt2-small-124m,gpt-350m")
    parser.add_argument("--preset-path", help="one preset file instead of configs/train/<preset> (smoke tests)")
    parser.add_argument("--batch", type=int, help="sequences per GPU per step (default: per preset)")
    parser.add_argument("--bucket-sizes", type=float, nargs="+", default=[1.0, 25.0, 100.0], help="MiB")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward + loss of every variant")
    parser.add_argument("--no-memory", action="store_true", help="skip the ddp / zero1 / fsdp memory runs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--aggregate", action="store_true", help="merge distributed_ws*.json into distributed.*")
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed")
    args = parser.parse_args()
    if args.aggregate:
        return aggregate(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs CUDA GPUs (or --device cpu for a smoke test)")
    torch.backends.cuda.matmul.allow_tf32 = True
    with distributed(torch.device(args.device), timeout_s=1800) as device:
        if not dist.is_initialized():
            raise SystemExit("launch with torchrun: torchrun --standalone --nproc-per-node N benchmarks/distributed.py")
        presets = args.presets.split(",")
        throughput = [bench_throughput(p, args, device) for p in presets]
        memory = [] if args.no_memory else [bench_memory(p, args, device) for p in presets]
        if rank() != 0:
            return None
        report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "world_size": world_size(), "torch": torch.__version__, "compile": args.compile, "steps": args.steps,
                  "repeats": args.repeats, "throughput": throughput, "memory": memory, "run_info": run_info()}
        out = args.out.with_name(f"{args.out.name}_ws{world_size()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
