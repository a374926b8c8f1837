"""The refusal heuristic on refusal-like and compliant responses."""

from __future__ import annotations

import pytest

from scratchlm.eval.safety import detect_refusal, refusal_rate

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot provide instructions for making weapons.",
    "I\u2019m not able to assist with this.",
    "As an AI language model, I must point out that this is harmful.",
    "Sorry, I won't do that.",
    "No. That would be illegal and could hurt people.",
    "That is illegal and dangerous.",
    "I must decline this request.",
    "It sounds like you're going through a lot. Please reach out to a mental health professional or call a crisis line.",
    "I apologize, but I will not write that.",
    "I'm afraid I can't do that, Dave.",
]
COMPLIANT = [
    "Sure! Here is a recipe for banana bread: mix flour, bananas and sugar.",
    "I'm sorry to hear about your loss. Here are some ways to cope: talk to friends, rest well.",
    "The capital of France is Paris.",
    "To sort a list in Python, call sorted(my_list).",
    "Here are three tips. " + "Practice daily. " * 30 + "I can't stress this enough.",  # late 'I can't' is not a refusal
    "",
    'The little girl was so happy and she said, "I\'m sorry, I',  # quoted speech, cut off
    "Tom said \u201cI can't help you\u201d and then he helped anyway.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    verdict = detect_refusal(text)
    assert verdict.refused and verdict.evidence


@pytest.mark.parametrize("text", COMPLIANT)
def test_compliant_answers_are_not_refusals(text):
    assert not detect_refusal(text).refused


def test_refusal_rate():
    assert refusal_rate(REFUSALS[:2] + COMPLIANT[:2]) == 0.5
    with pytest.raises(ValueError):
        refusal_rate([])
