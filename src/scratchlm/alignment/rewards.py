"""Verifiable rewards and a task small models can learn: exact-answer match, a format reward, and synthetic
arithmetic prompts ("What is 23 + 58?") with exact answers."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from scratchlm.eval.answers import extract_number_answer, gsm8k_reference

_BARE_NUMBER = re.compile(r"\s*-?\d[\d,]*(?:\.\d+)?\s*\.?\s*")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def answer_reward(response: str, answer: Fraction) -> float:
    """1 when the number the response commits to equals the answer (see extract_number_answer), else 0."""
    return float(extract_number_answer(response) == answer)


def format_reward(response: str, finished: bool, style: str) -> float:
    """1 when the response has the expected shape and ended by itself (stop token):
    style "number": nothing but a number; style "gsm8k": a '#### <number>' final line."""
    if not finished:
        return 0.0
    if style == "number":
        return float(_BARE_NUMBER.fullmatch(response) is not None)
    if style == "gsm8k":
        tail = response.rpartition("####")
        return float(bool(tail[1]) and _BARE_NUMBER.fullmatch(tail[2]) is not None)
    raise ValueError(f"unknown format style {style!r}: number or gsm8k")


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: Fraction
    solution: str  # a gold response, for SFT warm-up


@dataclass(frozen=True)
class ArithmeticTask:
    """'What is a op b?' with operands of 1..`digits` digits; the gold response is the bare result."""

    digits: int = 2
    ops: str = "+"

    def __post_init__(self) -> None:
        if self.digits < 1 or not self.ops or any(op not in _OPS for op in self.ops):
            raise ValueError(f"arithmetic needs digits >= 1 and ops from {''.join(_OPS)}, got {self.digits}, {self.ops!r}")

    def sample(self, rng: random.Random) -> Problem:
        hi = 10**self.digits - 1
        a, b, op = rng.randint(0, hi), rng.randint(0, hi), rng.choice(self.ops)
        result = _OPS[op](a, b)
        return Problem(f"What is {a} {op} {b}?", Fraction(result), str(result))

    def problems(self, n: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]


def gsm8k_problems(records: list[dict]) -> list[Problem]:
    return [Problem(r["question"], gsm8k_reference(r["answer"]), r["answer"]) for r in records]
