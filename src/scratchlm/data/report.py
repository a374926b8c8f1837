"""`scratchlm data stats RUN`: the per-step table (documents in/kept/dropped with reasons, bytes, time share)
and a PNG of the same (documents left after each step, drops by reason, time per step)."""

from __future__ import annotations

import os
from pathlib import Path

from scratchlm.plotting import pyplot, save_png


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def format_stats(stats: dict) -> str:
    """A Markdown table, one row per step in pipeline order (read: records -> documents, with reader skips)."""
    total = sum(step["seconds"] for step in stats["steps"]) or 1.0
    lines = ["| step | in | kept | dropped | drop reasons | bytes in -> out | time s | time share |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    for step in stats["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(step["dropped"].items(), key=lambda kv: -kv[1]))
        dropped = sum(step["dropped"].values()) if step["name"] != "read" else step["docs_in"] - step["docs_out"]
        lines.append(f"| {step['name']} | {step['docs_in']:,} | {step['docs_out']:,} | {dropped:,} | {reasons or '-'} "
                     f"| {_size(step['bytes_in'])} -> {_size(step['bytes_out'])} | {step['seconds']:.2f} "
                     f"| {100 * step['seconds'] / total:.1f}% |")
    return "\n".join(lines)


def plot_stats(stats: dict, out: str | os.PathLike) -> Path:
    """Three panels: documents after each step, dropped documents per step by reason, seconds per step."""
    plt = pyplot()
    steps = [s for s in stats["steps"] if s["name"] not in ("write",)]
    names = [s["name"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.45 * len(names) + 2), sharey=True)
    y = range(len(names))
    axes[0].barh(y, [s["docs_out"] for s in steps], color="tab:green")
    axes[0].set_title("documents kept after step")
    left = [0] * len(steps)
    reasons = sorted({r for s in steps for r in s["dropped"]})
    colors = plt.get_cmap("tab20")
    for k, reason in enumerate(reasons):
        widths = [s["dropped"].get(reason, 0) for s in steps]
        axes[1].barh(y, widths, left=left, color=colors(k % 20), label=reason)
        left = [a + b for a, b in zip(left, widths)]
    if reasons:
        axes[1].legend(fontsize=7, loc="lower right")
    axes[1].set_title("documents dropped, by reason")
    axes[2].barh(y, [s["seconds"] for s in steps], color="tab:blue")
    axes[2].set_title("seconds (all tasks)")
    axes[0].set_yticks(list(y), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save_png(fig, out)
