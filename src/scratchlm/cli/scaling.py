"""`scratchlm scaling fit|plan|sweep`: fit scaling laws to IsoFLOP runs and plan compute-optimal models."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.atomic import write_text_atomic
from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args

if TYPE_CHECKING:  # the library imports torch: commands import it when they run
    from scratchlm.scaling.fit import Run

LABELS = {"envelope": "1 envelope", "isoflops": "2 IsoFLOP", "parametric": "3 parametric"}
BAND_POINTS = 25  # budgets on which approach 2's bootstrap band is drawn


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    help_ = "fit approaches 2 and 3 (and 1 when runs have curves) with bootstrap intervals; write fit.json and PNGs"
    fit = verbs.add_parser("fit", help=help_, description=help_)
    fit.add_argument("results", help="runs: sweep results (.jsonl), a .csv with the same columns or a cs336 .json list")
    fit.add_argument("--out", help="folder for fit.json and the PNGs (default: <results stem>_fit/ beside RESULTS)")
    _add_n_boot(fit)
    fit.add_argument("--budgets", type=_budget_list, default=(1e23, 1e24),
                     help="comma-separated FLOP budgets to predict at (default: 1e23,1e24)")
    fit.set_defaults(func=fit_cmd)

    help_ = "compute-optimal N, D, tokens per parameter and loss at one budget (approaches 2 and 3)"
    plan = verbs.add_parser("plan", help=help_, description=help_)
    plan.add_argument("--budget", type=_positive_float, required=True, help="FLOP budget, e.g. 1e21")
    plan.add_argument("--results", required=True, help="runs to fit (formats as for `scaling fit`)")
    _add_n_boot(plan)
    plan.set_defaults(func=plan_cmd)

    help_ = "predicted vs measured loss of held-out runs (e.g. one at 10x the largest budget) under approaches 2 and 3"
    check = verbs.add_parser("check", help=help_, description=help_)
    check.add_argument("results", help="runs to fit (formats as for `scaling fit`)")
    check.add_argument("held_out", help="runs to predict, not fitted (same formats)")
    check.add_argument("--out", help="where to write check.json (default: beside HELD_OUT)")
    _add_n_boot(check)
    check.set_defaults(func=check_cmd)

    _register_sweep(verbs)


def _register_sweep(verbs: Any) -> None:
    """The `sweep` verb; its flags come from SweepConfig (importing it imports torch, as `train` does)."""
    from scratchlm.scaling.sweep import SweepConfig

    help_ = "train an IsoFLOP grid of models and record their final losses (results .jsonl)"
    sweep = verbs.add_parser("sweep", help=help_, description=help_)
    add_preset_args(sweep)
    add_dataclass_args(sweep, SweepConfig)
    sweep.set_defaults(func=sweep_cmd)


def _add_n_boot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-boot", type=_positive_int, default=200,
                        help="bootstrap resamples for the intervals (default: 200; approach 3 refits take ~0.6 s each)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e21, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _budget_list(text: str) -> tuple[float, ...]:
    budgets = [_positive_float(part.strip()) for part in text.split(",") if part.strip()]
    if not budgets:
        raise argparse.ArgumentTypeError(f"expected budgets such as 1e23,1e24, got {text!r}")
    return tuple(dict.fromkeys(budgets))  # in the order given, without repeats


# --- output --------------------------------------------------------------------------------------------


def _interval(stats: dict[str, float], spec: str = "#.3g") -> str:
    return f"{stats['value']:{spec}} [{stats['low']:{spec}}, {stats['high']:{spec}}]"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def _prediction_table(budget: float, predictions: dict[str, dict[str, Any]]) -> str:
    """Rows of N_opt, D_opt, D/N and loss (each `value [low, high]`) at one budget, one row per approach."""
    rows = [[LABELS[name], _interval(p["params"]), _interval(p["tokens"]), _interval(p["tokens_per_param"]),
             _interval(p["loss"], ".3f") if "loss" in p else "-"] for name, p in predictions.items()]
    return f"C = {budget:.3g} FLOPs\n" + _table(["approach", "N_opt", "D_opt", "tokens/param", "loss"], rows)


def _exponent_table(boots: dict[str, dict[str, Any]]) -> str:
    rows = [[LABELS[name], *(_interval(b["parameters"][key], ".3f") for key in ("n_exponent", "d_exponent")),
             f"{b['n_failed']}/{b['n_boot']}"] for name, b in boots.items()]
    return _table(["approach", "N_opt ~ C^a", "D_opt ~ C^b", "failed refits"], rows)


def _constants_line(parameters: dict[str, dict[str, float]]) -> str:
    return "approach 3: L = E + A/N^alpha + B/D^beta with " + ", ".join(
        f"{key} {_interval(parameters[key])}" for key in ("E", "A", "B", "alpha", "beta"))


# --- commands ------------------------------------------------------------------------------------------


def fit_cmd(args: argparse.Namespace) -> int:
    from scratchlm.scaling.fit import load_runs

    results = Path(args.results)
    runs = load_runs(results)
    fits, boots = _fit_and_bootstrap(runs, args.budgets, args.n_boot)
    _print_fit(runs, results, fits, boots, args.budgets)
    out = Path(args.out) if args.out else results.with_name(f"{results.stem}_fit")
    print("\nwrote " + ", ".join(str(p) for p in _write_fit(out, runs, results, fits, boots, args.budgets)))
    return 0


def _fit_and_bootstrap(runs: list[Run], budgets: tuple[float, ...], n_boot: int) -> tuple[dict, dict]:
    """Every applicable approach's fit and bootstrap; approach 2's also on a grid of budgets, for its band."""
    import numpy as np

    from scratchlm.scaling.fit import APPROACHES, bootstrap

    names = (["envelope"] if all(r.curve for r in runs) else []) + ["isoflops", "parametric"]
    band = tuple(np.geomspace(min(r.budget for r in runs), max(budgets), BAND_POINTS))
    fits = {name: APPROACHES[name](runs) for name in names}
    boots = {name: bootstrap(runs, APPROACHES[name], n_boot=n_boot,
                             budgets=budgets + (band if name == "isoflops" else ())) for name in names}
    return fits, boots


def _at(boot: dict[str, Any], budget: float) -> dict[str, Any]:
    """A bootstrap's prediction entry for `budget`."""
    return next(p for p in boot["predictions"] if p["budget"] == budget)


def _print_fit(runs: list[Run], results: Path, fits: dict, boots: dict, budgets: tuple[float, ...]) -> None:
    run_budgets = sorted({r.budget for r in runs})
    print(f"{len(runs)} runs at {len(run_budgets)} budgets ({run_budgets[0]:.3g} to {run_budgets[-1]:.3g} FLOPs) "
          f"from {results}; {boots['isoflops']['level']:.0%} intervals from {boots['isoflops']['n_boot']} "
          "bootstrap resamples\n")
    print(_exponent_table(boots))
    print(_constants_line(boots["parametric"]["parameters"]))
    for v in fits["isoflops"].vertices:
        if v.extrapolated:
            print(f"note: at {v.budget:.3g} FLOPs the parabola's optimum N={v.params:.3g} lies outside the sizes run "
                  f"({v.n_range[0]:.3g} to {v.n_range[1]:.3g}); add runs around it")
    for budget in budgets:
        print("\n" + _prediction_table(budget, {name: _at(boot, budget) for name, boot in boots.items()}))


def _write_fit(out: Path, runs: list[Run], results: Path, fits: dict, boots: dict,
               budgets: tuple[float, ...]) -> list[Path]:
    """fit.json (fits, intervals, predictions at the requested budgets) and the three PNGs."""
    from scratchlm.scaling import plots

    report = {"results": str(results), "n_runs": len(runs), "run_budgets": sorted({r.budget for r in runs}),
              "budgets": list(budgets),
              "approaches": {name: {"fit": fits[name].to_dict(), **boot,
                                    "predictions": [_at(boot, b) for b in budgets]} for name, boot in boots.items()}}
    write_text_atomic(out / "fit.json", json.dumps(report, indent=2) + "\n")
    others = {f"approach {LABELS[name]}": fit for name, fit in fits.items() if name != "isoflops"}
    return [out / "fit.json", plots.plot_isoflops(fits["isoflops"], runs, out / "isoflops.png"),
            plots.plot_power_laws(fits["isoflops"], out / "power_laws.png", max(budgets), band=boots["isoflops"],
                                  others=others),
            plots.plot_parametric_residuals(fits["parametric"], runs, out / "parametric_residuals.png")]


def plan_cmd(args: argparse.Namespace) -> int:
    from scratchlm.scaling.fit import load_runs, plan

    result = plan(args.budget, load_runs(args.results), n_boot=args.n_boot)
    print(f"{result['level']:.0%} intervals from {args.n_boot} bootstrap resamples of {args.results}")
    print(_prediction_table(args.budget, {name: result[name] for name in ("isoflops", "parametric")}))
    return 0


def check_cmd(args: argparse.Namespace) -> int:
    from scratchlm.scaling.fit import check_held_out, load_runs

    rows = check_held_out(load_runs(args.results), load_runs(args.held_out), n_boot=args.n_boot)
    print(f"95% intervals from {args.n_boot} bootstrap resamples of {args.results}; error = predicted / measured - 1")
    table = []
    for row in rows:
        cells = [row["name"] or "-", f"{row['params']:.3g}", f"{row['tokens']:.3g}", f"{row['compute']:.3g}",
                 f"{row['loss']:.4f}"]
        for name in ("parametric", "isoflops"):
            cells += [_interval(row[name]["predicted"], ".4f"), f"{row[name]['error']:+.2%}"]
        table.append(cells)
    print(_table(["run", "N", "D", "C", "measured", "approach 3", "error", "approach 2 (optimal)", "error"], table))
    out = Path(args.out) if args.out else Path(args.held_out).with_name("check.json")
    write_text_atomic(out, json.dumps({"results": args.results, "held_out": args.held_out, "n_boot": args.n_boot,
                                       "runs": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def sweep_cmd(args: argparse.Namespace) -> int:
    from scratchlm.scaling.sweep import SweepConfig, run_sweep

    print(f"results: {run_sweep(config_from_args(args, SweepConfig))}")
    return 0
