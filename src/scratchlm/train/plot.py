"""Loss and learning-rate curves of one or more runs as a PNG (matplotlib, imported only here)."""

from __future__ import annotations

import os
from pathlib import Path

from scratchlm.plotting import pyplot, save_png
from scratchlm.train.metrics import read_metrics


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike, log_x: bool = False) -> Path:
    """Train and validation loss vs tokens (left) and learning rate vs step (right), one color per run."""
    plt = pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for i, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        train = [r for r in records if r.get("split") == "train"]
        val = [r for r in records if r.get("split") == "val"]
        tokens_per_step = train[0]["tokens"] / train[0]["step"] if train else 0
        color, name = f"C{i}", Path(run_dir).name
        ax_loss.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=color, alpha=0.6, label=f"{name} train")
        if val:
            ax_loss.plot([r["step"] * tokens_per_step for r in val], [r["loss"] for r in val], "o-", color=color,
                         label=f"{name} val (last {val[-1]['loss']:.3f})")
        ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color=color, label=name)
    ax_loss.set(xlabel="tokens", ylabel="loss (nats/token)", title="loss")
    ax_lr.set(xlabel="step", ylabel="peak learning rate", title="learning rate")
    if log_x:
        ax_loss.set_xscale("log")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)
