"""The published cs336 IsoFLOP runs through the fits and through `scratchlm scaling fit|plan|sweep`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types

import pytest

from scratchlm.cli.main import build_parser, main
from scratchlm.scaling import fit_isoflops, fit_parametric, load_runs
from tests.conftest import shared_data
from tests.scaling.synthetic import synthetic_runs

CS336 = "scaling/cs336_isoflops_curves.json"
PNGS = ("isoflops.png", "power_laws.png", "parametric_residuals.png")


@pytest.fixture(scope="module")
def cs336():
    return shared_data(CS336)


def test_cs336_fits_are_plausible(cs336):
    runs = load_runs(cs336)
    assert len(runs) == 72 and len({r.budget for r in runs}) == 9
    fits = {"isoflops": fit_isoflops(runs), "parametric": fit_parametric(runs)}
    for name, fit in fits.items():
        exponent, at = fit.parameters()["n_exponent"], fit.predict(1e23)
        print(f"{name}: N_opt ~ C^{exponent:.3f}; at 1e23 N={at['params']:.3g} D={at['tokens']:.3g} "
              f"loss={at['loss']:.3f}")
        assert 0.3 <= exponent <= 0.7
        assert 1e10 <= at["params"] <= 1e12
    # the two approaches agree on the allocation (not on the loss: approach 2's L_opt has no floor E)
    n_opt = {name: fit.predict(1e23)["params"] for name, fit in fits.items()}
    assert n_opt["isoflops"] == pytest.approx(n_opt["parametric"], rel=0.05)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_fit_writes_fit_json_and_pngs(cs336, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["scaling", "fit", str(cs336), "--out", str(out), "--n-boot", "2", "--budgets", "1e23,1e24"]) == 0
    text = capsys.readouterr().out
    assert "72 runs at 9 budgets" in text and "C = 1e+23 FLOPs" in text and "C = 1e+24 FLOPs" in text
    assert "2 IsoFLOP" in text and "3 parametric" in text and "1 envelope" not in text
    report = json.loads((out / "fit.json").read_text())
    assert set(report["approaches"]) == {"isoflops", "parametric"}
    for approach in report["approaches"].values():
        assert [p["budget"] for p in approach["predictions"]] == [1e23, 1e24]
        assert approach["n_boot"] == 2 and "n_exponent" in approach["parameters"]
    assert all(_is_png(out / png) for png in PNGS)


def test_cli_plan(cs336, capsys):
    assert main(["scaling", "plan", "--budget", "1e21", "--results", str(cs336), "--n-boot", "2"]) == 0
    text = capsys.readouterr().out
    assert "C = 1e+21 FLOPs" in text and "2 IsoFLOP" in text and "3 parametric" in text and "tokens/param" in text


def test_cli_fit_with_curves_adds_approach_1_and_writes_beside_the_results(tmp_path, capsys):
    results = tmp_path / "sweep.jsonl"
    rows = [{**dataclasses.asdict(r), "curve": [list(p) for p in r.curve]} for r in synthetic_runs(curves=True)]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["scaling", "fit", str(results), "--n-boot", "2", "--budgets", "1e22"]) == 0
    assert "1 envelope" in capsys.readouterr().out
    report = json.loads((tmp_path / "sweep_fit" / "fit.json").read_text())
    assert set(report["approaches"]) == {"envelope", "isoflops", "parametric"}
    assert "loss" not in report["approaches"]["envelope"]["predictions"][0]
    assert all(_is_png(tmp_path / "sweep_fit" / png) for png in PNGS)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["scaling", "fit", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,budget\n")
    assert main(["scaling", "plan", "--budget", "1e21", "--results", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}:1: the header lacks")
    assert main(["scaling", "fit", str(bad), "--budgets", "1e23,lots"]) == 2
    assert main(["scaling", "fit", str(bad), "--n-boot", "0"]) == 2
    assert main(["scaling", "plan", "--results", str(bad)]) == 2  # --budget is required


def _verbs() -> set[str]:
    def subparsers(parser: argparse.ArgumentParser) -> dict:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    return set(subparsers(subparsers(build_parser(["scaling"]))["scaling"]))


def test_sweep_verb_builds_the_config_and_calls_run_sweep(monkeypatch, capsys):
    @dataclasses.dataclass(kw_only=True)
    class SweepConfig:
        out: str = "runs/sweep"
        sizes: int = 5

    calls = []
    module = types.ModuleType("scratchlm.scaling.sweep")
    module.SweepConfig = SweepConfig
    module.run_sweep = lambda cfg: calls.append(cfg) or f"{cfg.out}/results.jsonl"
    monkeypatch.setitem(sys.modules, "scratchlm.scaling.sweep", module)
    assert "sweep" in _verbs()
    assert main(["scaling", "sweep", "--out", "x", "--set", "sizes=7"]) == 0
    assert calls == [SweepConfig(out="x", sizes=7)]
    assert capsys.readouterr().out.strip() == "results: x/results.jsonl"
