"""IsoFLOP sweeps on the CPU: planning rules, results table, resuming, parallel devices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scratchlm.config import ConfigError, build_config, save_config
from scratchlm.scaling.sweep import SweepConfig, auto_depths, plan_runs, run_sweep, shape
from scratchlm.train import TrainConfig
from tests.train.conftest import tiny_config, token_files  # noqa: F401  (the fixture)


@pytest.fixture
def base(tmp_path, token_files) -> Path:  # noqa: F811  (pytest injects the imported fixture)
    path = tmp_path / "base.json"
    save_config(tiny_config(tmp_path / "unused", token_files), path)
    return path


def sweep_config(base: Path, tmp_path: Path, **kwargs) -> SweepConfig:
    defaults = dict(budgets=[3e9, 1e10], depths=[1, 2], base=str(base), out=str(tmp_path / "sweep"), min_steps=5,
                    devices=["cpu"])
    return SweepConfig(**{**defaults, **kwargs})


def test_plan_follows_the_documented_rules(base, tmp_path):
    runs = plan_runs(sweep_config(base, tmp_path))
    base_cfg = build_config(TrainConfig, str(base))
    assert [r.name for r in runs] == ["C3.0e09-depth1", "C1.0e10-depth1", "C1.0e10-depth2"]  # 3e9 x depth 2: 4 steps
    for run in runs:
        cfg = run.config
        assert cfg.model.d_model == 64 * cfg.model.n_layers and cfg.model.head_dim == 64
        assert cfg.steps == round(run.budget / cfg.model.flops_per_token() / cfg.tokens_per_step)
        assert cfg.optimizer.lr == pytest.approx(base_cfg.optimizer.lr * base_cfg.model.d_model / cfg.model.d_model)
        assert cfg.schedule.warmup_steps <= max(1, cfg.steps // 10)


def test_auto_depths_bracket_the_chinchilla_guess(base, tmp_path):
    model = build_config(TrainConfig, str(base)).model
    depths = auto_depths(sweep_config(base, tmp_path, depths=[], points=5), model, 1e17)
    sizes = [shape(model, d).n_params(embeddings=False) for d in depths]
    guess = math.sqrt(1e17 / 120)
    assert len(depths) >= 4 and depths == sorted(depths)
    assert sizes[0] < guess < sizes[-1] and sizes[-1] / sizes[0] > 8


def test_finer_dial_and_sizes_by_parameter_count(base, tmp_path):
    cfg = sweep_config(base, tmp_path, depths=[], params=[3e5, 5e6], width_per_layer=32, head_dim=16,
                       budgets=[1e12], min_steps=1)
    runs = plan_runs(cfg)
    for run, target in zip(runs, cfg.params):
        model = run.config.model
        assert model.d_model == 32 * model.n_layers and model.head_dim == 16
        # no other depth on the dial is closer to the requested size
        sizes = {d: shape(model, d, 32, 16).n_params() for d in range(1, 40)}  # all parameters, as the fits
        best = min(sizes, key=lambda d: abs(math.log(sizes[d] / target)))
        assert model.n_layers == best
    assert len(runs) == 2 and runs[0].config.model.n_layers < runs[1].config.model.n_layers


@pytest.mark.parametrize("kwargs, message", [
    (dict(depths=[2], params=[1e6]), "depths or params"),
    (dict(params=[-1.0], depths=[]), "params must be positive"),
    (dict(width_per_layer=48, head_dim=32), "must be positive and divide"),
])
def test_bad_sweep_configs_are_rejected(base, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sweep_config(base, tmp_path, **kwargs)


def test_sweep_writes_results_and_skips_finished_runs(base, tmp_path):
    cfg = sweep_config(base, tmp_path)
    results = run_sweep(cfg, report=lambda _: None)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["C3.0e09-depth1", "C1.0e10-depth1", "C1.0e10-depth2"]
    for row in rows:
        assert row["compute"] == pytest.approx(row["budget"], rel=0.2)  # whole steps only
        assert row["curve"][-1] == [row["compute"], row["loss"]] and len(row["curve"]) >= 5
    # the bigger budget buys the same model a lower loss
    assert rows[1]["loss"] < rows[0]["loss"]
    lines = []
    run_sweep(cfg, report=lines.append)
    assert "3 already done" in lines[0] and len(lines) == 1
    # a run that died after its last checkpoint resumes instead of starting over
    summary = tmp_path / "sweep" / "runs" / "C1.0e10-depth1" / "summary.json"
    summary.unlink()
    run_sweep(cfg, report=lambda _: None)
    assert json.loads(summary.read_text())["resumed_from"] is not None
    assert [json.loads(line) for line in results.read_text().splitlines()] == rows


def test_parallel_devices_run_in_subprocesses(base, tmp_path):
    cfg = sweep_config(base, tmp_path, budgets=[3e9], depths=[1], devices=["cpu", "cpu"])
    rows = results_rows(run_sweep(cfg, report=lambda _: None))
    assert [r["name"] for r in rows] == ["C3.0e09-depth1"]
    assert (tmp_path / "sweep" / "runs" / "C3.0e09-depth1" / "planned.json").is_file()


def results_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_sweeps_are_clear_errors(base, tmp_path):
    with pytest.raises(ConfigError, match="left out"):
        plan_runs(sweep_config(base, tmp_path, budgets=[1e3]))
    with pytest.raises(ConfigError, match="positive"):
        sweep_config(base, tmp_path, budgets=[-1.0])
    with pytest.raises(ConfigError, match="data.train"):
        plan_runs(sweep_config(Path("train/cpu-tiny"), tmp_path))
