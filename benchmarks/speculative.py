"""Speculative decoding vs plain cached decoding at batch 1: tokens/s, acceptance rate, tokens per target forward.

    python benchmarks/speculative.py [--device auto] [--target-preset gpt2-small-124m] [--ks 2,4,8] [--write]
    python benchmarks/speculative.py --target-layers 2 --target-d-model 64 --target-heads 4 --vocab-size 512 \\
        --context-length 128 --draft-layers 1 --draft-d-model 32 --draft-heads 2 --new-tokens 32   # a quick CPU run
    python benchmarks/speculative.py --target-checkpoint runs/big --draft-checkpoint runs/small --prompt "Once"

Target: the model shape of configs/train/<--target-preset> (flags override its depth, width, heads,
vocabulary, context), draft: --draft-layers x --draft-d-model on the same vocabulary and context. With random
weights the acceptance rate says nothing about real drafts (the two models are unrelated, so their
distributions agree only by chance): the timings still show the machinery's cost, and trained checkpoints
(`--target-checkpoint/--draft-checkpoint`, loaded with `load_trained_model`) give the meaningful numbers.

Plain decoding is `generate_batch` with the one prompt (prefill + one forward per token); the draft's own
plain speed gives the cost ratio c = draft forward / target forward. With acceptance rate a, a round of k
drafts yields (1 - a^(k+1)) / (1 - a) tokens for the cost of k c + 1 target forwards (Leviathan et al. 2023),
shown as `expected speedup` beside the measured one. Timings: median of --repeats runs after one warm-up run,
each run a fresh prompt-to-end generation of --new-tokens tokens (no stop tokens). Writes
benchmarks/results/speculative.{json,md} only with --write.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.config import build_config  # noqa: E402
from scratchlm.inference import generate_batch  # noqa: E402
from scratchlm.inference.speculative import speculative_generate  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402
from scratchlm.train.checkpoint import load_trained_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_shapes(args: argparse.Namespace) -> tuple[ModelConfig, ModelConfig]:
    """(target, draft) configs: the preset's shape with the flags given, and the draft on its vocabulary/context."""
    target = build_config(TrainConfig, f"train/{args.target_preset}").model
    overrides = {"n_layers": args.target_layers, "d_model": args.target_d_model, "n_heads": args.target_heads,
                 "vocab_size": args.vocab_size, "context_length": args.context_length}
    target = dataclasses.replace(target, **{k: v for k, v in overrides.items() if v is not None})
    draft = dataclasses.replace(target, n_layers=args.draft_layers, d_model=args.draft_d_model,
                                n_heads=args.draft_heads, n_kv_heads=None, d_ff=None)
    return target, draft


def load_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(target, draft, tokenizer or None): from checkpoints when given, else random weights of `model_shapes`."""
    if args.target_checkpoint or args.draft_checkpoint:
        if not (args.target_checkpoint and args.draft_checkpoint):
            raise SystemExit("give both --target-checkpoint and --draft-checkpoint")
        target, draft = (load_trained_model(p, device) for p in (args.target_checkpoint, args.draft_checkpoint))
        return target.model.to(dtype), draft.model.to(dtype), target.tokenizer
    torch.manual_seed(args.seed)
    target_cfg, draft_cfg = model_shapes(args)
    return (TransformerLM(target_cfg, device=device, dtype=dtype).eval(),
            TransformerLM(draft_cfg, device=device, dtype=dtype).eval(), None)


def make_prompt(args: argparse.Namespace, tokenizer, vocab_size: int) -> list[int]:
    if args.prompt is not None:
        if tokenizer is None:
            raise SystemExit("--prompt needs a checkpoint with a tokenizer; without one use --prompt-len")
        return tokenizer.encode(args.prompt)
    gen = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, vocab_size, (args.prompt_len,), generator=gen).tolist()


def timed(run: Callable[[int], dict], device: torch.device, repeats: int) -> tuple[float, list[dict]]:
    """Median seconds of `run(seed)` over `repeats` runs (seeds 1..repeats) after a warm-up (seed 0), and each
    run's stats."""
    run(0)
    seconds, stats = [], []
    for r in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stats.append(run(r))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), stats


def bench(target, draft, prompt: list[int], args: argparse.Namespace, device: torch.device) -> dict:
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    n = args.new_tokens

    def plain(model) -> Callable[[int], dict]:
        def run(seed: int) -> dict:
            out = generate_batch(model, [prompt], n, seed=args.seed + seed, **sampling)[0]
            assert len(out) == n
            return {}
        return run

    def speculative(k: int) -> Callable[[int], dict]:
        def run(seed: int) -> dict:
            out, stats = speculative_generate(target, draft, prompt, n, k=k, seed=args.seed + seed, **sampling)
            assert len(out) == n
            return stats
        return run

    plain_s, _ = timed(plain(target), device, args.repeats)
    draft_s, _ = timed(plain(draft), device, args.repeats)
    cost_ratio = draft_s / plain_s
    rows = []
    for k in args.ks:
        s, stats = timed(speculative(k), device, args.repeats)
        proposed, accepted = sum(x["proposed"] for x in stats), sum(x["accepted"] for x in stats)
        rate = accepted / proposed
        rows.append({"k": k, "seconds": s, "tokens_per_second": n / s, "speedup": plain_s / s,
                     "acceptance_rate": rate,
                     "tokens_per_target_forward": statistics.mean(x["tokens_per_target_forward"] for x in stats),
                     "expected_speedup": expected_speedup(rate, k, cost_ratio)})
        print(f"k={k}: {n / s:,.1f} tok/s ({plain_s / s:.2f}x), acceptance {rate:.3f}", flush=True)
    return {"plain_tokens_per_second": n / plain_s, "draft_plain_tokens_per_second": n / draft_s,
            "cost_ratio": cost_ratio, "speculative": rows}


def expected_speedup(rate: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s speedup for i.i.d. acceptances at `rate` and a draft costing `cost_ratio` targets."""
    tokens = k + 1 if rate == 1 else (1 - rate ** (k + 1)) / (1 - rate)
    return tokens / (k * cost_ratio + 1)


def markdown(report: dict) -> str:
    r = report["results"]
    lines = [f"# Speculative decoding at batch 1 ({report['device']})", "",
             f"target {report['target']['params'] / 1e6:.1f}M params ({report['target']['source']}), draft "
             f"{report['draft']['params'] / 1e6:.1f}M ({report['draft']['source']}); {report['dtype']}, "
             f"prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens, sampling "
             f"{report['sampling']}, median of {report['repeats']} runs.", "",
             f"Plain cached decoding: target {r['plain_tokens_per_second']:,.1f} tok/s, draft "
             f"{r['draft_plain_tokens_per_second']:,.1f} tok/s (cost ratio c = {r['cost_ratio']:.3f}).", ""]
    if report["random_weights"]:
        lines += ["Random weights: the acceptance rates are chance agreement between unrelated models, not a "
                  "property of speculative decoding.", ""]
    lines += ["| k | tokens/s | speedup | acceptance | tokens / target forward | expected speedup |",
              "|---|---|---|---|---|---|"]
    for row in r["speculative"]:
        lines.append(f"| {row['k']} | {row['tokens_per_second']:,.1f} | {row['speedup']:.2f}x | "
                     f"{row['acceptance_rate']:.3f} | {row['tokens_per_target_forward']:.2f} | "
                     f"{row['expected_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="weights and cache (default: bfloat16 on cuda, else float32)")
    parser.add_argument("--target-preset", default="gpt2-small-124m", help="configs/train/<name>.toml's model shape")
    for flag in ("target-layers", "target-d-model", "target-heads", "vocab-size", "context-length"):
        parser.add_argument(f"--{flag}", type=int, help="override the preset's value")
    parser.add_argument("--draft-layers", type=int, default=4)
    parser.add_argument("--draft-d-model", type=int, default=256)
    parser.add_argument("--draft-heads", type=int, default=4)
    parser.add_argument("--target-checkpoint", type=Path, help="trained target (checkpoint file or run folder)")
    parser.add_argument("--draft-checkpoint", type=Path, help="trained draft on the same tokenizer")
    parser.add_argument("--prompt", help="prompt text (checkpoints with a tokenizer only)")
    parser.add_argument("--prompt-len", type=int, default=32, help="random prompt tokens when no --prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--ks", type=lambda s: [int(k) for k in s.split(",")], default=[2, 4, 8])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/speculative.{json,md}")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    target, draft, tokenizer = load_models(args, device, dtype)
    prompt = make_prompt(args, tokenizer, target.config.vocab_size)
    random_weights = args.target_checkpoint is None
    results = bench(target, draft, prompt, args, device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "random_weights": random_weights,
        "target": {"source": "random" if random_weights else str(args.target_checkpoint),
                   "params": target.num_params(), "config": dataclasses.asdict(target.config)},
        "draft": {"source": "random" if random_weights else str(args.draft_checkpoint),
                  "params": draft.num_params(), "config": dataclasses.asdict(draft.config)},
        "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
        "sampling": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p},
        "results": results, "run_info": run_info(),
    }
    print(markdown(report))
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "speculative.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "speculative.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
