"""Figures of the scaling-law fits as PNGs (matplotlib, imported only when a figure is drawn).

`plot_isoflops`: each budget's runs, its parabola and vertex. `plot_power_laws`: N_opt(C) and D_opt(C)
through the vertices, extrapolated to a large budget, with a bootstrap band. `plot_parametric_residuals`:
how well L(N, D) = E + A/N^alpha + B/D^beta reproduces the runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.plotting import pyplot as _pyplot
from scratchlm.plotting import save_png
from scratchlm.scaling.fit import IsoFlopFit, ParametricFit, Run

DPI = 100  # small files: these go into docs/ and into every fit's output folder


def _save(fig: Any, out: str | os.PathLike) -> Path:
    return save_png(fig, out, dpi=DPI)


def _budget_colors(budgets: Sequence[float]) -> dict[float, Any]:
    """One viridis color per budget, ordered by budget (so neighbours on the plot look like neighbours)."""
    cmap = _pyplot().get_cmap("viridis")
    return {b: cmap(i / max(len(budgets) - 1, 1)) for i, b in enumerate(sorted(budgets))}


def plot_isoflops(fit: IsoFlopFit, runs: Sequence[Run], out: str | os.PathLike) -> Path:
    """Loss vs N per budget: the runs (dots), the fitted parabola in log10 N (line) and its vertex (star)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _budget_colors([v.budget for v in fit.vertices])
    for v in fit.vertices:
        color = colors[v.budget]
        points = [(r.params, r.loss) for r in runs if r.budget == v.budget]
        ax.scatter(*zip(*points), s=14, color=color)
        low, high = np.log10(v.n_range)
        x = np.linspace(low - 0.1, high + 0.1, 100)  # (100,) log10 N
        ax.plot(10**x, np.polyval(v.coeffs, x), color=color, lw=1, label=f"{v.budget:.0e}")
        ax.plot(v.params, v.loss, "*", color=color, ms=11, mec="black", mew=0.5)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final loss", title="IsoFLOP profiles (star: fitted optimum)")
    ax.legend(title="FLOPs", fontsize=7, title_fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def plot_power_laws(fit: IsoFlopFit, out: str | os.PathLike, max_budget: float, band: dict | None = None,
                    others: dict[str, Any] | None = None) -> Path:
    """N_opt(C) and D_opt(C): the vertices, approach 2's power law extrapolated to `max_budget`, its
    bootstrap band (`band`: a `bootstrap` result with predictions on a grid of budgets) and, dashed, the
    allocation of other fits (`others`: label -> any fit with `predict(C)`)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = np.geomspace(min(v.budget for v in fit.vertices), max_budget, 100)  # (100,)
    for ax, key, symbol in ((axes[0], "params", "N"), (axes[1], "tokens", "D")):
        law = fit.n_opt if key == "params" else fit.d_opt
        ax.scatter([v.budget for v in fit.vertices], [getattr(v, key) for v in fit.vertices], color="C0", zorder=3,
                   label="IsoFLOP vertices")
        ax.plot(budgets, law(budgets), color="C0", label=f"approach 2: {symbol} = {law.k:.3g} C^{law.exponent:.3f}")
        if band is not None:
            grid = sorted(band["predictions"], key=lambda p: p["budget"])
            ax.fill_between([p["budget"] for p in grid], [p[key]["low"] for p in grid], [p[key]["high"] for p in grid],
                            color="C0", alpha=0.2, label=f"{band['level']:.0%} bootstrap band")
        for i, (label, other) in enumerate((others or {}).items(), start=1):
            ax.plot(budgets, [other.predict(c)[key] for c in budgets], "--", color=f"C{i}", label=label)
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=f"optimal {symbol}",
               title=f"{symbol}_opt(C)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def plot_parametric_residuals(fit: ParametricFit, runs: Sequence[Run], out: str | os.PathLike) -> Path:
    """Predicted vs observed loss (left) and the log residual vs N (right), one color per budget."""
    plt = _pyplot()
    fig, (ax_pred, ax_res) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = _budget_colors(sorted({r.budget for r in runs}))
    for budget, color in colors.items():
        group = [r for r in runs if r.budget == budget]
        params, observed = np.array([r.params for r in group]), np.array([r.loss for r in group])  # (n,), (n,)
        predicted = fit.predict_loss(params, np.array([r.tokens for r in group]))  # (n,)
        ax_pred.scatter(observed, predicted, s=14, color=color, label=f"{budget:.0e}")
        ax_res.scatter(params, np.log(observed / predicted), s=14, color=color)
    low, high = ax_pred.get_xlim()
    ax_pred.plot([low, high], [low, high], color="gray", lw=1)
    ax_pred.set(xlabel="observed loss", ylabel="predicted loss",
                title=f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}")
    ax_pred.legend(title="FLOPs", fontsize=7, title_fontsize=8, ncol=2)
    ax_res.axhline(0, color="gray", lw=1)
    ax_res.set(xscale="log", xlabel="parameters N", ylabel="log(observed / predicted)", title="residuals")
    for ax in (ax_pred, ax_res):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
