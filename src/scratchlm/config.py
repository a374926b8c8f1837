"""Typed configs for the whole project: dataclasses, TOML/JSON presets, `section.key=value` overrides.

Every component defines `@dataclass(kw_only=True) class XConfig` next to its code and validates itself
in `__post_init__` (raising ConfigError). A stage composes them into one run config and resolves it with

    dataclass defaults  <  preset file (configs/*.toml)  <  explicit CLI flags  <  --section.key=value

`build_config` applies that order; `write_run_info` records the result beside the run's outputs.
Defaults live only in the dataclass: CLI flags default to "not given" (see `scratchlm.config_flags`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from scratchlm.atomic import write_text_atomic
from scratchlm.config_flags import (
    add_dataclass_args,
    add_preset_args,
    collect_dataclass_args,
)
from scratchlm.config_schema import (
    ConfigError,
    coerce,
    dataclass_type,
    deep_merge,
    field_default,
    field_types,
    from_dict,
    parse_text,
    raw_dict,
    to_dict,
    unknown_key_error,
)
from scratchlm.paths import repo_root
from scratchlm.run_info import run_info

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")
# Re-exported: components and stages import everything config-related from this one module.
__all__ = [
    "ConfigError", "from_dict", "to_dict", "raw_dict", "coerce", "parse_text", "field_types", "field_default",
    "dataclass_type", "deep_merge", "configs_dir", "resolve_preset", "load_config_file", "save_config",
    "parse_overrides", "apply_overrides", "check_keys", "nest", "build_config", "write_run_info",
    # the argparse side, from scratchlm.config_flags
    "add_dataclass_args", "collect_dataclass_args", "add_preset_args", "config_from_args"
]


# ---------------------------------------------------------------------------------------------------
# Files


def configs_dir() -> Path:
    """configs/ of the checkout (or of the current directory when installed from a wheel)."""
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "configs"


def resolve_preset(preset: str | Path) -> Path:
    """A preset file: an existing path, or a short name such as `tinystories` or `tokenizer/tinystories`."""
    path = Path(preset)
    if path.is_file():
        return path
    base = configs_dir()
    candidates = [base / path, base / f"{path}.toml", base / f"{path}.json"]
    found = [c for c in candidates if c.is_file()]
    if not found and len(path.parts) == 1:
        found = sorted(base.rglob(f"{path.name}.toml")) + sorted(base.rglob(f"{path.name}.json"))
    if len(found) == 1 or (found and found[0] in candidates):
        return found[0]
    available = sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*") if p.suffix in (".toml", ".json"))
    if found:
        raise ConfigError(f"preset {str(preset)!r} is ambiguous: {', '.join(map(str, found))}; give the path")
    raise ConfigError(f"no preset {str(preset)!r}: not a file, and not found under {base} "
                      f"(available: {', '.join(available) or 'none'})")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The table in a .toml or .json file (no type checking: from_dict does that against a class)."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: config files must end in .toml or .json")
    text = path.read_text(encoding="utf-8")  # FileNotFoundError names the path
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings, got {type(data).__name__}")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as JSON, atomically (a crash never leaves a half-written config.json)."""
    write_text_atomic(path, json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------
# Overrides and resolution


def parse_overrides(cls: type, overrides: list[str]) -> dict[str, Any]:
    """`["model.d_model=512", "lr=3e-4"]` -> nested dict of typed values, checked against `cls`."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value or section.key=value")
        parts = [p.replace("-", "_") for p in key.split(".")]
        tp = _key_type(cls, parts)
        dotted = ".".join(parts)
        try:
            value = parse_text(tp, text, dotted)
            if dataclass_type(tp) is None:  # whole sections stay dicts so they merge with the defaults
                value = coerce(tp, value, dotted)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _key_type(cls: type, parts: list[str]) -> Any:
    """The annotation at a dotted key, or a ConfigError naming the section and its valid keys."""
    tp: Any = cls
    for i, part in enumerate(parts):
        section = dataclass_type(tp)
        if section is None:
            raise ConfigError(f"{'.'.join(parts[:i])!r} is a setting, not a section; cannot set {'.'.join(parts)!r}")
        types_ = field_types(section)
        if part not in types_:
            raise unknown_key_error(part, section, ".".join(parts[:i]))
        tp = types_[part]
    return tp


def check_keys(cls: type, data: dict[str, Any], path: str = "") -> None:
    """Raise on the first key of `data` (recursively) that `cls` does not have."""
    types_ = field_types(cls)
    for key, value in data.items():
        if key not in types_:
            raise unknown_key_error(key, cls, path)
        inner = dataclass_type(types_[key])
        if inner is not None and isinstance(value, dict):
            check_keys(inner, value, f"{path}.{key}" if path else key)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"model.d_model": 64} -> {"model": {"d_model": 64}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply_overrides(cls_or_cfg: type[T] | T, overrides: list[str]) -> T:
    """A new config: `cls_or_cfg` (a class means its defaults) with `key=value` overrides applied."""
    if isinstance(cls_or_cfg, type):
        cls, base = cls_or_cfg, {}
    else:
        cls, base = type(cls_or_cfg), raw_dict(cls_or_cfg)
    return from_dict(cls, deep_merge(base, parse_overrides(cls, overrides)))


def build_config(cls: type[T], preset: str | Path | None = None, overrides: list[str] | None = None,
                 **explicit: Any) -> T:
    """Resolve a run config: defaults < preset < explicit flags (None = not given) < overrides.

    `explicit` keys may be dotted (`model.d_model`), as collect_dataclass_args returns them.
    """
    data: dict[str, Any] = {}
    if preset:
        path = resolve_preset(preset)
        data = load_config_file(path)
        try:
            check_keys(cls, data)
        except ConfigError as e:
            raise ConfigError(f"preset {path}: {e}") from None
    given = nest({k: v for k, v in explicit.items() if v is not None})
    check_keys(cls, given)
    data = deep_merge(deep_merge(data, given), parse_overrides(cls, list(overrides or [])))
    return from_dict(cls, data)


def write_run_info(run_dir: str | Path, cfg: Any, argv: list[str] | None = None) -> None:
    """Write `config.json` (the resolved config) and `run_info.json` (code, versions, host) in run_dir.

    Every run is a reproducibility record: what was asked for, and what it ran on.
    """
    run_dir = Path(run_dir)
    save_config(cfg, run_dir / "config.json")
    write_text_atomic(run_dir / "run_info.json", json.dumps(run_info(argv), indent=2) + "\n")


def config_from_args(ns: argparse.Namespace, cls: type[T]) -> T:
    """The resolved config of a stage whose parser used add_preset_args and add_dataclass_args(parser, cls)."""
    return build_config(cls, getattr(ns, "preset", None), getattr(ns, "overrides", None) or [],
                        **collect_dataclass_args(ns, cls))
