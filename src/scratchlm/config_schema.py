"""Typed configs, the schema half: dataclass annotations decide what a value may be.

`from_dict` builds a config dataclass from plain data (a preset, parsed flags) strictly, `coerce` checks
one value against an annotation, `to_dict` goes back to JSON. Import these from scratchlm.config.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A config key, value or file that cannot be used; the message says what to change."""


# ---------------------------------------------------------------------------------------------------
# Introspection


@cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation}; get_type_hints resolves `from __future__ import annotations`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def dataclass_type(tp: Any) -> type | None:
    """The dataclass inside `tp` (`ModelConfig` or `ModelConfig | None`), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return dataclass_type(inner[0])
    return None


def field_default(f: dataclasses.Field) -> Any:
    """The value a field takes when not given, or dataclasses.MISSING for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section(path: str, cls: type) -> str:
    return f"[{path}] ({cls.__name__})" if path else cls.__name__


def unknown_key_error(key: str, cls: type, path: str) -> ConfigError:
    """Name the key, the section and the valid keys, and guess the intended one (also in subsections)."""
    valid = list(field_types(cls))
    close = _nested_keys(cls, key) or difflib.get_close_matches(key, valid, n=1)  # exact one level down first
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {_section(path, cls)}{hint}; valid keys: {', '.join(valid)}")


def _nested_keys(cls: type, key: str, prefix: str = "") -> list[str]:
    """Dotted paths of fields named `key` in nested sections: `vocab_size` -> ["tokenizer.vocab_size"]."""
    found = []
    for name, tp in field_types(cls).items():
        section = dataclass_type(tp)
        if section is not None:
            found += [f"{prefix}{name}.{key}"] if key in field_types(section) else []
            found += _nested_keys(section, key, f"{prefix}{name}.")
    return found


# ---------------------------------------------------------------------------------------------------
# dict <-> dataclass


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from a plain dict, strictly.

    Unknown keys are errors (a typo in a preset must not silently train with the default); values are
    checked and coerced against the annotations; a partial nested section keeps the defaults of the
    fields it does not mention. Keys of derived fields (`field(init=False)`, which to_dict records) are
    skipped, so a config.json reads back into the same config.
    """
    return _from_dict(cls, data, "")


def _from_dict(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{_section(path, cls)} must be a table of settings, got {data!r}")
    types_ = field_types(cls)
    derived = {f.name for f in dataclasses.fields(cls) if not f.init}
    for key in data:
        if key not in types_ and key not in derived:
            raise unknown_key_error(key, cls, path)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_section(path, cls)}: missing required setting {f.name!r}")
            continue
        value = data[f.name]
        if isinstance(value, dict) and dataclass_type(types_[f.name]) is not None:
            # A partial section overrides the *field's* default (say BPETrainConfig(vocab_size=8192)), not
            # the nested class's own defaults.
            default = field_default(f)
            value = deep_merge(raw_dict(default), value) if dataclasses.is_dataclass(default) else value
        kwargs[f.name] = coerce(types_[f.name], value, f"{path}.{f.name}" if path else f.name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"[{path}] {e}" if path else str(e)) from None
    except ValueError as e:  # a __post_init__ that raised plain ValueError still gets the section named
        raise ConfigError(f"{_section(path, cls)}: {e}") from None


def raw_dict(cfg: Any) -> dict[str, Any]:
    """Field values of a dataclass as a dict (nested dataclasses as dicts), values otherwise untouched."""
    return {
        f.name: raw_dict(v) if dataclasses.is_dataclass(v := getattr(cfg, f.name)) else v
        for f in dataclasses.fields(cfg)
        if f.init
    }


def to_dict(cfg: Any) -> Any:
    """A JSON-ready copy of a config (dataclasses, dicts, lists; Paths become str, tuples lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if cfg is None or isinstance(cfg, (bool, int, float, str)):
        return cfg
    return str(cfg)  # Path, torch.dtype, ...: the string form is what a reader of config.json wants


def deep_merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `new`, recursing into sections present in both. Inputs are not modified."""
    out = dict(base)
    for k, v in new.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------------
# Values


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` checked against annotation `tp`, converting strings from the command line.

    Idempotent: an already-typed value passes through, so overrides can be coerced early (for an
    error that names the override) and again by from_dict.
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, key)
    if origin is Literal:
        return _coerce_literal(args, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(tp, value, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        value_tp = args[1] if args else Any
        return {k: coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(tp, value, key)


def _coerce_union(args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(arg, value, key)
        except ConfigError as e:
            errors.append(str(e))
    optional = " (or none)" if type(None) in args else ""
    raise ConfigError("; ".join(errors) + optional)


def _coerce_literal(args: tuple, value: Any, key: str) -> Any:
    for choice in args:
        # "3" from the command line matches the choice 3; True never matches 1.
        if (value == choice and type(value) is type(choice)) or (isinstance(value, str) and value == str(choice)):
            return choice
    close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}{hint}")


def _coerce_sequence(tp: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(tp) or tp, get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}: {value!r}")
        return tuple(coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    items = [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp not in (bool, int, float, str, Path):
        raise ConfigError(f"{key}: unsupported annotation {tp!r} (supported: int, float, bool, str, Path, "
                          "X | None, list[...], tuple[...], dict[str, ...], Literal[...], dataclasses)")
    text = value.strip() if isinstance(value, str) else None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE_WORDS + _FALSE_WORDS:
            return text.lower() in _TRUE_WORDS
    elif tp in (int, float) and not isinstance(value, bool):  # True is an int to Python, never to a config
        number = _number(text) if text is not None else value
        if tp is float and isinstance(number, (int, float)):
            return float(number)
        if tp is int and (isinstance(number, int) or (isinstance(number, float) and number.is_integer())):
            return int(number)  # "32_000" and "3.2e4" are ints; "3.5" is not
    elif tp is str and isinstance(value, str):
        return value
    elif tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    raise ConfigError(f"{key} must be {'an' if tp.__name__[0] in 'aeiou' else 'a'} {tp.__name__}, got {value!r}")


def _number(text: str) -> int | float | None:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return None


def parse_text(tp: Any, text: str, key: str) -> Any:
    """A command-line string shaped for annotation `tp`: `none` for optionals, lists as `a,b` or JSON."""
    stripped = text.strip()
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in get_args(tp) and stripped.lower() in _NONE_WORDS:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return parse_text(inner[0], text, key) if len(inner) == 1 else text
    if origin in (list, tuple, dict) or tp in (list, tuple, dict) or dataclasses.is_dataclass(tp):
        if stripped.startswith(("[", "{")):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}: cannot parse {text!r} as JSON: {e}") from None
        if origin in (list, tuple) or tp in (list, tuple):
            return [t.strip() for t in stripped.split(",")] if stripped else []
    return text
