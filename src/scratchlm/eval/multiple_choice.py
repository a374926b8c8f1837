"""Multiple choice by log-likelihood: score each option as a continuation of the prompt, pick the best.

MMLU follows Hendrycks et al. (2021): a header naming the subject, k solved dev questions, then the question
with "Answer:"; `letter` scoring compares log p(" A") .. log p(" D") (the paper's rule), `text` scoring
compares each option's own text, normalized by its length in bytes (lm-evaluation-harness's acc_norm),
which suits small models that never learned the lettered format.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Literal

import torch
from tqdm import tqdm

from scratchlm.eval.datasets import MCQuestion
from scratchlm.eval.logprobs import autocast_context, pad_batch, response_logprobs
from scratchlm.tokenizer import Tokenizer

LETTERS = "ABCD"


@torch.no_grad()
def score_continuations(model: torch.nn.Module, tokenizer: Tokenizer, requests: list[tuple[str, str]], *,
                        batch_size: int = 16, dtype: torch.dtype = torch.float32,
                        progress: bool = False) -> list[float]:
    """log p(continuation | context) for each (context, continuation); contexts too long for the model lose
    their start. The two are tokenized separately, as a prompt is at generation time."""
    context_length = model.config.context_length
    device = next(model.parameters()).device
    rows = []
    for context, continuation in requests:
        cont = tokenizer.encode(continuation)
        if not cont:
            raise ValueError(f"empty continuation for context {context[-40:]!r}")
        ctx = tokenizer.encode(context)[-(context_length + 1 - len(cont)):]
        if not ctx:
            raise ValueError(f"continuation of {len(cont)} tokens leaves no room for context")
        rows.append((ctx + cont, [False] * len(ctx) + [True] * len(cont)))
    scores: list[float] = []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc="score", disable=not progress, leave=False):
        ids, mask = pad_batch(*zip(*rows[start : start + batch_size]), device=device)
        with autocast_context(device, dtype):
            logprobs, _ = response_logprobs(model, ids, mask)
        scores += logprobs.double().sum(-1).tolist()
    return scores


def mmlu_prompt(question: MCQuestion, shots: list[MCQuestion]) -> str:
    def block(q: MCQuestion, answer: str) -> str:
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True))
        return f"{q.question}{options}\nAnswer:{answer}"

    header = f"The following are multiple choice questions (with answers) about {question.subject.replace('_', ' ')}.\n\n"
    solved = "".join(block(s, f" {LETTERS[s.answer]}") + "\n\n" for s in shots)
    return header + solved + block(question, "")


def evaluate_mmlu(model: torch.nn.Module, tokenizer: Tokenizer, questions: list[MCQuestion], dev: list[MCQuestion],
                  *, shots: int = 0, scoring: Literal["letter", "text"] = "letter", batch_size: int = 16,
                  dtype: torch.dtype = torch.float32, format_prompt: Callable[[str], str] | None = None,
                  progress: bool = False) -> tuple[dict, list[dict]]:
    """(metrics, per-question records). Shots are the subject's first `shots` dev questions. With
    `format_prompt` (a chat model: scratchlm.alignment.chat), the whole question block is the user turn and the
    options are scored as the start of the assistant's reply (no leading space, as in SFT responses)."""
    if not questions:
        raise ValueError("no MMLU questions to evaluate")
    by_subject = defaultdict(list)
    for q in dev:
        by_subject[q.subject].append(q)
    requests, prompts = [], []
    for q in questions:
        prompt = mmlu_prompt(q, by_subject[q.subject][:shots])
        space = " "
        if format_prompt is not None:
            prompt, space = format_prompt(prompt), ""
        prompts.append(prompt)
        options = [f"{space}{letter}" for letter in LETTERS] if scoring == "letter" else [f"{space}{c}" for c in q.choices]
        requests += [(prompt, option) for option in options]
    scores = score_continuations(model, tokenizer, requests, batch_size=batch_size, dtype=dtype, progress=progress)
    records, correct = [], defaultdict(list)
    for i, q in enumerate(questions):
        option_scores = scores[4 * i : 4 * i + 4]
        if scoring == "text":  # per byte, so long options are not penalized for their length
            option_scores = [s / max(1, len(c.encode())) for s, c in zip(option_scores, q.choices, strict=True)]
        pred = max(range(4), key=option_scores.__getitem__)
        correct[q.subject].append(pred == q.answer)
        records.append({"subject": q.subject, "question": q.question, "answer": LETTERS[q.answer],
                        "prediction": LETTERS[pred], "scores": option_scores})
    flat = [c for subject in correct.values() for c in subject]
    per_subject = {s: sum(c) / len(c) for s, c in sorted(correct.items())}
    metrics = {"accuracy": sum(flat) / len(flat), "n": len(flat), "shots": shots, "scoring": scoring,
               "macro_accuracy": sum(per_subject.values()) / len(per_subject), "chance": 0.25,
               "per_subject": per_subject}
    return metrics, records
