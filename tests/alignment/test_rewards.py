"""Verifiable rewards and the arithmetic task."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from scratchlm.alignment.rewards import ArithmeticTask, answer_reward, format_reward


def test_answer_reward():
    assert answer_reward("81", Fraction(81)) == 1.0
    assert answer_reward("The answer is 81.", Fraction(81)) == 1.0
    assert answer_reward("80", Fraction(81)) == 0.0
    assert answer_reward("", Fraction(0)) == 0.0
    assert answer_reward("12 + 3 = 15\n#### 15", Fraction(15)) == 1.0


def test_format_reward():
    assert format_reward("81", True, "number") == 1.0
    assert format_reward(" -7 ", True, "number") == 1.0
    assert format_reward("81", False, "number") == 0.0  # ran out of tokens
    assert format_reward("it is 81", True, "number") == 0.0
    assert format_reward("3 + 4 = 7\n#### 7", True, "gsm8k") == 1.0
    assert format_reward("3 + 4 = 7", True, "gsm8k") == 0.0
    with pytest.raises(ValueError):
        format_reward("1", True, "xml")


def test_arithmetic_task_is_seeded_and_correct():
    task = ArithmeticTask(digits=2, ops="+-*")
    problems = task.problems(50, seed=1)
    assert problems == task.problems(50, seed=1) and problems != task.problems(50, seed=2)
    for p in problems:
        a, op, b = p.prompt.removeprefix("What is ").removesuffix("?").split()
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert p.answer == eval(f"{a}{op}{b}") and p.solution == str(p.answer)  # noqa: S307 - our own digits
    assert ArithmeticTask(1).sample(random.Random(0)).prompt.startswith("What is ")
    with pytest.raises(ValueError):
        ArithmeticTask(0)
