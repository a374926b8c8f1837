"""Final answers out of free-form model output, and whether they match a reference.

GSM8K-style numbers: the reference is the number after '####'; a model's answer is, in order of trust, the
number after its own '####', inside \\boxed{}, after "the answer is"/"answer:", else the last number in the
text. Numbers tolerate thousands commas, '$', '%', trailing periods, Unicode minus signs and fractions a/b,
and compare as exact fractions (so 0.5 == 1/2 and 18.00 == 18).

MATH answers: the last \\boxed{...} (nested braces), normalized (\\dfrac -> \\frac, \\frac12 -> \\frac{1}{2},
\\left/\\right, spacing commands, \\text{units}, degrees, '$', trailing '.', 'x = ' prefixes), then compared
as strings, as numbers, element-wise for tuples and intervals, and finally symbolically with sympy.
"""

from __future__ import annotations

import re
from fractions import Fraction

# --- numbers ------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"""
    (?<![\w.])                          # not the tail of a word, an identifier or a decimal
    (?P<sign>[-\u2212\u2013])?          # '-', Unicode minus, en dash
    \s?\$?\s?                           # '-$5', '$ 5'
    (?P<int>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d.]))?   # a fraction 3/4
""", re.VERBOSE)
_ANSWER_PHRASE = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=|would\s+be|will\s+be)\s*:?", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact fraction ('1,234.50' -> 2469/2, '-3/4', '$18.'), or None."""
    match = _NUMBER.search(text)
    return _match_value(match) if match else None


def _match_value(match: re.Match) -> Fraction | None:
    value = Fraction(match["int"].replace(",", ""))
    if match["den"] is not None:
        den = Fraction(match["den"])
        if den == 0:
            return None
        value /= den
    return -value if match["sign"] else value


def last_number(text: str) -> Fraction | None:
    matches = list(_NUMBER.finditer(text))
    return _match_value(matches[-1]) if matches else None


def gsm8k_reference(answer: str) -> Fraction:
    """The gold number of a GSM8K `answer` field ('... #### 1,234')."""
    _, sep, tail = answer.rpartition("####")
    value = parse_number(tail) if sep else None
    if value is None:
        raise ValueError(f"GSM8K answer without a '#### <number>' line: {answer[-80:]!r}")
    return value


def extract_number_answer(output: str) -> Fraction | None:
    """The number a model's output commits to (see the module docstring for the order of trust)."""
    if "####" in output:
        value = parse_number(output.rpartition("####")[2])
        if value is not None:
            return value
    boxed = extract_boxed(output)
    if boxed is not None:
        value = parse_number(normalize_math_answer(boxed).replace("\\frac{", "").replace("}{", "/"))
        if value is not None:
            return value
    phrases = list(_ANSWER_PHRASE.finditer(output))
    if phrases:
        value = parse_number(output[phrases[-1].end():][:80])
        if value is not None:
            return value
    return last_number(output)


def format_number(value: Fraction | None) -> str | None:
    """'72', '-0.75', '1/3' (a fraction only when its decimal does not terminate)."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        return format(float(value), "f").rstrip("0") if abs(value) < 1e15 else str(float(value))
    return f"{value.numerator}/{value.denominator}"


# --- MATH: boxed answers -------------------------------------------------------------------------------------


def matching_brace(text: str, open_at: int) -> int | None:
    """Index of the '}' closing the '{' at `open_at` (escaped \\{ and \\} do not count), or None."""
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} or \\fbox{...} (nested braces kept), or of '\\boxed 5'; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        end = matching_brace(text, i)
        return text[i + 1 : end].strip() if end is not None else None
    if i > start + 6 or text.startswith("\\boxed ", start):  # '\boxed 5': up to the next space or '$'
        return re.split(r"[\s$]", text[i:], maxsplit=1)[0] or None
    return None


def extract_math_answer(output: str) -> str | None:
    """A model's MATH answer: the last boxed expression, else what follows 'the answer is', else the last number."""
    boxed = extract_boxed(output)
    if boxed is not None:
        return boxed
    phrases = list(_ANSWER_PHRASE.finditer(output))
    if phrases:
        tail = output[phrases[-1].end():].strip()
        if tail.startswith("$") and "$" in tail[1:]:
            return tail[1 : tail.index("$", 1)]
        sentence = re.split(r"\.(?:\s|$)|\n", tail, maxsplit=1)[0].strip()
        if sentence:
            return sentence
    matches = list(_NUMBER.finditer(output))
    return matches[-1].group(0).strip() if matches else None


# --- MATH: normalization -------------------------------------------------------------------------------------

_DROP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\quad", r"\qquad", r"\displaystyle", r"^{\circ}",
         r"^\circ", r"\circ", r"\%", "%", r"\$", "$", r"\ "]
_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{")
# Units and filler words that MATH solutions write after the answer (from the Minerva normalizer's list).
_UNITS = re.compile(r"(?:^|(?<=[\d}).\s]))\s*(?:square\s+)?(?:units?|dollars?|cents?|degrees?|inches|inch|feet|foot|ft|"
                    r"meters?|cm|km|mph|hours?|minutes?|seconds?|days?|years?|pounds?|ways|points?|students|people|"
                    r"sq\.?|integers?|digits?)\b\.?$", re.IGNORECASE)


def _unwrap_commands(s: str, pattern: re.Pattern) -> str:
    """'\\text{ cm}' -> ' cm': keep the argument of every matched one-argument command."""
    while (m := pattern.search(s)) is not None:
        end = matching_brace(s, m.end() - 1)
        if end is None:
            break
        s = s[: m.start()] + s[m.end() : end] + s[end + 1 :]
    return s


def _brace_short_args(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{x} -> \\frac{1}{x}, \\sqrt2 -> \\sqrt{2}: single-character arguments."""
    s = re.sub(r"\\frac\s*([^{\\\s])\s*([^{\\\s])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([^{\\\s])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([^{\\\s])", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt\s*([^{\[\\\s])", r"\\sqrt{\1}", s)


def normalize_math_answer(answer: str) -> str:
    """A canonical spelling of a MATH answer for string comparison (see the module docstring)."""
    s = answer.strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _unwrap_commands(s, _TEXT_COMMANDS)
    for token in _DROP:
        s = s.replace(token, " " if token == r"\ " else "")
    s = s.replace(r"\{", "{").replace(r"\}", "}") if s.startswith(r"\{") else s
    s = _UNITS.sub("", s.strip()).strip()
    if s.count("=") == 1:  # 'x = 5', 'k=-2': keep the value when the left side is a short name
        left, right = s.split("=")
        if len(left.strip()) <= 2 and right.strip():
            s = right
    s = _brace_short_args(s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)  # .5 -> 0.5
    if re.fullmatch(r"-?\d+\.\d*", s):
        s = s.rstrip("0").rstrip(".")  # 2.50 -> 2.5, 5.0 -> 5
    return s


# --- MATH: equivalence ---------------------------------------------------------------------------------------


def _as_number(s: str) -> Fraction | None:
    """Plain numbers and simple fractions of normalized answers: '3', '-0.5', '3/4', '\\frac{3}{4}', '-\\frac{1}{2}'."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m:
        den = Fraction(m[3])
        return None if den == 0 else (-1 if m[1] else 1) * Fraction(m[2]) / den
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:/(-?\d+(?:\.\d+)?))?", s)
    if m:
        den = Fraction(m[2]) if m[2] else Fraction(1)
        return None if den == 0 else Fraction(m[1]) / den
    return None


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside braces and brackets: '(1,\\frac{1}{2})' inner -> ['1', '\\frac{1}{2}']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    return parts + [s[start:]]


def _replace_command(s: str, command: str, render) -> str:
    """Replace every `command{A}{B}...` (brace arguments, innermost last) by render(A, B, ...)."""
    n_args = render.__code__.co_argcount
    while (i := s.find(command + "{")) >= 0:
        args, end = [], i + len(command) - 1
        for _ in range(n_args):
            if end + 1 >= len(s) or s[end + 1] != "{":
                raise ValueError(f"{command} needs {n_args} brace arguments in {s!r}")
            close = matching_brace(s, end + 1)
            if close is None:
                raise ValueError(f"unbalanced braces in {s!r}")
            args.append(s[end + 2 : close])
            end = close
        s = s[:i] + render(*args) + s[end + 1 :]
    return s


def latex_to_sympy_text(s: str) -> str:
    """Normalized LaTeX -> a sympy-parsable string (\\frac, \\sqrt, \\sqrt[n], \\pi, \\cdot, ^, braces)."""
    out = _replace_command(s, "\\frac", lambda num, den: f"(({num})/({den}))")
    out = re.sub(r"\\sqrt\[([^\]]+)\]\{", r"\\root{\1}{", out)
    out = _replace_command(out, "\\root", lambda n, x: f"(({x})**(1/({n})))")
    out = _replace_command(out, "\\sqrt", lambda x: f"sqrt({x})")
    for latex, text in ((r"\pi", "pi"), (r"\cdot", "*"), (r"\times", "*"), (r"\infty", "oo"), ("^", "**"),
                        ("{", "("), ("}", ")")):
        out = out.replace(latex, text)
    if "\\" in out:
        raise ValueError(f"unsupported LaTeX command in {s!r}")
    return out


def _sympy_equal(a: str, b: str) -> bool:
    try:
        import sympy
        from sympy.parsing.sympy_parser import (
            convert_xor,
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )
    except ImportError:  # sympy is optional: string and numeric comparison still run
        return False
    if max(len(a), len(b)) > 80:  # long expressions can make simplify take seconds; they rarely need it
        return False
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    try:
        ea = parse_expr(latex_to_sympy_text(a), transformations=transformations, evaluate=True)
        eb = parse_expr(latex_to_sympy_text(b), transformations=transformations, evaluate=True)
        return bool(sympy.simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001 - any parse/simplify failure means "not shown equal", never a crash
        return False


def math_equal(prediction: str | None, reference: str | None) -> bool:
    """Whether two MATH answers are the same after normalization: as strings, numbers, tuples or with sympy."""
    if prediction is None or reference is None:
        return False
    a, b = normalize_math_answer(prediction), normalize_math_answer(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return abs(na - nb) <= Fraction(1, 10**6) * max(1, abs(nb))
    if a[0] + a[-1] == b[0] + b[-1] and a[0] in "([" and a[-1] in ")]":  # tuples and intervals, same brackets
        pa, pb = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        if len(pa) > 1 and len(pa) == len(pb):
            return all(math_equal(x, y) for x, y in zip(pa, pb, strict=True))
    if "," in a or "," in b:
        return False  # unordered lists etc.: beyond a safe symbolic check
    return _sympy_equal(a, b)
