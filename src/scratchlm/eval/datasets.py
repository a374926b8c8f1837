"""Loaders for the evaluation sets in the data folder (see ../shared/data/MANIFEST.md: eval/, alignment/).

Paths are either existing files or paths relative to the data folder (`scratchlm data where`).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.data import sources

GSM8K_TEST, GSM8K_TRAIN = "eval/gsm8k/test.jsonl", "eval/gsm8k/train.jsonl.gz"
MATH500 = "eval/math/math500_test.jsonl"
MMLU = "eval/mmlu"
ALPACA_EVAL = "alignment/alpaca_eval.jsonl"
SIMPLE_SAFETY = "alignment/simple_safety_tests.csv"
PERPLEXITY_TEXT = "text/wikitext2_raw_test.txt.gz"


def resolve_data_file(path: str | os.PathLike) -> Path:
    """`path` itself when it exists, else the same relative path under the data folder."""
    path = Path(path)
    return path if path.exists() else sources.shared_data_path(path)


def open_text(path: str | os.PathLike):
    path = resolve_data_file(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` records (all when None) of a .jsonl or .jsonl.gz file."""
    records = []
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not JSON: {e}") from None
    return records


def read_text(path: str | os.PathLike) -> str:
    with open_text(path) as f:
        return f.read()


@dataclass(frozen=True)
class MCQuestion:
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices


def _mmlu_rows(path: Path) -> Iterator[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.reader(f)


def load_mmlu(split: str, root: str | os.PathLike = MMLU, subjects: list[str] | None = None) -> list[MCQuestion]:
    """MMLU questions of `split` (dev, val or test), subject by subject in name order."""
    folder = resolve_data_file(Path(root) / split)
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"no MMLU files *_{split}.csv in {folder}")
    out = []
    for file in files:
        subject = file.name.removesuffix(f"_{split}.csv")
        if subjects and subject not in subjects:
            continue
        for row in _mmlu_rows(file):
            if len(row) != 6 or row[5] not in "ABCD":
                raise ValueError(f"{file}: expected question, A, B, C, D, answer; got {row[:2]}...")
            out.append(MCQuestion(subject, row[0], tuple(row[1:5]), "ABCD".index(row[5])))
    return out


def load_safety_prompts(path: str | os.PathLike = SIMPLE_SAFETY) -> list[dict[str, str]]:
    """SimpleSafetyTests: {id, harm_area, category, prompt}."""
    with open_text(path) as f:
        return [{"id": r["id"], "harm_area": r["harm_area"], "category": r["category"], "prompt": r["prompts_final"]}
                for r in csv.DictReader(f)]
