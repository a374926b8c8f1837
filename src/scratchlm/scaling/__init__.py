"""Scaling laws (Hoffmann et al. 2022, "Chinchilla"): fit how loss depends on parameters N and tokens D, and
plan the compute-optimal N and D for a FLOP budget C.

`fit` loads finished runs and fits the three approaches of the paper (training-curve envelope, IsoFLOP
parabolas, the parametric loss L(N, D) = E + A/N^alpha + B/D^beta) with bootstrap intervals; `plots` draws
them. The IsoFLOP sweep that produces the runs lives in `scaling.sweep`; see docs/scaling.md.
"""

from scratchlm.scaling.fit import (
    EnvelopeFit,
    IsoFlopFit,
    ParametricFit,
    PowerLawFit,
    Run,
    Vertex,
    bootstrap,
    envelope,
    fit_envelope,
    fit_isoflops,
    fit_parabola,
    fit_parametric,
    fit_power_law,
    load_runs,
    plan,
)
from scratchlm.scaling.plots import plot_isoflops, plot_parametric_residuals, plot_power_laws

__all__ = [
    "Run", "load_runs", "PowerLawFit", "fit_power_law", "EnvelopeFit", "envelope", "fit_envelope", "Vertex",
    "IsoFlopFit", "fit_parabola", "fit_isoflops", "ParametricFit", "fit_parametric", "bootstrap", "plan",
    "plot_isoflops", "plot_power_laws", "plot_parametric_residuals",
]
