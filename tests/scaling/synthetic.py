"""Runs drawn from a known L(N, D) on an IsoFLOP design: the ground truth the fitting tests must recover."""

from __future__ import annotations

import numpy as np

from scratchlm.scaling import ParametricFit, Run

TRUE = ParametricFit(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)
N_EXPONENT = TRUE.beta / (TRUE.alpha + TRUE.beta)  # 0.4516: N_opt ~ C^(beta / (alpha + beta))
BUDGETS = tuple(float(c) for c in np.geomspace(1e17, 1e21, 5))
# Seven sizes per budget spanning 64x, centred 1.4x above the true optimum: a sweep planned from a rough guess.
SIZES = 1.4 * np.geomspace(1 / 8, 8, 7)


def synthetic_runs(sigma: float = 0.005, seed: int = 0, curves: bool = False) -> list[Run]:
    """5 budgets x 7 sizes, D = C / 6N, each run's loss times log-normal noise exp(sigma * z).

    With `curves`, each run also has a training curve: (6 N D', loss at D') for 16 token counts D' from D/30
    to D, ending at the run's final point. The run's noise factor scales its whole curve, as a different seed
    shifts a real curve rather than jittering each logged point independently.
    """
    rng = np.random.default_rng(seed)
    runs = []
    for budget in BUDGETS:
        for params in TRUE.optimal_params(budget) * SIZES:
            tokens = budget / (6 * params)
            seen = tokens * np.geomspace(1 / 30, 1, 16)  # (16,) token counts along training
            losses = TRUE.predict_loss(params, seen) * np.exp(sigma * rng.standard_normal())  # (16,)
            curve = [(6 * params * d, float(loss)) for d, loss in zip(seen, losses)] if curves else None
            runs.append(Run(params=float(params), tokens=float(tokens), compute=budget, loss=float(losses[-1]),
                            budget=budget, curve=curve, name=f"C{budget:.0e}-N{params:.3g}"))
    return runs
