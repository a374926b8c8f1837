"""The three Chinchilla approaches and the bootstrap recover a known L(N, D) from synthetic IsoFLOP runs.

Tolerances come from refitting 40 noise seeds of `synthetic_runs()` (sigma = 0.005): the seed-to-seed
standard deviation was 0.008 for alpha, 0.006 for beta and for approach 3's N_opt exponent, 0.008 for
approach 2's N_opt exponent, 1.6% for E and 0.12 for log A and log B (A trades off against alpha). Each
check allows about 4 standard deviations: exponents 0.03, E 6%, A and B a factor e^0.5.
"""

from __future__ import annotations

import functools
import json
import math
import re

import numpy as np
import pytest
import torch

from scratchlm.scaling import (
    ParametricFit,
    PowerLawFit,
    Run,
    bootstrap,
    envelope,
    fit_envelope,
    fit_isoflops,
    fit_parametric,
    fit_power_law,
    plan,
)
from scratchlm.scaling.fit import check_held_out, huber_objective
from tests.scaling.synthetic import BUDGETS, N_EXPONENT, TRUE, synthetic_runs


@pytest.fixture(scope="module")
def noisy_runs() -> list[Run]:
    return synthetic_runs(sigma=0.005, seed=0)


@pytest.fixture(scope="module")
def noisy_parametric(noisy_runs) -> ParametricFit:
    return fit_parametric(noisy_runs)


# --- approach 3 --------------------------------------------------------------------------------------


def test_parametric_recovers_the_five_constants_from_noisy_runs(noisy_parametric):
    fit = noisy_parametric
    assert abs(fit.alpha - TRUE.alpha) < 0.03 and abs(fit.beta - TRUE.beta) < 0.03
    assert abs(fit.parameters()["n_exponent"] - N_EXPONENT) < 0.03
    assert abs(fit.E / TRUE.E - 1) < 0.06
    assert abs(math.log(fit.A / TRUE.A)) < 0.5 and abs(math.log(fit.B / TRUE.B)) < 0.5


def test_parametric_is_near_exact_on_noise_free_runs():
    fit = fit_parametric(synthetic_runs(sigma=0.0))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=1e-4), name


def test_closed_form_allocation_is_the_minimum_along_the_isoflop_line():
    budget = 1e22
    prediction = TRUE.predict(budget)
    n, d = prediction["params"], prediction["tokens"]
    assert 6 * n * d == pytest.approx(budget)
    assert prediction["loss"] == pytest.approx(TRUE.predict_loss(n, d))
    for factor in (0.98, 1.02):  # moving along 6ND = C in either direction costs loss
        assert TRUE.predict_loss(n * factor, d / factor) > prediction["loss"]
    assert TRUE.parameters()["n_exponent"] == pytest.approx(N_EXPONENT)
    # the power-law coefficients reproduce predict()
    params = TRUE.parameters()
    assert params["n_coef"] * budget ** params["n_exponent"] == pytest.approx(n)
    assert params["d_coef"] * budget ** params["d_exponent"] == pytest.approx(d)


def test_hand_written_gradient_matches_autograd():
    runs = synthetic_runs(sigma=0.05, seed=3)  # residuals beyond delta and within it
    cols = [torch.tensor(np.log([getattr(r, key) for r in runs])) for key in ("params", "tokens", "loss")]  # (R,) each
    theta = torch.tensor([[0.3, 5.0, 6.0, 0.3, 0.3], [0.6, 6.0, 6.1, 0.35, 0.28]], dtype=torch.float64,
                         requires_grad=True)
    value, grad = huber_objective(theta, *cols, delta=1e-3)
    value.sum().backward()
    torch.testing.assert_close(grad, theta.grad)


def test_parametric_needs_five_runs():
    with pytest.raises(ValueError, match="5 or more runs"):
        fit_parametric(synthetic_runs()[:4])


# --- approach 2 --------------------------------------------------------------------------------------


def test_isoflops_recovers_the_exponent(noisy_runs):
    fit = fit_isoflops(noisy_runs)
    assert abs(fit.n_opt.exponent - N_EXPONENT) < 0.03
    assert fit.n_opt.exponent + fit.d_opt.exponent == pytest.approx(1.0)  # D_opt = C / (6 N_opt) exactly
    assert [v.budget for v in fit.vertices] == list(BUDGETS)
    assert not any(v.extrapolated for v in fit.vertices)
    prediction = fit.predict(1e22)
    assert 6 * prediction["params"] * prediction["tokens"] == pytest.approx(1e22)


def test_isoflops_is_exact_on_noise_free_runs():
    # Every budget's profile is the same curve in log(N / N_opt(C)), shifted and scaled, so the parabolas'
    # vertices sit at the same offset from the true optimum and the exponent comes out exact.
    fit = fit_isoflops(synthetic_runs(sigma=0.0))
    assert fit.n_opt.exponent == pytest.approx(N_EXPONENT, abs=1e-9)


def test_isoflops_errors_name_the_budget():
    runs = synthetic_runs()
    short = [r for r in runs if r.budget != BUDGETS[2]] + [r for r in runs if r.budget == BUDGETS[2]][:2]
    with pytest.raises(ValueError, match=re.escape(f"budget {BUDGETS[2]:.3g}: a parabola needs runs of 3 or more")):
        fit_isoflops(short)
    flipped = [Run(r.params, r.tokens, r.compute, 10 - r.loss, r.budget) if r.budget == BUDGETS[1] else r for r in runs]
    with pytest.raises(ValueError, match=re.escape(f"budget {BUDGETS[1]:.3g}: the loss is not convex")):
        fit_isoflops(flipped)
    with pytest.raises(ValueError, match="two or more budgets"):
        fit_isoflops([r for r in runs if r.budget == BUDGETS[0]])


# --- approach 1 --------------------------------------------------------------------------------------


def test_envelope_recovers_the_exponent_from_training_curves():
    # Noise-free curves: the only error is that the envelope can only pick among the sizes that were run.
    fit = fit_envelope(synthetic_runs(sigma=0.0, curves=True))
    assert abs(fit.n_opt.exponent - N_EXPONENT) < 0.01
    assert abs(fit.d_opt.exponent - (1 - N_EXPONENT)) < 0.01
    # With noise the envelope is a minimum over noisy curves: seed-to-seed std 0.028 over 20 seeds.
    noisy = fit_envelope(synthetic_runs(sigma=0.005, seed=0, curves=True))
    assert abs(noisy.n_opt.exponent - N_EXPONENT) < 0.1
    n_opt, d_opt = noisy  # a pair of power laws
    assert isinstance(n_opt, PowerLawFit) and isinstance(d_opt, PowerLawFit)


def test_envelope_points_and_errors():
    runs = synthetic_runs(sigma=0.0, curves=True)
    compute, params, tokens = envelope(runs, n_points=30)
    assert compute.shape == params.shape == tokens.shape and len(compute) == 30
    assert compute[0] == pytest.approx(min(BUDGETS)) and compute[-1] == pytest.approx(max(BUDGETS))
    np.testing.assert_allclose(6 * params * tokens, compute, rtol=1e-9)
    assert np.all(np.diff(params) >= 0)  # bigger budgets never pick smaller models here
    with pytest.raises(ValueError, match="training curve"):
        fit_envelope(synthetic_runs())


# --- power laws, serialisation -----------------------------------------------------------------------


def test_power_law_fit_and_call():
    law = fit_power_law([1e18, 1e19, 1e20], [2 * 1e18**0.5, 2 * 1e19**0.5, 2 * 1e20**0.5])
    assert law.k == pytest.approx(2) and law.exponent == pytest.approx(0.5)
    assert isinstance(law(1e22), float) and law(1e22) == pytest.approx(2e11)
    assert law(np.array([1e18, 1e20])).shape == (2,)
    with pytest.raises(ValueError, match="two or more distinct"):
        fit_power_law([1e18, 1e18], [1, 2])


def test_every_fit_is_json_serialisable(noisy_runs, noisy_parametric):
    fits = [fit_isoflops(noisy_runs), noisy_parametric, fit_envelope(synthetic_runs(sigma=0.0, curves=True))]
    for fit in fits:
        data = json.loads(json.dumps(fit.to_dict()))
        assert data["approach"] in ("isoflops", "parametric", "envelope")
        json.dumps(fit.parameters())


# --- bootstrap and plan ------------------------------------------------------------------------------


def _contains(stats: dict, truth: float) -> bool:
    return stats["low"] <= truth <= stats["high"] and stats["high"] > stats["low"]


def test_bootstrap_intervals_contain_the_truth():
    # Over 20 noise seeds (30 resamples each) these 95% intervals held the true value 18-20 times out of 20
    # per constant, and their width matched the seed-to-seed spread within 20%: the bootstrap is calibrated,
    # so one seed (1, fixed) is expected to cover everything. 5 starts instead of 20 keep the 30 refits
    # quick; with centred coordinates the best 4 starts already all reach the global minimum.
    runs = synthetic_runs(sigma=0.005, seed=1)
    truth = {**TRUE.parameters(), "n_exponent": N_EXPONENT}
    boot = bootstrap(runs, functools.partial(fit_parametric, n_starts=5), n_boot=30, seed=0, budgets=(1e23,))
    assert boot["n_failed"] == 0 and boot["n_boot"] == 30
    for name in ("E", "A", "B", "alpha", "beta", "n_exponent", "d_exponent"):
        assert _contains(boot["parameters"][name], truth[name]), (name, boot["parameters"][name], truth[name])
    at = boot["predictions"][0]
    for key, value in TRUE.predict(1e23).items():
        assert _contains(at[key], value), (key, at[key], value)
    assert at["tokens_per_param"]["value"] == pytest.approx(at["tokens"]["value"] / at["params"]["value"])

    iso = bootstrap(runs, fit_isoflops, n_boot=100, seed=0, budgets=(1e23,))
    assert _contains(iso["parameters"]["n_exponent"], N_EXPONENT)
    assert _contains(iso["predictions"][0]["params"], TRUE.predict(1e23)["params"])
    json.dumps(iso)


def test_bootstrap_resamples_within_budgets_and_counts_failures(noisy_runs):
    calls = []

    def fit_fn(runs):
        calls.append(sorted(r.budget for r in runs))
        if len(calls) % 3 == 0:
            raise ValueError("synthetic failure")
        return fit_isoflops(runs)

    boot = bootstrap(noisy_runs, fit_fn, n_boot=9, seed=1)
    assert len(calls) == 10  # the fit on all runs, then 9 resamples
    assert all(c == calls[0] for c in calls)  # every budget keeps its 7 runs
    assert boot["n_failed"] == 3 and boot["first_failure"] == "synthetic failure"
    assert [p["budget"] for p in boot["predictions"]] == [1e23, 1e24]

    def fails_on_resamples(runs):
        calls.append(None)
        if len(calls) > 11:
            raise ValueError("no luck")
        return fit_isoflops(runs)

    with pytest.raises(ValueError, match="all 2 bootstrap fits failed; the last with: no luck"):
        bootstrap(noisy_runs, fails_on_resamples, n_boot=2)


def test_bootstrap_is_reproducible_for_a_seed(noisy_runs):
    a, b = (bootstrap(noisy_runs, fit_isoflops, n_boot=20, seed=5) for _ in range(2))
    assert a == b
    assert bootstrap(noisy_runs, fit_isoflops, n_boot=20, seed=6) != a


def test_plan_gives_both_approaches_with_intervals(noisy_runs):
    result = plan(1e21, noisy_runs, n_boot=2)
    assert result["budget"] == 1e21
    for name in ("isoflops", "parametric"):
        for key in ("params", "tokens", "tokens_per_param", "loss"):
            stats = result[name][key]
            assert stats["low"] <= stats["high"] and stats["value"] > 0
    true_n = TRUE.optimal_params(1e21)
    assert result["parametric"]["params"]["value"] == pytest.approx(true_n, rel=0.15)
    assert result["isoflops"]["params"]["value"] == pytest.approx(true_n, rel=0.15)
    with pytest.raises(ValueError, match="budget must be a positive"):
        plan(-1, noisy_runs, n_boot=2)


def test_held_out_check_predicts_a_run_at_ten_times_the_largest_budget(noisy_runs):
    budget = 10 * max(BUDGETS)
    n_opt = TRUE.optimal_params(budget)
    held_out = [Run(params=n, tokens=budget / (6 * n), compute=budget, budget=budget, name=f"N{n:.3g}",
                    loss=float(TRUE.predict_loss(n, budget / (6 * n)))) for n in (n_opt, 3 * n_opt)]
    rows = check_held_out(noisy_runs, held_out, n_boot=5, seed=0)
    assert [r["name"] for r in rows] == [f"N{n_opt:.3g}", f"N{3 * n_opt:.3g}"]
    for row, run in zip(rows, held_out):
        p3 = row["parametric"]
        assert p3["error"] == pytest.approx(p3["predicted"]["value"] / run.loss - 1)
        assert abs(p3["error"]) < 0.01 and p3["predicted"]["low"] <= p3["predicted"]["high"]
    # approach 2's L_opt(C) is a pure power law (no irreducible E), so 10x past the fitted budgets it is too
    # optimistic even for the optimal run (here by ~9%: E is 70% of the loss), and more so for a worse shape
    assert -0.15 < rows[0]["isoflops"]["error"] < 0
    assert rows[1]["isoflops"]["error"] < rows[0]["isoflops"]["error"]
    json.dumps(rows)
