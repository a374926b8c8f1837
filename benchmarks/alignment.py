"""Alignment end to end: SFT, then GRPO on synthetic arithmetic and DPO, with held-out measures before and after
each stage. Evidence that the pieces work together, not a benchmark against a peer (there is no drop-in peer for
the whole pipeline).

    python benchmarks/alignment.py --threads 1                     # CPU mode: ~4 min on 2 busy cores
    python benchmarks/alignment.py --base runs/base --device cuda  # real mode: ~6.5 min on an H100
    bash benchmarks/alignment_gpu.sh OUT_DIR                       # pretrain the base on Gutenberg, then real mode

CPU mode: 1) a random-init model over a byte-level tokenizer (the chat tokens are added and the embeddings
resized by the SFT stage, as for a real base model); 2) `sft` on "What is a + b?" -> "c", stopped early so that
the model is right only part of the time; 3) `grpo` from the SFT checkpoint on fresh problems with the
exact-answer reward; 4) `dpo` from the SFT checkpoint on pairs (correct sum preferred to one off by 1-10) in the
Anthropic HH format. Writes benchmarks/results/alignment_cpu.{json,md}.

Real mode (`--base RUN`, a pretrained `scratchlm train` folder): 1) `sft` on GSM8K train solutions mixed with
arithmetic examples, in rounds, stopped once greedy accuracy on dev problems reaches --sft-stop-accuracy (GRPO
needs room to improve); 2) `grpo` on arithmetic; 3) `dpo` on the HH harmless-base pairs (10% held out); 4) report
cards (GSM8K test subset, SimpleSafetyTests, optionally perplexity) for base, SFT, GRPO and DPO and their
comparison table. Writes benchmarks/results/alignment_gpu.{json,md}.

Both modes: held-out arithmetic problems come from a seed stream training never draws from (real mode also
drops them, and the dev problems, from the SFT data), greedy accuracy on them is measured for every checkpoint,
and the curves go to <plots-dir>/<name>_{sft,grpo,dpo}.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"

from scratchlm.alignment import DPOConfig, GRPOConfig, SFTConfig, dpo, grpo, rollout, sft  # noqa: E402
from scratchlm.alignment.chat import prompt_formatter  # noqa: E402
from scratchlm.alignment.finetune import load_chat_model  # noqa: E402
from scratchlm.alignment.rewards import ArithmeticTask, Problem, answer_reward  # noqa: E402
from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import to_dict  # noqa: E402
from scratchlm.eval.datasets import GSM8K_TRAIN  # noqa: E402
from scratchlm.eval.harness import EvalConfig, run_eval  # noqa: E402
from scratchlm.eval.report import compare_table  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM  # noqa: E402
from scratchlm.optim import OptimizerConfig, ScheduleConfig  # noqa: E402
from scratchlm.plotting import pyplot, save_png  # noqa: E402
from scratchlm.tokenizer import Tokenizer  # noqa: E402
from scratchlm.train.checkpoint import load_trained_model, save_checkpoint  # noqa: E402
from scratchlm.train.data import resolve_device  # noqa: E402
from scratchlm.train.loop import autocast_dtype  # noqa: E402
from scratchlm.train.metrics import read_metrics  # noqa: E402

HH_PAIRS = "alignment/hh_rlhf_harmless_base_test.jsonl.gz"
CHECKPOINTS = ("base", "sft", "grpo", "dpo")
# Sizes per mode. CPU mode reproduces benchmarks/results/alignment_cpu.md (a 2M-parameter random-init model);
# real mode is sized for ~6.5 minutes on one H100 with a 100M-parameter base (GPT-2 small's shape, 10k vocab).
SIZES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        name="alignment_cpu", digits=1, eval_problems=100, dev_problems=0, exclude_heldout=False,
        sft_examples=4000, sft_steps=50, sft_round=0, sft_stop_accuracy=1.0, sft_lr=3e-3, sft_batch=32,
        sft_schedule="cosine", sft_val_fraction=0.05,
        grpo_steps=60, grpo_prompts=16, grpo_group=8, grpo_lr=5e-4, grpo_epochs=2, grpo_max_new_tokens=6,
        grpo_batch=128, grpo_eval_interval=0,
        dpo_steps=30, dpo_batch=16, dpo_lr=5e-4, dpo_pairs=400, dpo_val_fraction=0.25, dpo_eval_interval=0,
        eval_tasks="", eval_limit=200, eval_max_new_tokens=256, eval_batch=64),
    "real": dict(
        name="alignment_gpu", digits=2, eval_problems=500, dev_problems=200, exclude_heldout=True,
        sft_examples=20000, sft_steps=600, sft_round=100, sft_stop_accuracy=0.3, sft_lr=2e-4, sft_batch=32,
        sft_schedule="constant", sft_val_fraction=0.02,
        grpo_steps=100, grpo_prompts=32, grpo_group=8, grpo_lr=1e-5, grpo_epochs=2, grpo_max_new_tokens=8,
        grpo_batch=256, grpo_eval_interval=25,
        dpo_steps=150, dpo_batch=16, dpo_lr=2e-5, dpo_pairs=None, dpo_val_fraction=0.1, dpo_eval_interval=25,
        eval_tasks="gsm8k,safety", eval_limit=200, eval_max_new_tokens=256, eval_batch=128),
}
SIZE_HELP = {
    "name": "results file stem in benchmarks/results/ and of the plots",
    "digits": "operand digits of the arithmetic task",
    "eval_problems": "held-out arithmetic problems (greedy accuracy of every checkpoint)",
    "dev_problems": "arithmetic problems that decide when SFT stops (0: none)",
    "exclude_heldout": "drop held-out and dev problems from the SFT data",
    "sft_examples": "synthetic arithmetic SFT examples", "sft_steps": "SFT steps (at most, with rounds)",
    "sft_round": "SFT steps per round between dev checks (0: one run of --sft-steps)",
    "sft_stop_accuracy": "stop SFT once dev greedy accuracy reaches this", "sft_lr": "SFT learning rate",
    "sft_batch": "SFT packed rows per step", "sft_schedule": "SFT LR schedule (rounds need constant)",
    "sft_val_fraction": "share of SFT examples held out for the response loss",
    "grpo_steps": "GRPO steps", "grpo_prompts": "GRPO problems per step", "grpo_group": "GRPO samples per problem",
    "grpo_lr": "GRPO learning rate", "grpo_epochs": "GRPO optimizer steps per rollout batch",
    "grpo_max_new_tokens": "GRPO response length limit", "grpo_batch": "GRPO rows per micro-batch",
    "grpo_eval_interval": "GRPO steps between held-out accuracies (0: start and end)",
    "dpo_steps": "DPO steps", "dpo_batch": "DPO pairs per step", "dpo_lr": "DPO learning rate",
    "dpo_pairs": "DPO pairs (CPU: synthetic pairs written; real: HH pairs read, default all)",
    "dpo_val_fraction": "share of DPO pairs held out", "dpo_eval_interval": "DPO steps between held-out metrics (0: start and end)",
    "eval_tasks": "report-card tasks for every checkpoint (empty: no report cards)",
    "eval_limit": "examples per report-card task (GSM8K test problems, safety prompts, perplexity windows)",
    "eval_max_new_tokens": "report-card generation length limit", "eval_batch": "report-card generation batch",
}

Report = Callable[[str], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="pretrained run folder (checkpoint + tokenizer): real mode")
    parser.add_argument("--out", default=None, help="scratch folder for the runs, replaced (default: runs/<name>)")
    parser.add_argument("--plots-dir", default=str(ROOT / "docs" / "img"), help="folder for the PNG curves")
    parser.add_argument("--perplexity-text", default=None, help="real mode: text file for a perplexity report-card task")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA), float32 or bfloat16")
    parser.add_argument("--d-model", type=int, default=128, help="CPU mode: width of the random-init model")
    parser.add_argument("--layers", type=int, default=2, help="CPU mode: layers of the random-init model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a CPU shared with other jobs, 1 avoids oversubscription stalls)")
    for key, value in SIZES["cpu"].items():
        flag = "--" + key.replace("_", "-")
        help_ = f"{SIZE_HELP[key]} (default: CPU {value}, real {SIZES['real'][key]})"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, type=type(value), default=None, help=help_)
    args = parser.parse_args(argv)
    for key, value in SIZES["real" if args.base else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sft_round and args.sft_schedule != "constant":
        parser.error("--sft-round needs --sft-schedule constant: a cosine schedule depends on the total steps, "
                     "which rounds extend")
    if args.perplexity_text and not args.base:
        parser.error("--perplexity-text is for real mode (--base)")
    return args


# --- inputs ------------------------------------------------------------------------------------------------------


def random_base(folder: Path, args: argparse.Namespace) -> Path:
    """CPU mode: a random-init model and a byte-level tokenizer (256 bytes + <|endoftext|>), as a run folder."""
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=args.d_model, n_layers=args.layers,
                         n_heads=4)
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(folder / "checkpoint.pt", model=TransformerLM(config), optimizer=None, step=0,
                    config={"model": to_dict(config)}, tokenizer_sha256=tokenizer.hash)
    return folder


def write_jsonl(path: Path, records: list[dict]) -> Path:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def arithmetic_sft_data(folder: Path, task: ArithmeticTask, exclude: set[str], args: argparse.Namespace) -> Path:
    """{prompt, response} arithmetic examples, none of whose prompts is in `exclude`."""
    problems = [p for p in task.problems(args.sft_examples, seed=args.seed + 2) if p.prompt not in exclude]
    return write_jsonl(folder / "arithmetic_sft.jsonl", [{"prompt": p.prompt, "response": p.solution} for p in problems])


def arithmetic_pairs(folder: Path, task: ArithmeticTask, args: argparse.Namespace) -> Path:
    """CPU mode's DPO data in the HH format: the right sum chosen, a sum off by 1-10 rejected."""
    rng = random.Random(args.seed + 1)
    records = []
    for p in task.problems(args.dpo_pairs, seed=args.seed + 3):
        wrong = int(p.answer) + rng.choice([-1, 1]) * rng.randint(1, 10)
        records.append({"chosen": f"\n\nHuman: {p.prompt}\n\nAssistant: {p.solution}",
                        "rejected": f"\n\nHuman: {p.prompt}\n\nAssistant: {wrong}"})
    return write_jsonl(folder / "arithmetic_pairs.jsonl", records)


# --- measures ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def arithmetic_accuracy(run: Path, problems: list[Problem], args: argparse.Namespace) -> dict[str, Any]:
    """Greedy accuracy of a checkpoint on `problems` in the chat template, measured as GRPO measures its held-out
    accuracy (same rollout, same reward), so the numbers of the two agree."""
    model, tokenizer = load_chat_model(run, resolve_device(args.device))
    batch = rollout(model.eval(), tokenizer, [p.prompt for p in problems], 1, max_new_tokens=args.grpo_max_new_tokens,
                    temperature=0.0)
    correct = [answer_reward(t, p.answer) for t, p in zip(batch.texts, problems, strict=True)]
    return {"accuracy": sum(correct) / len(correct), "problems": len(correct),
            "samples": [{"prompt": p.prompt, "response": t} for p, t in zip(problems[:3], batch.texts, strict=False)]}


def report_card(run: Path, args: argparse.Namespace) -> dict:
    """The eval harness's report card of one checkpoint, where `scratchlm eval --checkpoint RUN` puts it
    (<run>/eval/checkpoint/, cached per task by the harness)."""
    device = resolve_device(args.device)
    trained = load_trained_model(run, device)
    tasks = args.eval_tasks + (",perplexity" if args.perplexity_text else "")
    cfg = EvalConfig(checkpoint=str(run), tasks=tasks, limit=args.eval_limit, device=args.device, dtype=args.dtype,
                     batch_size=args.eval_batch, max_new_tokens=args.eval_max_new_tokens, seed=args.seed,
                     **({"perplexity_text": args.perplexity_text} if args.perplexity_text else {}))
    return run_eval(cfg, trained.model, trained.tokenizer, run / "eval" / "checkpoint", step=trained.step,
                    dtype=autocast_dtype(args.dtype, device), format_prompt=prompt_formatter(trained.tokenizer))


# --- stages ------------------------------------------------------------------------------------------------------


def stage_configs(out: Path, base: Path, sft_data: list[str], dpo_data: str,
                  args: argparse.Namespace) -> tuple[SFTConfig, GRPOConfig, DPOConfig]:
    common = {"device": args.device, "dtype": args.dtype, "seed": args.seed, "checkpoint_interval": 0}
    sft_cfg = SFTConfig(base=str(base), out=str(out / "sft"), data=sft_data, steps=args.sft_steps,
                        batch_size=args.sft_batch, val_fraction=args.sft_val_fraction, log_interval=25,
                        eval_interval=args.sft_round,
                        optimizer=OptimizerConfig(lr=args.sft_lr, weight_decay=0.0),
                        schedule=ScheduleConfig(kind=args.sft_schedule, warmup_steps=20), **common)
    grpo_cfg = GRPOConfig(base=sft_cfg.out, out=str(out / "grpo"), steps=args.grpo_steps, digits=args.digits,
                          prompts_per_step=args.grpo_prompts, group_size=args.grpo_group,
                          max_new_tokens=args.grpo_max_new_tokens, temperature=1.0, loss="grpo_clip",
                          epochs=args.grpo_epochs, eval_problems=args.eval_problems, batch_size=args.grpo_batch,
                          log_interval=5, eval_interval=args.grpo_eval_interval,
                          optimizer=OptimizerConfig(lr=args.grpo_lr, weight_decay=0.0),
                          # warmup: Adam's first steps move every weight by ~lr whatever its (noisy) gradient
                          schedule=ScheduleConfig(kind="constant", warmup_steps=args.grpo_steps // 10), **common)
    dpo_cfg = DPOConfig(base=sft_cfg.out, out=str(out / "dpo"), data=dpo_data, max_pairs=args.dpo_pairs if args.base else None,
                        steps=args.dpo_steps, beta=0.1, batch_size=args.dpo_batch, val_fraction=args.dpo_val_fraction,
                        log_interval=10, eval_interval=args.dpo_eval_interval,
                        optimizer=OptimizerConfig(lr=args.dpo_lr, weight_decay=0.0),
                        schedule=ScheduleConfig(kind="constant", warmup_steps=0), **common)
    return sft_cfg, grpo_cfg, dpo_cfg


def sft_in_rounds(cfg: SFTConfig, dev: list[Problem], args: argparse.Namespace,
                  report: Report) -> tuple[dict, list[dict]]:
    """SFT in rounds of --sft-round steps (each resumes the last: with a constant LR that is the same run as one
    of the total length), stopping once greedy accuracy on the dev problems reaches --sft-stop-accuracy, so that
    GRPO starts from a model that is right only part of the time. One plain run when --sft-round is 0."""
    if not args.sft_round:
        return sft(cfg, report=report), []
    rounds, first_val = [], None
    for steps in range(args.sft_round, cfg.steps + args.sft_round, args.sft_round):
        summary = sft(dataclasses.replace(cfg, steps=min(steps, cfg.steps)), resume=True, report=report)
        first_val = first_val or summary["val_start"]
        accuracy = arithmetic_accuracy(Path(cfg.out), dev, args)["accuracy"]
        rounds.append({"step": summary["steps"], "dev_accuracy": accuracy})
        report(f"sft round: step {summary['steps']}, dev accuracy {accuracy:.3f} (stop at {args.sft_stop_accuracy})")
        if accuracy >= args.sft_stop_accuracy or summary["steps"] >= cfg.steps:
            break
    return {**summary, "val_start": first_val}, rounds


class Timer:
    """Wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "runs" / args.name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report: Report = lambda line: print(line, flush=True)  # noqa: E731
    timer = Timer()
    # 1) inputs: the base run, the arithmetic problems (held out, dev, SFT), the SFT and DPO data
    task = ArithmeticTask(args.digits, "+")
    held_out = task.problems(args.eval_problems, seed=10_000 + args.seed)  # GRPO's held-out stream (grpo_loop)
    dev = task.problems(args.dev_problems, seed=20_000 + args.seed) if args.dev_problems else []
    exclude = {p.prompt for p in held_out + dev} if args.exclude_heldout else set()
    arithmetic = str(arithmetic_sft_data(out, task, exclude, args))
    if args.base:
        base, sft_data, dpo_data = Path(args.base), [GSM8K_TRAIN, arithmetic], HH_PAIRS
    else:
        base, sft_data, dpo_data = random_base(out / "base", args), [arithmetic], str(arithmetic_pairs(out, task, args))
    sft_cfg, grpo_cfg, dpo_cfg = stage_configs(out, base, sft_data, dpo_data, args)
    runs = {"base": base, "sft": Path(sft_cfg.out), "grpo": Path(grpo_cfg.out), "dpo": Path(dpo_cfg.out)}
    accuracy = {"base": timer("measure", lambda: arithmetic_accuracy(base, held_out, args))}
    report(f"base: held-out arithmetic accuracy {accuracy['base']['accuracy']:.3f}")
    # 2) SFT from the base, then GRPO and DPO each from the SFT checkpoint
    sft_summary, rounds = timer("sft", lambda: sft_in_rounds(sft_cfg, dev, args, report))
    grpo_summary = timer("grpo", lambda: grpo(grpo_cfg, report=report))
    dpo_summary = timer("dpo", lambda: dpo(dpo_cfg, report=report))
    for name in ("sft", "grpo", "dpo"):
        accuracy[name] = timer("measure", lambda name=name: arithmetic_accuracy(runs[name], held_out, args))
    # 3) report cards and their comparison
    cards = {}
    if args.eval_tasks:
        for name in CHECKPOINTS:
            cards[name] = timer(f"eval_{name}", lambda name=name: report_card(runs[name], args))
    results = collect(args, timer.seconds, accuracy, sft_summary, rounds, grpo_summary, dpo_summary, cards, runs)
    results["plots"] = plot_curves(runs, grpo_summary["curve"], args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / f"{args.name}.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(RESULTS / f"{args.name}.md", render(results))
    print(render(results))
    return 0


# --- results -----------------------------------------------------------------------------------------------------


def collect(args: argparse.Namespace, seconds: dict, accuracy: dict, sft_summary: dict, rounds: list[dict],
            grpo_summary: dict, dpo_summary: dict, cards: dict, runs: dict[str, Path]) -> dict[str, Any]:
    curve = grpo_summary["curve"]
    window = max(1, len(curve) // 4)
    base_model = load_trained_model(runs["base"]).model
    return {
        "mode": "real" if args.base else "cpu", "settings": vars(args), "seconds": seconds, "torch": torch.__version__,
        "host": platform.node(), "device": device_name(args.device),
        "base_parameters": sum(p.numel() for p in base_model.parameters()),
        "arithmetic_heldout_accuracy": {name: a["accuracy"] for name, a in accuracy.items()},
        "arithmetic_samples": {name: a["samples"] for name, a in accuracy.items()},
        "sft": {"val_loss_start": sft_summary["val_start"]["loss"], "val_loss_end": sft_summary["val"]["loss"],
                "steps": sft_summary["steps"], "rounds": rounds, "data": sft_summary["data"]},
        "grpo": {"heldout_accuracy_before": grpo_summary["val_start"]["accuracy"],
                 "heldout_accuracy_after": grpo_summary["val"]["accuracy"],
                 "train_reward_first_steps": sum(c["reward"] for c in curve[:window]) / window,
                 "train_reward_last_steps": sum(c["reward"] for c in curve[-window:]) / window,
                 "curve": curve, "samples_after": grpo_summary["val"]["samples"]},
        "dpo": {"heldout_before": dpo_summary["val_start"], "heldout_after": dpo_summary["val"],
                "data": dpo_summary["data"]},
        "report_cards": {name: str(runs[name] / "eval" / "checkpoint" / "report.md") for name in cards},
        "comparison": compare_table(list(cards.values()), names=list(cards)) if cards else None,
    }


def device_name(device: str) -> str:
    resolved = resolve_device(device)
    return torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else resolved.type


def plot_curves(runs: dict[str, Path], grpo_curve: list[dict], args: argparse.Namespace) -> list[str]:
    """<plots-dir>/<name>_{sft,grpo,dpo}.png from the stages' metrics.jsonl (train records every log interval,
    held-out ones every eval interval) and GRPO's per-step curve from its summary."""
    plt, folder, paths = pyplot(), Path(args.plots_dir), []
    records = {stage: read_metrics(runs[stage]) for stage in ("sft", "grpo", "dpo")}
    records["grpo"] += [{"split": "step", **c} for c in grpo_curve]

    def series(stage: str, split: str, key: str) -> tuple[list, list]:
        rows = [r for r in records[stage] if r.get("split") == split and key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    panels = {  # stage -> [(title, [(split, key, label)])]
        "sft": [("response loss (nats/token)", [("train", "loss", "train"), ("val", "loss", "held out")])],
        "grpo": [("arithmetic", [("step", "reward", "train reward (sampled, per step)"),
                                 ("val", "accuracy", "held-out greedy accuracy")]),
                 ("policy entropy (nats/token)", [("train", "entropy", "train rollouts")])],
        "dpo": [("preference accuracy", [("train", "reward_accuracy", "train reward accuracy"),
                                         ("val", "reward_accuracy", "held-out reward accuracy"),
                                         ("val", "logp_accuracy", "held-out log-prob accuracy")]),
                ("implicit reward margin", [("train", "reward_margin", "train"), ("val", "reward_margin", "held out")])],
    }
    for stage, stage_panels in panels.items():
        fig, axes = plt.subplots(1, len(stage_panels), figsize=(5.5 * len(stage_panels), 3.8), squeeze=False)
        for ax, (title, lines) in zip(axes[0], stage_panels, strict=True):
            for split, key, label in lines:
                ax.plot(*series(stage, split, key), marker="o" if split == "val" else ".", label=label)
            ax.set(title=f"{stage.upper()}: {title}", xlabel="step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(str(save_png(fig, folder / f"{args.name}_{stage}.png")))
    return paths


def render(r: dict) -> str:
    s, g, d, a, sec, cfg = r["sft"], r["grpo"], r["dpo"], r["arithmetic_heldout_accuracy"], r["seconds"], r["settings"]
    if r["mode"] == "cpu":
        title = (f"# Alignment on CPU: {cfg['digits']}-digit addition, {cfg['d_model']}-wide {cfg['layers']}-layer "
                 "model from scratch")
    else:
        title = (f"# Alignment on a pretrained scratchlm model: {r['base_parameters'] / 1e6:.0f}M parameters "
                 f"({cfg['base']}), {r['device']}")
    sft_data = "arithmetic" if r["mode"] == "cpu" else "GSM8K train + arithmetic"
    dpo_data = "arithmetic pairs" if r["mode"] == "cpu" else "HH harmless-base"
    lines = [title, "",
             "| stage | measure | before | after | seconds |", "|---|---|---|---|---|",
             f"| SFT ({s['steps']} steps, {sft_data}) | held-out response loss (nats/token) | {s['val_loss_start']:.3f} | "
             f"{s['val_loss_end']:.3f} | {sec['sft']:.0f} |",
             f"| GRPO ({cfg['grpo_steps']} steps) | held-out greedy accuracy ({cfg['eval_problems']} problems) | "
             f"{g['heldout_accuracy_before']:.3f} | {g['heldout_accuracy_after']:.3f} | {sec['grpo']:.0f} |",
             f"| GRPO | mean train reward, first vs last quarter of steps | {g['train_reward_first_steps']:.3f} | "
             f"{g['train_reward_last_steps']:.3f} | |",
             f"| DPO ({cfg['dpo_steps']} steps, {dpo_data}) | held-out reward accuracy (ties = 1/2) | "
             f"{d['heldout_before']['reward_accuracy']:.3f} | {d['heldout_after']['reward_accuracy']:.3f} | {sec['dpo']:.0f} |",
             f"| DPO | held-out log-prob accuracy (log pi(chosen) > log pi(rejected)) | "
             f"{d['heldout_before']['logp_accuracy']:.3f} | {d['heldout_after']['logp_accuracy']:.3f} | |", "",
             f"Held-out {cfg['digits']}-digit addition, greedy accuracy ({cfg['eval_problems']} problems): "
             + ", ".join(f"{name} {a[name]:.3f}" for name in CHECKPOINTS) + ".", ""]
    if s["rounds"]:
        lines += ["SFT rounds (dev greedy accuracy, stop at "
                  f"{cfg['sft_stop_accuracy']}): " + ", ".join(f"step {x['step']}: {x['dev_accuracy']:.3f}" for x in s["rounds"]), ""]
    if r["comparison"]:
        lines += [f"Report cards (GSM8K: first {cfg['eval_limit']} test problems, greedy, 0-shot):", "", r["comparison"]]
    lines += ["Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sec.items()), "",
              "GRPO train reward per step: " + " ".join(f"{c['reward']:.2f}" for c in g["curve"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
