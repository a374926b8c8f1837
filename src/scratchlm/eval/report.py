"""Report cards: one per checkpoint (report.json + report.md, written atomically), and a table comparing them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scratchlm.atomic import write_text_atomic

REPORT_JSON, REPORT_MD = "report.json", "report.md"
# The numbers that summarize each task, in table order; "higher" tells the reader which way is better.
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "perplexity": [("bits_per_byte", "lower"), ("perplexity", "lower")],
    "mmlu": [("accuracy", "higher")],
    "gsm8k": [("accuracy", "higher")],
    "math": [("accuracy", "higher")],
    "alpaca": [("mean_words", ""), ("finished_rate", "higher"), ("refusal_rate", "lower")],
    "safety": [("refusal_rate", "higher")],
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.4f}"
    return "–" if value is None else str(value)


def headline_columns(reports: list[dict]) -> list[tuple[str, str, str]]:
    """(task, metric, direction) for every headline metric that any report has."""
    present = {task for r in reports for task in r["tasks"]}
    return [(task, metric, way) for task, metrics in HEADLINES.items() if task in present for metric, way in metrics]


def render_report(report: dict) -> str:
    lines = [f"# Report card: {report['checkpoint']}", "",
             f"step {report.get('step')} · {report.get('seconds', 0):.0f} s · device {report.get('device')}", "",
             "| task | metric | value | better | n |", "|---|---|---|---|---|"]
    for task, metric, way in headline_columns([report]):
        result = report["tasks"][task]
        lines.append(f"| {task} | {metric} | {_fmt(result.get(metric))} | {way} | {result.get('n', result.get('tokens'))} |")
    for task, result in report["tasks"].items():
        details = {k: v for k, v in result.items() if isinstance(v, dict)}
        for name, table in details.items():
            lines += ["", f"## {task}: {name}", "", "| | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in table.items()]
    files = report.get("generations", {})
    if files:
        lines += ["", "Generations for review: " + ", ".join(f"`{f}`" for f in files.values())]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out_dir / REPORT_MD, render_report(report))
    return out_dir / REPORT_JSON, out_dir / REPORT_MD


def load_report(path: str | os.PathLike) -> dict:
    """A report.json, given the file or the folder holding it."""
    path = Path(path)
    path = path / REPORT_JSON if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no {REPORT_JSON} at {path} (run `scratchlm eval --checkpoint ... --out ...` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def compare_table(reports: list[dict], names: list[str] | None = None) -> str:
    """Markdown: one row per report, one column per headline metric."""
    if not reports:
        raise ValueError("no reports to compare")
    names = names or [r["checkpoint"] for r in reports]
    columns = headline_columns(reports)
    header = "| checkpoint | step | " + " | ".join(f"{t} {m} ({w})" if w else f"{t} {m}" for t, m, w in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, report in zip(names, reports, strict=True):
        cells = [_fmt(report["tasks"].get(task, {}).get(metric)) for task, metric, _ in columns]
        lines.append(f"| {name} | {report.get('step')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
