"""Command-line options derived from SweepConfig's fields: each option is declared once, on its field.

A SweepConfig field with option metadata (`jaxreg.config._option`: help, choices, metavar)
becomes the flag --field-name, typed by the field's annotation (int, float, str; bool is a
switch), with the help ending in the field's default. The parser's default is None ("not
given"), so that a flag left out keeps the value of the preset it overrides;
`config_changes` turns the given ones into `SweepConfig.replace` arguments. Used by
experiments/sweep.py; nothing in jaxreg imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator

from jaxreg.config import OPTION, SweepConfig

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}  # annotations, written out or as `T | None`


def option_fields() -> Iterator[dataclasses.Field]:
    """SweepConfig's fields that are command-line options, in declaration order."""
    return (f for f in dataclasses.fields(SweepConfig) if OPTION in f.metadata)


def flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def value_type(field: dataclasses.Field) -> type:
    """int, float, str or bool from the field's annotation (a string under `from __future__ import annotations`)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    name = annotation.removesuffix(" | None")
    if name not in _TYPES:
        raise TypeError(
            f"SweepConfig.{field.name}: an option must be an int, float, str or bool field, not {annotation}"
        )
    return _TYPES[name]


def add_config_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per option field of SweepConfig; every default None (not given: the preset's value stays)."""
    for field in option_fields():
        settings = dict(field.metadata[OPTION])
        settings["help"] = (settings["help"] + _default_note(field)).replace("%", "%%")  # argparse %-formats help
        kind = value_type(field)
        if kind is bool:
            parser.add_argument(flag(field), action="store_true", default=None, **settings)
        else:
            parser.add_argument(flag(field), type=kind, default=None, **settings)


def _default_note(field: dataclasses.Field) -> str:
    """' (default X)' for a field with a value as its default; a None or False default is explained by the help."""
    default = field.default
    if default is None or default is False or default is dataclasses.MISSING:
        return ""
    return f" (default {default:g})" if isinstance(default, float) else f" (default {default})"


def config_changes(args: argparse.Namespace) -> dict:
    """The option fields given on the command line, as SweepConfig.replace arguments.

    The data: --synthetic wins (data None); else --data, or env JAXREG_DATA, as an absolute
    path (but the word tfds), and neither leaves the preset's data alone.
    """
    changes = {f.name: getattr(args, f.name) for f in option_fields() if getattr(args, f.name) is not None}
    changes.pop("data", None)
    if changes.get("synthetic"):
        changes["data"] = None
    else:
        data = args.data or os.environ.get("JAXREG_DATA")
        if data:
            changes["data"] = data if data == "tfds" else os.path.abspath(os.path.expanduser(data))
    return changes
