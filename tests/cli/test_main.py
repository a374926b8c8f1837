"""The `scratchlm` entry point: stage discovery, exit codes, overrides, the data stage, the flags snapshot."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import scratchlm
import scratchlm.cli
from scratchlm.cli.main import STAGES, build_parser, load_stage, main
from scratchlm.config import ConfigError, add_dataclass_args, add_preset_args, config_from_args
from scratchlm.data import sources
from scratchlm.data.sources import DownloadError

SNAPSHOT = Path(__file__).with_name("flags_snapshot.json")


# --- the flags snapshot ----------------------------------------------------------------------------


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) below `parser`, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def current_flags() -> dict[str, list[str]]:
    return {" ".join(path): sorted(s for a in p._actions for s in a.option_strings) for path, p in walk(build_parser())}


def test_every_subcommand_renders_help_listing_its_flags(capsys):
    for path, parser in walk(build_parser()):
        assert main([*path, "--help"]) == 0, path
        text = capsys.readouterr().out
        assert text.startswith("usage: scratchlm"), path
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, (path, flag)


def test_flags_match_the_snapshot():
    """A new or renamed flag is a deliberate change: SCRATCHLM_UPDATE_SNAPSHOT=1 pytest tests/cli"""
    flags = current_flags()
    if os.environ.get("SCRATCHLM_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(dict(sorted(flags.items())), indent=1) + "\n")
    snapshot = json.loads(SNAPSHOT.read_text())
    changed = {k for k in flags.keys() | snapshot.keys() if flags.get(k) != snapshot.get(k)}
    assert not changed, (f"CLI flags changed for {sorted(changed)}; if intended, regenerate with "
                         "SCRATCHLM_UPDATE_SNAPSHOT=1 pytest tests/cli")


# --- entry point behaviour -------------------------------------------------------------------------


@pytest.fixture
def stage(monkeypatch):
    """Install a throwaway stage `fake` whose register() is the given function."""

    def install(register) -> None:
        module = types.ModuleType("scratchlm.cli.fake")
        module.register = register
        monkeypatch.setitem(sys.modules, "scratchlm.cli.fake", module)
        monkeypatch.setitem(STAGES, "fake", "a stage for tests")

    return install


def raising(exc: BaseException):
    def func(args: argparse.Namespace) -> int:
        raise exc

    return lambda parser: parser.set_defaults(func=func)


def test_version_and_usage_errors(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scratchlm {scratchlm.__version__}"
    assert main([]) == 2
    assert main(["no-such-stage"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "exc", [ConfigError("bad key 'x'"), FileNotFoundError("nope.txt is missing"), ValueError("v"), DownloadError("offline")]
)
def test_user_errors_are_one_line_and_exit_2(exc, stage, capsys, monkeypatch):
    monkeypatch.delenv("SCRATCHLM_DEBUG", raising=False)
    stage(raising(exc))
    assert main(["fake"]) == 2
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_debug_shows_the_traceback_and_bugs_are_not_hidden(stage, monkeypatch):
    stage(raising(ConfigError("bad")))
    monkeypatch.setenv("SCRATCHLM_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["fake"])
    monkeypatch.delenv("SCRATCHLM_DEBUG")
    stage(raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        main(["fake"])


def test_ctrl_c_exits_130_and_exit_codes_pass_through(stage):
    stage(raising(KeyboardInterrupt()))
    assert main(["fake"]) == 130
    stage(lambda p: p.set_defaults(func=lambda args: 3))
    assert main(["fake"]) == 3
    stage(lambda p: p.set_defaults(func=lambda args: None))
    assert main(["fake"]) == 0


@dataclass(kw_only=True)
class Inner:
    size: int = 4


@dataclass(kw_only=True)
class Cfg:
    name: str = "a"
    inner: Inner = field(default_factory=Inner)


def test_short_form_overrides_reach_stages_that_take_them(stage, capsys):
    seen = []

    def register(parser):
        add_preset_args(parser)
        add_dataclass_args(parser, Cfg)
        parser.set_defaults(func=lambda args: seen.append(config_from_args(args, Cfg)))

    stage(register)
    assert main(["fake", "--inner.size=3", "--name", "b", "--set", "name=c"]) == 0
    assert seen == [Cfg(name="c", inner=Inner(size=3))]
    assert main(["fake", "--inner.sise=3"]) == 2
    assert "unknown key 'sise' in [inner] (Inner) (did you mean 'size'?)" in capsys.readouterr().err

    stage(lambda p: p.set_defaults(func=lambda args: 0))  # no --set: a stray --a.b=v is a usage error
    assert main(["fake", "--inner.size=3"]) == 2
    assert "unrecognized arguments: --inner.size=3" in capsys.readouterr().err


def test_missing_stage_modules_are_skipped_but_broken_ones_raise(tmp_path, monkeypatch):
    (tmp_path / "broken_stage.py").write_text("import scratchlm_no_such_dependency\n")
    monkeypatch.setattr(scratchlm.cli, "__path__", [*scratchlm.cli.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "scratchlm.cli.broken_stage", raising=False)
    assert load_stage("not_written_yet") is None
    with pytest.raises(ModuleNotFoundError, match="scratchlm_no_such_dependency"):
        load_stage("broken_stage")


def test_importing_the_cli_has_no_side_effects():
    code = ("import logging, sys, scratchlm.cli.main, scratchlm.config, scratchlm.data.sources;"
            "assert not logging.getLogger().handlers, 'logging configured at import';"
            "assert 'torch' not in sys.modules, 'torch imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "scratchlm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"scratchlm {scratchlm.__version__}"


# --- the data stage --------------------------------------------------------------------------------


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLM_DATA", str(tmp_path))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_data_where_and_list(data_env, capsys):
    assert main(["data", "where"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(data_env) and "$SCRATCHLM_DATA" in out and str(data_env / "cache") in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in sources.REGISTRY) and "roneneldan/TinyStories" in out


def test_data_download_from_a_file_endpoint(data_env, monkeypatch, capsys):
    d = sources.REGISTRY["tinystories-valid"]
    src = data_env / "hub" / "datasets" / d.repo / "resolve" / "main" / d.filename
    src.parent.mkdir(parents=True)
    src.write_text("Once upon a time.\n")
    monkeypatch.setenv("HF_ENDPOINT", (data_env / "hub").as_uri())
    assert main(["data", "download", "tinystories-valid", "--dest", str(data_env / "d"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(data_env / "d" / d.filename)
    assert (data_env / "d" / d.filename).read_text() == "Once upon a time.\n"

    assert main(["data", "download", "tinystories-valid", "tinystories-vlaid"]) == 2  # checked before any download
    assert "did you mean 'tinystories-valid'" in capsys.readouterr().err
    assert not (data_env / "cache").exists()
    monkeypatch.setenv("HF_ENDPOINT", (data_env / "nowhere").as_uri())
    assert main(["data", "download", "owt-sample-valid", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot download")
