"""Generation tasks: sample an answer per prompt, parse it, score it, keep every generation for review.

GSM8K and MATH score exact answers (scratchlm.eval.answers); AlpacaEval instructions and SimpleSafetyTests
prompts have no gold answer here: their generations are saved and scored with the refusal heuristic
(a refusal is right on the safety prompts, over-refusal on the instructions).

`format_prompt` turns the task's prompt into what the model expects: None for base models (few-shot
"Question: ... Answer:" text), or a chat template (scratchlm.alignment.chat) for chat-tuned models, which then
get the bare question when there are no shots, as in their SFT data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from scratchlm.eval.answers import (
    extract_boxed,
    extract_math_answer,
    extract_number_answer,
    format_number,
    gsm8k_reference,
    math_equal,
)
from scratchlm.eval.generation import generate_texts
from scratchlm.eval.safety import detect_refusal
from scratchlm.tokenizer import Tokenizer

PromptFormat = Callable[[str], str] | None
# A base model keeps writing the next few-shot item: its answer ends where the next question starts.
CONTINUATION_MARKERS = ("\n\nQuestion:", "\nQuestion:", "\n\nProblem:", "\n\n\n")


@dataclass(kw_only=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    batch_size: int = 16
    seed: int = 0


def _prompt(format_prompt: PromptFormat, bare: str, few_shot: str, n_shots: int) -> str:
    if format_prompt is None:
        return few_shot
    return format_prompt(few_shot if n_shots else bare)


def cut_continuation(text: str) -> str:
    cut = min((i for i in (text.find(m) for m in CONTINUATION_MARKERS) if i >= 0), default=len(text))
    return text[:cut].strip()


def _generate(model, tokenizer, prompts: list[str], settings: GenerationSettings, progress: bool) -> list:
    return generate_texts(model, tokenizer, prompts, settings.max_new_tokens, temperature=settings.temperature,
                          top_p=settings.top_p, seed=settings.seed, batch_size=settings.batch_size, progress=progress)


def gsm8k_prompt(question: str, shots: list[dict]) -> str:
    solved = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    return f"{solved}Question: {question}\nAnswer:"


def _answer_task(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict], key: str,
                 prompts: list[str], n_shots: int, settings: GenerationSettings, progress: bool,
                 score: Callable[[dict, str], dict]) -> tuple[dict, list[dict]]:
    """Generate one answer per prompt, cut the base model's next few-shot item, and score it: `score(example,
    output)` gives the record's reference, prediction and correct fields."""
    completions = _generate(model, tokenizer, prompts, settings, progress)
    records = []
    for example, completion in zip(examples, completions, strict=True):
        output = cut_continuation(completion.text)
        records.append({key: example[key], "output": output, **score(example, output)})
    return _accuracy(records, shots=n_shots), records


def _score_gsm8k(example: dict, output: str) -> dict:
    reference, prediction = gsm8k_reference(example["answer"]), extract_number_answer(output)
    return {"reference": format_number(reference), "prediction": format_number(prediction),
            "correct": prediction == reference}


@torch.no_grad()
def evaluate_gsm8k(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict], shots: list[dict],
                   settings: GenerationSettings, format_prompt: PromptFormat = None,
                   progress: bool = False) -> tuple[dict, list[dict]]:
    prompts = [_prompt(format_prompt, e["question"], gsm8k_prompt(e["question"], shots), len(shots)) for e in examples]
    return _answer_task(model, tokenizer, examples, "question", prompts, len(shots), settings, progress, _score_gsm8k)


def math_prompt(problem: str, shots: list[dict]) -> str:
    solved = "".join(f"Problem: {s['problem']}\nSolution: {s['solution']}\n\n" for s in shots)
    return f"{solved}Problem: {problem}\nSolution:"


def math_reference(example: dict) -> str:
    """MATH-500 rows carry `answer`; full MATH rows only a solution with a boxed answer."""
    answer = example.get("answer") or extract_boxed(example["solution"])
    if answer is None:
        raise ValueError(f"MATH example without an answer or a boxed solution: {example['problem'][:60]!r}")
    return answer


def _score_math(example: dict, output: str) -> dict:
    reference, prediction = math_reference(example), extract_math_answer(output)
    return {"reference": reference, "prediction": prediction, "correct": math_equal(prediction, reference)}


@torch.no_grad()
def evaluate_math(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict], shots: list[dict],
                  settings: GenerationSettings, format_prompt: PromptFormat = None,
                  progress: bool = False) -> tuple[dict, list[dict]]:
    prompts = [_prompt(format_prompt, e["problem"], math_prompt(e["problem"], shots), len(shots)) for e in examples]
    return _answer_task(model, tokenizer, examples, "problem", prompts, len(shots), settings, progress, _score_math)


def _accuracy(records: list[dict], **extra) -> dict:
    n = len(records)
    return {"accuracy": sum(r["correct"] for r in records) / n if n else 0.0, "n": n,
            "answered": sum(r["prediction"] is not None for r in records) / n if n else 0.0, **extra}


@torch.no_grad()
def evaluate_instructions(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict],
                          settings: GenerationSettings, format_prompt: PromptFormat = None,
                          progress: bool = False) -> tuple[dict, list[dict]]:
    """AlpacaEval instructions -> saved generations, length, how often they finish, and over-refusal."""
    prompts = [_prompt(format_prompt, e["instruction"], e["instruction"], 0) for e in examples]
    completions = _generate(model, tokenizer, prompts, settings, progress)
    records = []
    for example, completion in zip(examples, completions, strict=True):
        verdict = detect_refusal(completion.text)
        records.append({"instruction": example["instruction"], "output": completion.text,
                        "reference": example.get("output"), "dataset": example.get("dataset"),
                        "finished": completion.finished, "refused": verdict.refused, "refusal_evidence": verdict.evidence})
    n = len(records)
    metrics = {"n": n, "mean_words": sum(len(r["output"].split()) for r in records) / n,
               "finished_rate": sum(r["finished"] for r in records) / n,
               "refusal_rate": sum(r["refused"] for r in records) / n}
    return metrics, records


@torch.no_grad()
def evaluate_safety(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict], settings: GenerationSettings,
                    format_prompt: PromptFormat = None, progress: bool = False) -> tuple[dict, list[dict]]:
    """SimpleSafetyTests prompts: the share of refusals (all 100 prompts are clearly harmful: higher is safer)."""
    prompts = [_prompt(format_prompt, e["prompt"], e["prompt"], 0) for e in examples]
    completions = _generate(model, tokenizer, prompts, settings, progress)
    records, by_area = [], defaultdict(list)
    for example, completion in zip(examples, completions, strict=True):
        verdict = detect_refusal(completion.text)
        by_area[example["harm_area"]].append(verdict.refused)
        records.append({**example, "output": completion.text, "refused": verdict.refused,
                        "refusal_evidence": verdict.evidence})
    n = len(records)
    metrics = {"n": n, "refusal_rate": sum(r["refused"] for r in records) / n,
               "per_harm_area": {area: sum(v) / len(v) for area, v in sorted(by_area.items())}}
    return metrics, records
