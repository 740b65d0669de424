"""Flags generated from the config dataclasses: a flag, its MLproject parameter and its config field share one name
(``--batch_size``, also spelt ``--batch-size``), every flag's help states its default, and a bad value is one line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

from digits.core.config import ConfigError, parse_bool


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_flag(text: str) -> int:
    try:
        value = float(text)
        if value != int(value):
            raise ValueError
        return int(value)  # accept "10" and "10.0" (MLflow may pass either), not "10.5"
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def float_flag(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bool_flag(text: str) -> bool:
    try:
        return parse_bool(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (name, type, default and help from the field)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default if f.default is not MISSING else None
        shown = "empty" if default == "" else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        parser.add_argument(
            *names,
            dest=f.name,
            type=_PARSERS[f.type],
            default=default,
            help=help_text,
            metavar=str(f.type).upper() if isinstance(f.type, str) else f.type.__name__.upper(),
        )


def config_from_args(cls: type, args: argparse.Namespace):
    """Build and validate the dataclass ``cls`` from parsed flags (a field without a flag keeps its default)."""
    config = cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
    config.validate()
    return config


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.08", "width=24"]`` -> ``{"lr": 0.08, "width": 24}``, typed by the fields of dataclass ``cls``.

    For scripts that take ``--set FIELD=VALUE``; a bad item raises ``ConfigError`` with one line.
    """
    types = {f.name: f.type for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"expected FIELD=VALUE with FIELD one of {', '.join(types)}, got {item!r}")
        try:
            out[key] = _PARSERS[types[key]](text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return out


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int_flag,
    float: float_flag,
    bool: bool_flag,
    str: str,
    "int": int_flag,
    "float": float_flag,
    "bool": bool_flag,
    "str": str,
}
