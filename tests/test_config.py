"""Configs: strict dict -> dataclass, typed values, precedence, presets, overrides, flags, run records."""

from __future__ import annotations  # on purpose: annotations are strings, resolved by get_type_hints

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm import config
from scratchlm.config import (
    ConfigError,
    add_dataclass_args,
    add_preset_args,
    apply_overrides,
    build_config,
    coerce,
    collect_dataclass_args,
    config_from_args,
    from_dict,
    load_config_file,
    resolve_preset,
    save_config,
    to_dict,
    write_run_info,
)


@dataclass(kw_only=True)
class Optim:
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup: int = 100

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class Model:
    d_model: int = 64
    n_heads: int = 4
    d_head: int = field(init=False)  # derived, recorded in config.json but never set

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        self.d_head = self.d_model // self.n_heads


@dataclass(kw_only=True)
class Run:
    name: str = "run"
    out: Path = Path("runs/x")
    seed: int | None = None
    compile: bool = False
    files: list[str] = field(default_factory=list, metadata={"help": "input files"})
    steps: list[int] = field(default_factory=lambda: [10, 20])
    special: list[str] = field(default_factory=lambda: ["<eot>"], metadata={"flag": "--special-token", "action": "append"})
    model: Model = field(default_factory=lambda: Model(d_model=128))  # a stage default other than Model's own
    optim: Optim = field(default_factory=Optim)


@dataclass(kw_only=True)
class Needs:
    path: Path = field(metadata={"help": "where"})


# --- from_dict / to_dict ---------------------------------------------------------------------------


def test_from_dict_coerces_nested_and_keeps_stage_defaults():
    cfg = from_dict(Run, {"out": "a/b", "model": {"n_heads": 8}, "optim": {"betas": [0.8, 0.9]}})
    assert cfg.out == Path("a/b") and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.d_model == 128 and cfg.model.n_heads == 8 and cfg.model.d_head == 16  # Run's default kept


def test_to_dict_is_json_and_round_trips_with_derived_fields():
    cfg = apply_overrides(Run, ["out=/tmp/x", "seed=3", "model.d_model=256"])
    data = to_dict(cfg)
    assert data["out"] == "/tmp/x" and data["model"]["d_head"] == 64 and data["optim"]["betas"] == [0.9, 0.95]
    assert from_dict(Run, json.loads(json.dumps(data))) == cfg


@settings(max_examples=40, deadline=None)
@given(
    name=st.text(max_size=8),
    seed=st.none() | st.integers(-(2**40), 2**40),
    compile=st.booleans(),
    files=st.lists(st.text(max_size=5), max_size=3),
    lr=st.floats(1e-6, 10, allow_nan=False),
    schedule=st.sampled_from(["cosine", "linear"]),
    heads=st.sampled_from([1, 2, 4, 8]),
)
def test_any_valid_config_round_trips_through_json(name, seed, compile, files, lr, schedule, heads):
    cfg = Run(name=name, seed=seed, compile=compile, files=files, optim=Optim(lr=lr, schedule=schedule),
              model=Model(d_model=8 * heads, n_heads=heads))
    assert from_dict(Run, json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize(
    "tp,value,expected",
    [
        (int, "32_000", 32000),
        (int, "3.2e4", 32000),
        (int, 3.0, 3),
        (float, "1e-3", 1e-3),
        (float, 2, 2.0),
        (bool, "yes", True),
        (bool, "off", False),
        (Path, "a/b", Path("a/b")),
        (int | None, None, None),
        (list[int], ["1", 2], [1, 2]),
        (tuple[int, ...], [1, "2", 3], (1, 2, 3)),
        (Literal[1, 2, 3], "3", 3),
        (dict[str, int], {"a": "1"}, {"a": 1}),
    ],
)
def test_coerce_accepts(tp, value, expected):
    result = coerce(tp, value, "k")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "tp,value,message",
    [
        (int, "3.5", "k must be an int, got '3.5'"),
        (int, True, "k must be an int"),  # bool is an int to Python, never to a config
        (float, False, "k must be a float"),
        (bool, 1, "k must be a bool"),
        (str, 5, "k must be a str, got 5"),
        (list[str], "a,b", "k must be a list"),  # strings are split only when they come from the command line
        (tuple[int, int], [1], "must have 2 items"),
        (Literal["cosine", "linear"], "cosin", "did you mean 'cosine'"),
        (int | None, "x", "(or none)"),
        (complex, 1, "unsupported annotation"),
    ],
)
def test_coerce_rejects_with_key_and_value(tp, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        coerce(tp, value, "k")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"nmae": "x"}, "unknown key 'nmae' in Run (did you mean 'name'?); valid keys: name, out, seed"),
        ({"model": {"d_modle": 3}}, "unknown key 'd_modle' in [model] (Model) (did you mean 'd_model'?)"),
        ({"d_model": 3}, "(did you mean 'model.d_model'?)"),  # the key exists, one section down
        ({"model": {"d_model": 100, "n_heads": 3}}, "[model] (Model): n_heads=3 must divide d_model=100"),
        ({"optim": {"lr": -1}}, "[optim] lr must be > 0"),
        ({"model": 5}, "[model] (Model) must be a table"),
        ({"optim": {"betas": [1, 2, 3]}}, "optim.betas must have 2 items"),
    ],
)
def test_from_dict_errors_name_the_key_and_section(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(Run, data)


def test_missing_required_field():
    with pytest.raises(ConfigError, match="missing required setting 'path'"):
        from_dict(Needs, {})
    assert from_dict(Needs, {"path": "x"}).path == Path("x")


# --- files and presets -----------------------------------------------------------------------------


@pytest.fixture
def configs(tmp_path, monkeypatch):
    base = tmp_path / "configs"
    (base / "train").mkdir(parents=True)
    (base / "train" / "small.toml").write_text('name = "small"\n[model]\nd_model = 32\n')
    (base / "big.json").write_text('{"name": "big"}')
    monkeypatch.setattr(config, "configs_dir", lambda: base)
    return base


def test_presets_resolve_by_path_short_name_and_subpath(configs):
    assert resolve_preset(configs / "big.json") == configs / "big.json"
    assert resolve_preset("small") == resolve_preset("train/small") == configs / "train" / "small.toml"
    assert build_config(Run, "big").name == "big"


def test_preset_errors(configs, tmp_path):
    with pytest.raises(ConfigError, match=r"no preset 'tiny'.*available: big, train/small"):
        resolve_preset("tiny")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config_file(tmp_path / "bad.toml")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="top level must be a table"):
        load_config_file(tmp_path / "list.json")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_config_file(tmp_path / "x.yaml")
    (tmp_path / "typo.toml").write_text("[model]\nd_modle = 3\n")
    with pytest.raises(ConfigError, match=r"preset .*typo.toml: unknown key 'd_modle' in \[model\]"):
        build_config(Run, tmp_path / "typo.toml")


def test_a_short_name_in_two_folders_is_ambiguous_but_a_top_level_file_wins(configs):
    (configs / "other").mkdir()
    (configs / "other" / "small.toml").write_text("")
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_preset("small")
    (configs / "small.toml").write_text("")
    assert resolve_preset("small") == configs / "small.toml"


def test_save_config_writes_json_atomically(tmp_path):
    cfg = Run(out=Path("o"))
    save_config(cfg, tmp_path / "c.json")
    assert load_config_file(tmp_path / "c.json") == to_dict(cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary left behind


# --- precedence and overrides ----------------------------------------------------------------------


def test_precedence_defaults_preset_explicit_overrides(configs):
    cfg = build_config(Run, "small", ["optim.lr=0.5", "model.n_heads=8"],
                       **{"name": "flag", "model.d_model": 64, "optim.lr": 0.1, "seed": None, "optim.warmup": 7})
    assert cfg.name == "flag"  # explicit flag beats the preset
    assert cfg.model.d_model == 64 and cfg.model.n_heads == 8  # preset < flag; override on top
    assert cfg.optim.lr == 0.5 and cfg.optim.warmup == 7  # override beats flag; flag beats default
    assert cfg.seed is None and cfg.steps == [10, 20]  # None means "not given": the default stays
    assert build_config(Run, "small").model.d_model == 32  # preset beats the stage default 128


@pytest.mark.parametrize(
    "override,expected",
    [
        ("files=a.txt, b.txt", {"files": ["a.txt", "b.txt"]}),
        ('files=["x,y"]', {"files": ["x,y"]}),  # JSON when a value contains a comma
        ("files=", {"files": []}),
        ("steps=1,2,3", {"steps": [1, 2, 3]}),
        ("seed=none", {"seed": None}),
        ("--optim.betas=0.8,0.99", {"optim": {"betas": (0.8, 0.99)}}),
        ("optim.schedule=linear", {"optim": {"schedule": "linear"}}),
        ("model.d-model=256", {"model": {"d_model": 256}}),  # kebab-case keys, as the flags spell them
        ("compile=true", {"compile": True}),
    ],
)
def test_override_values_are_parsed_per_field_type(override, expected):
    assert config.parse_overrides(Run, [override]) == expected


def test_whole_section_override_merges_with_defaults():
    cfg = apply_overrides(Run, ['model={"n_heads": 8}'])
    assert (cfg.model.d_model, cfg.model.n_heads) == (128, 8)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.d_model=big", "override 'model.d_model=big': model.d_model must be an int, got 'big'"),
        ("optim.lr", "must look like key=value or section.key=value"),
        ("optim.lrr=1", "unknown key 'lrr' in [optim] (Optim) (did you mean 'lr'?)"),
        ("name.x=1", "'name' is a setting, not a section"),
        ("optim.schedule=cosin", "did you mean 'cosine'"),
        ("files=[1", "cannot parse '[1' as JSON"),
        ("model.n_heads=3", "n_heads=3 must divide d_model=128"),
    ],
)
def test_override_errors_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(Run, [override])


def test_apply_overrides_on_an_instance_keeps_its_values():
    base = apply_overrides(Run, ["name=a", "model.d_model=32"])
    cfg = apply_overrides(base, ["model.n_heads=2"])
    assert (cfg.name, cfg.model.d_model, cfg.model.n_heads) == ("a", 32, 2)
    assert base.model.n_heads == 4  # not mutated


# --- argparse flags --------------------------------------------------------------------------------


def parser_for(cls=Run) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_preset_args(parser)
    add_dataclass_args(parser, cls)
    return parser


def test_flags_are_generated_from_fields():
    flags = {s for a in parser_for()._actions for s in a.option_strings}
    assert {"--name", "--out", "--seed", "--compile", "--no-compile", "--files", "--steps", "--special-token",
            "--model.d-model", "--model.n-heads", "--optim.lr", "--optim.betas", "--optim.schedule"} <= flags
    assert "--model.d-head" not in flags  # derived fields are not settable


def test_help_shows_metadata_and_the_stage_default():
    text = " ".join(parser_for().format_help().split())
    assert "input files (default: [])" in text
    assert "--model.d-model INT (default: 128)" in text  # the stage's default, not Model's 64
    assert "peak learning rate (default: 0.0003)" in text
    assert "{cosine,linear}" in text
    assert "required unless a preset sets it" in " ".join(parser_for(Needs).format_help().split())


def test_flags_not_given_are_absent_and_given_ones_are_typed():
    assert collect_dataclass_args(parser_for().parse_args([]), Run) == {}
    ns = parser_for().parse_args(["--steps", "1", "2", "--no-compile", "--special-token", "a", "--special-token", "b",
                                  "--optim.betas", "0.5", "0.6", "--model.d-model", "32", "--out", "o"])
    assert collect_dataclass_args(ns, Run) == {
        "steps": [1, 2], "compile": False, "special": ["a", "b"], "optim.betas": [0.5, 0.6], "model.d_model": 32,
        "out": Path("o"),
    }


def test_bad_flag_value_is_a_usage_error_naming_the_field(capsys):
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--model.d-model", "x"])
    assert "model.d_model must be an int, got 'x'" in capsys.readouterr().err


def test_config_from_args_applies_the_whole_order(configs):
    ns = parser_for().parse_args(["--config", "small", "--model.n-heads", "2", "--set", "model.n_heads=8"])
    cfg = config_from_args(ns, Run)
    assert (cfg.name, cfg.model.d_model, cfg.model.n_heads) == ("small", 32, 8)


def test_prefix_adds_a_section_on_its_own():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Optim, prefix="optim.")
    ns = parser.parse_args(["--optim.warmup", "5"])
    assert build_config(Run, **collect_dataclass_args(ns, Optim, prefix="optim.")).optim.warmup == 5


# --- run records -----------------------------------------------------------------------------------


def test_write_run_info(tmp_path):
    cfg = apply_overrides(Run, ["out=o"])
    write_run_info(tmp_path / "run", cfg, argv=["scratchlm", "train", "--name", "a b"])
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == to_dict(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["command"] == "scratchlm train --name 'a b'" and info["argv"][-1] == "a b"
    assert info["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", info["git_sha"])
    assert info["versions"]["numpy"] and info["versions"]["torch"] and info["versions"]["python"]
    assert info["cpu_count"] >= 1 and info["hostname"] and info["platform"] and info["time_utc"].endswith("+00:00")
    assert "cuda_device" in info
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "run_info.json"]
