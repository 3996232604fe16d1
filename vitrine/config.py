"""One frozen dataclass per service; environment variables and CLI flags are derived from its fields.

Each field may carry ``metadata={"help": "..."}``. ``add_arguments`` turns fields into ``--flag-name``
options whose defaults come from ``<PREFIX>_FIELD_NAME`` environment variables (read when called, never
at import), so flags, environment and defaults cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _field_type(cls: type, field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(cls)
    tp = hints[field.name]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def _parse(tp: Any, raw: str) -> Any:
    if tp is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typing.get_origin(tp) is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_parse(item, part) for part in raw.split(",") if part.strip())
    return tp(raw)


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}_{field_name}".upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one ``--flag`` per dataclass field; defaults read from ``PREFIX_FIELD`` in the environment."""
    defaults = cls()
    for field in dataclasses.fields(cls):
        tp = _field_type(cls, field)
        env = env_name(prefix, field.name)
        default = getattr(defaults, field.name)
        if env in os.environ:
            default = _parse(tp, os.environ[env])
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata.get('help', '')} (env {env}; default: %(default)s)"
        if tp is bool:
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_text)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            parser.add_argument(
                flag,
                default=default,
                type=tp,
                choices=list(tp),
                help=help_text,
                metavar="{" + ",".join(m.value for m in tp) + "}",
            )
        else:
            parser.add_argument(flag, default=default, type=functools.partial(_parse, tp), help=help_text)


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build a config from environment variables alone (fields not set keep their defaults)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = env_name(prefix, field.name)
        if env in environ:
            values[field.name] = _parse(_field_type(cls, field), environ[env])
    return cls(**values)
