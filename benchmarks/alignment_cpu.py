"""Alignment end to end on a CPU-sized problem: SFT, then GRPO (and DPO) on synthetic arithmetic, with
held-out accuracy before and after each stage. Evidence that the pieces work together, not a benchmark
against a peer (there is no drop-in peer for the whole pipeline).

    python benchmarks/alignment_cpu.py                      # ~3 min on 2 CPU cores
    python benchmarks/alignment_cpu.py --device cuda --digits 3 --sft-steps 2000 --grpo-steps 200   # GPU-sized

1) a random-init model over a byte-level tokenizer (the chat tokens are added and the embeddings resized by
   the SFT stage, as for a real base model); 2) `sft` on "What is a + b?" -> "c" examples, stopped early so
   that the model is right only part of the time; 3) `grpo` from the SFT checkpoint on fresh problems with
   the exact-answer reward; 4) `dpo` from the SFT checkpoint on pairs (correct answer preferred to a wrong
   one) written in the Anthropic HH format. Held-out problems come from a seed stream the training never
   draws from. Writes benchmarks/results/alignment_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"

from scratchlm.alignment import DPOConfig, GRPOConfig, SFTConfig, dpo, grpo, sft  # noqa: E402
from scratchlm.alignment.rewards import ArithmeticTask  # noqa: E402
from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import to_dict  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM  # noqa: E402
from scratchlm.optim import OptimizerConfig, ScheduleConfig  # noqa: E402
from scratchlm.tokenizer import Tokenizer  # noqa: E402
from scratchlm.train.checkpoint import save_checkpoint  # noqa: E402


def base_run(folder: Path, args: argparse.Namespace) -> Path:
    """A random-init model and a byte-level tokenizer (256 bytes + <|endoftext|>), as a run folder."""
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=args.d_model, n_layers=args.layers,
                         n_heads=4)
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(folder / "checkpoint.pt", model=TransformerLM(config), optimizer=None, step=0,
                    config={"model": to_dict(config)}, tokenizer_sha256=tokenizer.hash)
    return folder


def write_data(folder: Path, task: ArithmeticTask, args: argparse.Namespace) -> tuple[Path, Path]:
    """SFT pairs and HH-format preference pairs (chosen: the right sum; rejected: a sum off by 1-10)."""
    rng = random.Random(args.seed + 1)
    sft_path, pref_path = folder / "arithmetic_sft.jsonl", folder / "arithmetic_pairs.jsonl"
    sft_path.write_text("".join(json.dumps({"prompt": p.prompt, "response": p.solution}) + "\n"
                                for p in task.problems(args.sft_examples, seed=args.seed + 2)))
    lines = []
    for p in task.problems(args.dpo_pairs, seed=args.seed + 3):
        wrong = int(p.answer) + rng.choice([-1, 1]) * rng.randint(1, 10)
        lines.append(json.dumps({"chosen": f"\n\nHuman: {p.prompt}\n\nAssistant: {p.solution}",
                                 "rejected": f"\n\nHuman: {p.prompt}\n\nAssistant: {wrong}"}) + "\n")
    pref_path.write_text("".join(lines))
    return sft_path, pref_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "alignment_cpu"), help="scratch folder (replaced)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA), float32 or bfloat16")
    parser.add_argument("--digits", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sft-examples", type=int, default=4000)
    parser.add_argument("--sft-steps", type=int, default=50, help="few enough that the model is right only part of the time")
    parser.add_argument("--grpo-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-4, help="GRPO and DPO learning rate")
    parser.add_argument("--dpo-pairs", type=int, default=400)
    parser.add_argument("--dpo-steps", type=int, default=30)
    parser.add_argument("--eval-problems", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a CPU shared with other jobs, 1 avoids oversubscription stalls)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    task = ArithmeticTask(args.digits, "+")
    sft_data, pref_data = write_data(out, task, args)
    common = {"device": args.device, "dtype": args.dtype, "seed": args.seed}
    times, report = {}, lambda line: print(line, flush=True)

    t = time.perf_counter()
    sft_summary = sft(SFTConfig(base=str(base_run(out / "base", args)), out=str(out / "sft"), data=[str(sft_data)],
                                steps=args.sft_steps, batch_size=32, val_fraction=0.05, log_interval=50,
                                eval_interval=args.sft_steps, checkpoint_interval=0,
                                optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.0),
                                schedule=ScheduleConfig(kind="cosine", warmup_steps=20), **common), report=report)
    times["sft"] = time.perf_counter() - t

    t = time.perf_counter()
    grpo_summary = grpo(GRPOConfig(base=str(out / "sft"), out=str(out / "grpo"), steps=args.grpo_steps, digits=args.digits,
                                   prompts_per_step=16, group_size=8, max_new_tokens=6, temperature=1.0,
                                   loss="grpo_clip", epochs=2, eval_problems=args.eval_problems, batch_size=128,
                                   log_interval=5, eval_interval=args.grpo_steps, checkpoint_interval=0,
                                   optimizer=OptimizerConfig(lr=args.lr, weight_decay=0.0),
                                   schedule=ScheduleConfig(kind="constant", warmup_steps=0), **common), report=report)
    times["grpo"] = time.perf_counter() - t

    t = time.perf_counter()
    dpo_summary = dpo(DPOConfig(base=str(out / "sft"), out=str(out / "dpo"), data=str(pref_data), steps=args.dpo_steps,
                                beta=0.1, batch_size=16, val_fraction=0.25, log_interval=10, eval_interval=args.dpo_steps,
                                checkpoint_interval=0, optimizer=OptimizerConfig(lr=args.lr, weight_decay=0.0),
                                schedule=ScheduleConfig(kind="constant", warmup_steps=0), **common), report=report)
    times["dpo"] = time.perf_counter() - t

    curve = grpo_summary["curve"]
    window = max(1, len(curve) // 4)
    results = {
        "settings": vars(args), "seconds": times, "torch": torch.__version__, "host": platform.node(),
        "sft": {"val_loss_start": sft_summary["val_start"]["loss"], "val_loss_end": sft_summary["val"]["loss"],
                "data": sft_summary["data"]},
        "grpo": {"heldout_accuracy_before": grpo_summary["val_start"]["accuracy"],
                 "heldout_accuracy_after": grpo_summary["val"]["accuracy"],
                 "train_reward_first_steps": sum(c["reward"] for c in curve[:window]) / window,
                 "train_reward_last_steps": sum(c["reward"] for c in curve[-window:]) / window,
                 "curve": curve, "samples_after": grpo_summary["val"]["samples"]},
        "dpo": {"heldout_before": dpo_summary["val_start"], "heldout_after": dpo_summary["val"]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "alignment_cpu.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(RESULTS / "alignment_cpu.md", render(results))
    print(render(results))
    return 0


def render(r: dict) -> str:
    g, d, s = r["grpo"], r["dpo"], r["sft"]
    rewards = " ".join(f"{c['reward']:.2f}" for c in g["curve"])
    return "\n".join([
        f"# Alignment on CPU: {r['settings']['digits']}-digit addition, {r['settings']['d_model']}-wide "
        f"{r['settings']['layers']}-layer model from scratch", "",
        "| stage | measure | before | after | seconds |", "|---|---|---|---|---|",
        f"| SFT ({r['settings']['sft_steps']} steps) | held-out response loss (nats/token) | {s['val_loss_start']:.3f} | "
        f"{s['val_loss_end']:.3f} | {r['seconds']['sft']:.0f} |",
        f"| GRPO ({r['settings']['grpo_steps']} steps) | held-out greedy accuracy ({r['settings']['eval_problems']} problems) | "
        f"{g['heldout_accuracy_before']:.3f} | {g['heldout_accuracy_after']:.3f} | {r['seconds']['grpo']:.0f} |",
        f"| GRPO | mean train reward, first vs last quarter of steps | {g['train_reward_first_steps']:.3f} | "
        f"{g['train_reward_last_steps']:.3f} | |",
        f"| DPO ({r['settings']['dpo_steps']} steps) | held-out reward accuracy (ties = 1/2) | "
        f"{d['heldout_before']['reward_accuracy']:.3f} | {d['heldout_after']['reward_accuracy']:.3f} | {r['seconds']['dpo']:.0f} |",
        f"| DPO | held-out log-prob accuracy (log pi(chosen) > log pi(rejected)) | {d['heldout_before']['logp_accuracy']:.3f} | "
        f"{d['heldout_after']['logp_accuracy']:.3f} | |", "",
        f"GRPO train reward per step: {rewards}", ""])


if __name__ == "__main__":
    raise SystemExit(main())
