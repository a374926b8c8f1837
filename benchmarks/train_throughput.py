"""Training throughput on one GPU: scratchlm's TransformerLM vs Hugging Face LlamaForCausalLM of the same shape.

    PYTHONPATH=src python benchmarks/train_throughput.py [--presets tinystories-17m,gpt2-small-124m] [--no-compile]

Both models: same shape (from configs/train/<preset>.toml), same batch of random tokens, bf16 autocast with
float32 master weights, the same training FLOPs per token, a full step (forward, cross-entropy, backward,
global-norm clipping, AdamW step), `torch.compile`d. Ours runs our attention backend switch ("auto": PyTorch
SDPA on CUDA until the Triton kernel lands), our cross-entropy, our clipping and our AdamW; Hugging Face runs
its Llama with attn_implementation="sdpa", torch's fused AdamW and clip_grad_norm_ (its best peer setup).
Timing: CUDA events around `--steps` steps after `--warmup` steps, median of `--repeats`, runs interleaved.
Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.config import build_config  # noqa: E402
from scratchlm.export.hf_llama import llama_config  # noqa: E402
from scratchlm.model import TransformerLM  # noqa: E402
from scratchlm.optim import build_optimizer, clip_grad_norm_, cross_entropy  # noqa: E402
from scratchlm.profiling import CudaEventStopwatch, measure  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402
from scratchlm.train.metrics import peak_flops  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BATCH = {"tinystories-17m": 128, "gpt2-small-124m": 32, "gpt-350m": 16}


def compiled(fn: Callable, args: argparse.Namespace) -> Callable:
    if args.no_compile:
        return fn
    return torch.compile(fn, mode=None if args.compile_mode == "default" else args.compile_mode)


def ours(cfg: TrainConfig, args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = TransformerLM(cfg.model, device="cuda")
    optimizer = build_optimizer(model, cfg.optimizer)

    def loss_fn(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        return cross_entropy(logits, y)

    loss_fn = compiled(loss_fn, args)

    def step(x, y):
        loss_fn(x, y).backward()
        clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def huggingface(cfg: TrainConfig, args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], None]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**llama_config(cfg.model))
    hf_config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(hf_config).to("cuda")
    model.config.use_cache = False
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                  weight_decay=opt.weight_decay, fused=True)

    def loss_fn(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    loss_fn = compiled(loss_fn, args)

    def step(x, y):
        loss_fn(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


IMPLS = {"scratchlm": ours, "huggingface": huggingface}
SDPA_BACKENDS = {"flash": torch.backends.cuda.enable_flash_sdp, "cudnn": torch.backends.cuda.enable_cudnn_sdp,
                 "efficient": torch.backends.cuda.enable_mem_efficient_sdp}


def time_steps(step: Callable, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds per step over `steps` steps in one CUDA-event window (the caller interleaves the repeats)."""
    return measure(lambda: step(x, y), repeats=1, stopwatch=CudaEventStopwatch(), calls_per_repeat=steps).median


def bench_preset(preset: str, batch: int, args: argparse.Namespace) -> dict:
    cfg = build_config(TrainConfig, f"train/{preset}")
    seq = cfg.model.context_length
    gen = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), device="cuda", generator=gen)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    flops_per_token = cfg.model.flops_per_token(seq)
    peak = peak_flops(torch.device("cuda"), torch.bfloat16)
    impls = {name: IMPLS[name] for name in args.impl.split(",")}
    steps, compile_seconds, memory = {}, {}, {}
    for name, make in impls.items():
        torch.manual_seed(0)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        steps[name] = make(cfg, args)
        for _ in range(args.warmup):
            steps[name](x, y)
        torch.cuda.synchronize()
        compile_seconds[name] = time.perf_counter() - t0
        memory[name] = torch.cuda.max_memory_allocated() / 2**30
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.repeats):  # interleaved, so clock and thermal drift hit both alike
        for name in impls:
            times[name].append(time_steps(steps[name], x, y, args.steps))
    rows = {}
    for name in impls:
        t = statistics.median(times[name])
        tps = batch * seq / t
        rows[name] = {"seconds_per_step": t, "spread": [min(times[name]), max(times[name])], "tokens_per_second": tps,
                      "tflops": flops_per_token * tps / 1e12, "mfu": flops_per_token * tps / peak if peak else None,
                      "peak_memory_gib": memory[name], "compile_and_warmup_seconds": compile_seconds[name]}
    del steps
    torch.cuda.empty_cache()
    speedup = rows["huggingface"]["seconds_per_step"] / rows["scratchlm"]["seconds_per_step"] if len(rows) == 2 else None
    return {"preset": preset, "batch": batch, "seq_len": seq, "params": cfg.model.n_params(),
            "flops_per_token": flops_per_token, "results": rows, "speedup": speedup}


def markdown(report: dict) -> str:
    lines = [f"# Training throughput: scratchlm vs Hugging Face Llama ({report['device']})", "",
             f"torch {report['torch']}, transformers {report['transformers']}, bf16 autocast, "
             f"compile={report['compile']}, SDPA backend {report['sdpa_backend']}, {report['steps']} steps x "
             f"{report['repeats']} repeats (median).", "",
             "| preset | params | batch x seq | impl | tokens/s | TFLOP/s | MFU | peak mem GiB | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for name, row in r["results"].items():
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] else "n/a"
            speed = f"{r['speedup']:.2f}x" if name == "scratchlm" and r["speedup"] else ""
            lines.append(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq_len']} | {name} | "
                         f"{row['tokens_per_second']:,.0f} | {row['tflops']:.0f} | {mfu} | {row['peak_memory_gib']:.1f} | {speed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tinystories-17m,gpt2-small-124m")
    parser.add_argument("--batch", type=int, help="sequences per step (default: per preset)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--sdpa-backend", default="default", choices=["default", *SDPA_BACKENDS],
                        help="force PyTorch's SDPA kernel (for both implementations)")
    parser.add_argument("--impl", default="scratchlm,huggingface")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.sdpa_backend != "default":
        for name, enable in SDPA_BACKENDS.items():
            enable(name == args.sdpa_backend)
    import transformers

    runs = []
    for preset in args.presets.split(","):
        runs.append(bench_preset(preset, args.batch or DEFAULT_BATCH.get(preset, 16), args))
        r = runs[-1]
        print(f"{preset}: " + ", ".join(f"{k} {v['tokens_per_second']:,.0f} tok/s MFU {100 * (v['mfu'] or 0):.1f}%"
                                        for k, v in r["results"].items()), flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
              "compile": args.compile_mode if not args.no_compile else False, "sdpa_backend": args.sdpa_backend, "steps": args.steps, "repeats": args.repeats, "runs": runs,
              "run_info": run_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
