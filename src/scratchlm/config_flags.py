"""argparse flags generated from config dataclasses, so every default lives in exactly one place.

gpt-fast repeats its defaults between function signatures and argparse, and the two drift. Here a flag
defaults to "not given" (argparse.SUPPRESS): --help shows the dataclass default, and only flags the user
typed reach build_config, where they sit between the preset and the `--set key=value` overrides.

Field metadata understood: "help" (text), "flag" (rename, e.g. "--special-token"), "action": "append"
(repeat a flag to build a list instead of `nargs="+"`), "metavar".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from scratchlm.config_schema import (
    ConfigError,
    coerce,
    dataclass_type,
    field_default,
    field_types,
    parse_text,
    to_dict,
)

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def add_dataclass_args(parser: Parser, cls: type, prefix: str = "", defaults: Any | None = None) -> None:
    """Add one `--kebab-case` flag per field of `cls`; a nested dataclass field `model` adds `--model.x` flags.

    `prefix` is a dotted key prefix ("model.") for flags of a section added on their own; `defaults` is
    an instance whose values --help shows (a stage's own default for a nested section, say vocab 8192).
    """
    group = _group(parser, cls, prefix)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, dest = field_types(cls)[f.name], prefix + f.name
        default = getattr(defaults, f.name) if defaults is not None else field_default(f)
        section = dataclass_type(tp)
        if section is not None:
            add_dataclass_args(parser, section, dest + ".", default if dataclasses.is_dataclass(default) else None)
            continue
        kwargs = _flag_kwargs(f, tp, dest)
        group.add_argument(_flag_name(f, prefix), dest=dest, default=argparse.SUPPRESS, help=_help(f, default), **kwargs)


def collect_dataclass_args(ns: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The flags of `cls` the user gave, as {dotted key: value} for `build_config(cls, ..., **given)`."""
    given: dict[str, Any] = {}
    for name, tp in field_types(cls).items():
        dest = prefix + name
        section = dataclass_type(tp)
        if section is not None:
            given.update(collect_dataclass_args(ns, section, dest + "."))
        elif hasattr(ns, dest):
            given[dest] = getattr(ns, dest)
    return given


def add_preset_args(parser: argparse.ArgumentParser) -> None:
    """`--config PRESET` and repeatable `--set KEY=VALUE` (main() also routes a bare `--a.b=v` into --set)."""
    parser.add_argument("--config", dest="preset", metavar="PRESET", default=None,
                        help="TOML/JSON preset: a path, or a name under configs/ (e.g. tokenizer/tinystories-10k)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, applied last; repeatable (e.g. --set model.d_model=512, "
                             "or the short form --model.d_model=512)")



class _Convert:
    """argparse `type=`: parse a flag's text against a field annotation, with the config's own message."""

    def __init__(self, tp: Any, key: str) -> None:
        self.tp, self.key = tp, key
        self.__name__ = _type_name(tp)  # argparse names the type in its fallback error message

    def __call__(self, text: str) -> Any:
        try:
            return coerce(self.tp, parse_text(self.tp, text, self.key), self.key)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


def _flag_kwargs(f: dataclasses.Field, tp: Any, dest: str) -> dict[str, Any]:
    # `X | None` takes an X on the command line: clearing a setting is `--set key=none`, because a None
    # flag value means "not given" to build_config.
    base = _strip_optional(tp)
    origin, args = get_origin(base) or base, get_args(base)
    metavar = f.metadata.get("metavar")
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple):
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        item = args[0] if args and (not fixed or len(set(args)) == 1) else Any
        kwargs: dict[str, Any] = {"type": _Convert(item, dest), "metavar": metavar or _type_name(item)}
        if f.metadata.get("action") == "append":
            return {**kwargs, "action": "append"}
        return {**kwargs, "nargs": len(args) if fixed else "+"}
    if origin is Literal:
        return {"type": _Convert(base, dest), "choices": list(args), "metavar": metavar}
    return {"type": _Convert(base, dest), "metavar": metavar or _type_name(base)}


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _type_name(tp: Any) -> str:
    names = {int: "INT", float: "FLOAT", str: "STR", Path: "PATH", bool: "BOOL"}
    return names.get(tp, "VALUE")


def _flag_name(f: dataclasses.Field, prefix: str) -> str:
    custom = f.metadata.get("flag")
    if custom:
        return "--" + (prefix + custom.lstrip("-")).replace("_", "-") if prefix else custom
    return "--" + (prefix + f.name).replace("_", "-")


def _help(f: dataclasses.Field, default: Any) -> str:
    if default is dataclasses.MISSING:
        shown = "required unless a preset sets it"
    else:
        value = to_dict(default)
        shown = "default: " + (value if isinstance(value, str) and value else json.dumps(value))
    text = f.metadata.get("help", "")
    # argparse %-formats help strings; a default such as a regex may contain "%".
    return (f"{text} ({shown})" if text else f"({shown})").replace("%", "%%")


def _group(parser: Parser, cls: type, prefix: str) -> Parser:
    """An argument group per config section, so --help reads as one block per component."""
    if not isinstance(parser, argparse.ArgumentParser):
        return parser  # already a group; argparse does not nest groups
    doc = (cls.__doc__ or "").strip()
    generated = doc.startswith(cls.__name__ + "(")  # dataclass's auto docstring is a signature, not prose
    title = f"{prefix.rstrip('.')} settings ({cls.__name__})" if prefix else f"settings ({cls.__name__})"
    return parser.add_argument_group(title, None if generated or not doc else doc.splitlines()[0])
