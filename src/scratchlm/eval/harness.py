"""`run_eval`: the tasks of one checkpoint -> generations (JSONL), a report card (Markdown + JSON).

Each finished task is written at once to <out>/tasks/<task>.json with the settings it ran under; a rerun
with the same settings reuses it, so an interrupted evaluation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from scratchlm.atomic import atomic_write, write_text_atomic
from scratchlm.config import ConfigError, to_dict
from scratchlm.eval import datasets
from scratchlm.eval.multiple_choice import evaluate_mmlu
from scratchlm.eval.perplexity import text_perplexity
from scratchlm.eval.report import write_report
from scratchlm.eval.tasks import (
    GenerationSettings,
    PromptFormat,
    evaluate_gsm8k,
    evaluate_instructions,
    evaluate_math,
    evaluate_safety,
)
from scratchlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
TASKS = ("perplexity", "mmlu", "gsm8k", "math", "alpaca", "safety")


@dataclass(kw_only=True)
class EvalConfig:
    checkpoint: str = field(default="", metadata={"help": "checkpoint file or run folder"})
    tasks: str = field(default=",".join(TASKS), metadata={"help": f"comma-separated tasks from {', '.join(TASKS)}"})
    out: str = field(default="", metadata={"help": "report folder (default: <run folder>/eval/<checkpoint name>)"})
    limit: int | None = field(default=None, metadata={"help": "examples per task (perplexity: windows); default all"})
    shots: int = field(default=0, metadata={"help": "few-shot examples for mmlu (dev), gsm8k (train) and math"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={"help": "compute dtype; auto = bfloat16 on CUDA"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward / generation batch"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation length limit"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature of generation tasks (0 = greedy)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    prompt_style: Literal["auto", "plain", "chat"] = field(default="auto", metadata={"help": "chat: wrap prompts in the chat template; auto = chat when the tokenizer has its tokens"})
    perplexity_text: str = field(default=datasets.PERPLEXITY_TEXT, metadata={"help": "held-out text file for perplexity"})
    mmlu_split: Literal["val", "test"] = field(default="test", metadata={"help": "MMLU split to score"})
    mmlu_scoring: Literal["letter", "text"] = field(default="letter", metadata={"help": "score the answer letters or the option texts"})
    gsm8k_data: str = field(default=datasets.GSM8K_TEST, metadata={"help": "GSM8K test file"})
    math_data: str = field(default=datasets.MATH500, metadata={"help": "MATH test file (MATH-500 by default)"})

    def __post_init__(self) -> None:
        unknown = [t for t in self.task_list if t not in TASKS]
        if unknown or not self.task_list:
            raise ConfigError(f"unknown tasks {unknown or self.tasks!r}; choose from {', '.join(TASKS)}")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
        if self.shots < 0 or self.temperature < 0:
            raise ConfigError("shots and temperature must be >= 0")

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  batch_size=self.batch_size, seed=self.seed)


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model's weights (float64 sum and sum of squares of every parameter, in order): a
    cached result of other weights (the same --out after retraining) is redone, without hashing every byte."""
    moments = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()])
    return hashlib.sha256(moments.cpu().numpy().tobytes()).hexdigest()[:16]


def _task_settings(cfg: EvalConfig, task: str, prompt_style: str, weights: str) -> dict[str, Any]:
    """What a task's result depends on: a cached result with other settings or other weights is redone."""
    shared = {"weights": weights, "limit": cfg.limit, "dtype": cfg.dtype, "prompt_style": prompt_style}
    per_task = {"perplexity": {"text": cfg.perplexity_text},
                "mmlu": {"shots": cfg.shots, "split": cfg.mmlu_split, "scoring": cfg.mmlu_scoring},
                "gsm8k": {"shots": cfg.shots, "data": cfg.gsm8k_data, **to_dict(cfg.generation())},
                "math": {"shots": cfg.shots, "data": cfg.math_data, **to_dict(cfg.generation())},
                "alpaca": to_dict(cfg.generation()), "safety": to_dict(cfg.generation())}
    return {**shared, **per_task[task]}


def _run_task(task: str, cfg: EvalConfig, model: torch.nn.Module, tokenizer: Tokenizer, dtype: torch.dtype,
              format_prompt: PromptFormat) -> tuple[dict, list[dict] | None]:
    limit, gen, kw = cfg.limit, cfg.generation(), {"format_prompt": format_prompt, "progress": True}
    if task == "perplexity":
        text = datasets.read_text(cfg.perplexity_text)
        return text_perplexity(model, tokenizer, text, batch_size=cfg.batch_size, max_windows=limit, dtype=dtype,
                               progress=True), None
    if task == "mmlu":
        questions = datasets.load_mmlu(cfg.mmlu_split)
        dev = datasets.load_mmlu("dev") if cfg.shots else []
        return evaluate_mmlu(model, tokenizer, _spread(questions, limit), dev, shots=cfg.shots, scoring=cfg.mmlu_scoring,
                             batch_size=cfg.batch_size, dtype=dtype, format_prompt=format_prompt, progress=True)
    if task == "gsm8k":
        shots = datasets.read_jsonl(datasets.GSM8K_TRAIN, limit=cfg.shots) if cfg.shots else []
        return evaluate_gsm8k(model, tokenizer, datasets.read_jsonl(cfg.gsm8k_data, limit), shots, gen, **kw)
    if task == "math":
        examples = datasets.read_jsonl(cfg.math_data, limit)
        problems = {e["problem"] for e in examples}
        shots = [e for e in datasets.read_jsonl("eval/math/math_test.jsonl.gz", limit=cfg.shots + len(examples))
                 if e["problem"] not in problems][: cfg.shots] if cfg.shots else []
        return evaluate_math(model, tokenizer, examples, shots, gen, **kw)
    if task == "alpaca":
        return evaluate_instructions(model, tokenizer, datasets.read_jsonl(datasets.ALPACA_EVAL, limit), gen, **kw)
    return evaluate_safety(model, tokenizer, datasets.load_safety_prompts()[:limit], gen, **kw)


def _spread(items: list, limit: int | None) -> list:
    """`limit` items spread evenly over the list (MMLU: every subject, not just the first alphabetically)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def run_eval(cfg: EvalConfig, model: torch.nn.Module, tokenizer: Tokenizer, out: str | Path, *, step: int | None = None,
             dtype: torch.dtype = torch.float32, format_prompt: PromptFormat = None) -> dict:
    """Run cfg's tasks on `model`; write <out>/report.{json,md} and <out>/generations/<task>.jsonl; return the report."""
    out = Path(out)
    style = "chat" if format_prompt is not None else "plain"
    device = next(model.parameters()).device
    report: dict[str, Any] = {"checkpoint": cfg.checkpoint, "step": step, "device": str(device),
                              "config": to_dict(cfg), "tasks": {}, "generations": {}}
    t0 = time.perf_counter()
    model.eval()
    weights = weights_fingerprint(model)
    for task in cfg.task_list:
        settings = _task_settings(cfg, task, style, weights)
        cached = out / "tasks" / f"{task}.json"
        if cached.is_file() and (previous := json.loads(cached.read_text()))["settings"] == settings:
            log.info("%s: reusing %s", task, cached)
            metrics = previous["metrics"]
        else:
            t_task = time.perf_counter()
            metrics, records = _run_task(task, cfg, model, tokenizer, dtype, format_prompt)
            metrics["seconds"] = time.perf_counter() - t_task
            if records is not None:
                with atomic_write(out / "generations" / f"{task}.jsonl") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            write_text_atomic(cached, json.dumps({"settings": settings, "metrics": metrics}, indent=2) + "\n")
        log.info("%s: %s", task, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
        report["tasks"][task] = metrics
        if (out / "generations" / f"{task}.jsonl").is_file():
            report["generations"][task] = f"generations/{task}.jsonl"
    report["seconds"] = time.perf_counter() - t0
    write_report(out, report)
    return report
