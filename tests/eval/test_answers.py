"""Answer parsers on messy, model-like outputs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from scratchlm.eval.answers import (
    extract_boxed,
    extract_math_answer,
    extract_number_answer,
    format_number,
    gsm8k_reference,
    math_equal,
    normalize_math_answer,
    parse_number,
)

GSM8K_OUTPUTS = [
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", 72),
    ("So the total is $1,234.50.", Fraction(246_900, 200)),
    ("He has 5 - 3 = 2 apples left. The answer is 2.", 2),
    ("The answer is: −7", -7),
    ("Temperature drops to -12 degrees, so the final answer is -12.", -12),
    ("Step 1: 3 * 4 = 12\nStep 2: 12 + 5 = 17\nAnswer: 17 dollars", 17),
    ("**Answer:** $18", 18),
    ("She ate 3/4 of the pie, i.e. 0.75", Fraction(3, 4)),
    ("Thus the answer is \\boxed{1,000}.", 1000),
    ("The answer is 42. I hope this helps! Let me know if you have 2 more questions.", 42),
    ("There are 5-6 apples, final answer: 7", 7),
    ("I earn 50% more, which gives 150", 150),
    ("#### 3,600\n\nQuestion: What is 2 + 2?", 3600),
    ("x2 and y3 are labels, the count is 9.", 9),
    ("No numbers here at all.", None),
]


@pytest.mark.parametrize("output, expected", GSM8K_OUTPUTS)
def test_number_answers(output, expected):
    assert extract_number_answer(output) == (None if expected is None else Fraction(expected))


def test_gsm8k_reference_and_formatting():
    assert gsm8k_reference("blah <<2*3=6>>6\n#### 1,200") == 1200
    assert gsm8k_reference("#### -3") == -3
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("no marker 5")
    assert parse_number("$ 18.00.") == 18
    assert [format_number(Fraction(x)) for x in ("72", "-3/4", "1/3", "2.5")] == ["72", "-0.75", "1/3", "2.5"]


def test_extract_boxed_handles_nesting_and_forms():
    assert extract_boxed(r"so $\boxed{\frac{a}{b^{2}}}$.") == r"\frac{a}{b^{2}}"
    assert extract_boxed(r"first \boxed{1} then \boxed{\{1,2\}}") == r"\{1,2\}"
    assert extract_boxed(r"\boxed 5$ done") == "5"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed("nothing") is None


def test_extract_math_answer_fallbacks():
    assert extract_math_answer(r"Thus the answer is $\frac{3}{4}$.") == r"\frac{3}{4}"
    assert extract_math_answer("The final answer is 12. Done") == "12"
    assert extract_math_answer("We get x = 3 and then 5") == "5"


@pytest.mark.parametrize("a, b", [
    (r"\frac12", "0.5"), (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\tfrac{3}{4}", "3/4"), (".5", r"\frac{1}{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"), (r"10\text{ inches}", "10"), ("x = 5", "5"),
    (r"90^\circ", "90"), (r"90^{\circ}", "90"), ("2,000", "2000"), ("5.", "5"), ("2.50", "2.5"), (r"\$18", "18"),
    (r"\sqrt{8}", r"2\sqrt{2}"), (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt3"), (r"\pi/2", r"\frac{\pi}{2}"),
    (r"x^2+2x+1", r"(x+1)^2"), (r"[-2, 3)", r"[-2,3)"), (r"\text{(A)}", "(A)"), (r"50\%", "50"),
])
def test_math_equal_accepts_equivalent_answers(a, b):
    assert math_equal(a, b), (normalize_math_answer(a), normalize_math_answer(b))


@pytest.mark.parametrize("a, b", [
    ("3", "4"), (r"\frac{1}{2}", r"\frac{1}{3}"), ("(1,2)", "(2,1)"), ("[1,2]", "(1,2)"), (r"\sqrt{2}", "2"),
    (None, "1"), ("", "1"), ("x+1", "x-1"),
])
def test_math_equal_rejects_different_answers(a, b):
    assert not math_equal(a, b)
