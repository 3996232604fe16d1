"""One frozen dataclass per service; environment variables and CLI flags are derived from its fields.

Each field may carry ``metadata={"help": "..."}``. ``add_arguments`` turns fields into ``--flag-name``
options whose defaults come from ``<PREFIX>_FIELD_NAME`` environment variables (read when called, never
at import), so flags, environment and defaults cannot drift apart. A field whose type is itself a config
dataclass (the gateway's pipeline settings) is composed, not repeated: its fields become flags of the
outer config under their own names. ``to_argv`` renders a config back into those flags, which is how a
launcher hands a typed config to a child process; fields marked ``metadata={"secret": True}`` (keys) are
left out of it and of ``--help``'s defaults, and travel in the environment instead (``secret_env``).
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


def _nested(cls: type, field: dataclasses.Field[Any]) -> type | None:
    tp = _field_type(cls, field)
    return tp if dataclasses.is_dataclass(tp) and isinstance(tp, type) else None


def _leaves(cls: type) -> list[tuple[type, dataclasses.Field[Any]]]:
    """(owning class, field) for every plain field, nested config dataclasses flattened in place."""
    out: list[tuple[type, dataclasses.Field[Any]]] = []
    for field in dataclasses.fields(cls):
        inner = _nested(cls, field)
        out.extend(_leaves(inner) if inner is not None else [(cls, field)])
    return out


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        inner = _nested(cls, field)
        if inner is not None:
            kwargs[field.name] = _build(inner, values)
        elif field.name in values:
            kwargs[field.name] = values[field.name]
    return cls(**kwargs)


def _format(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value)
    return str(value)


def to_argv(config: Any) -> list[str]:
    """Every field of ``config`` as the flags ``add_arguments`` declares, so a child process gets exactly
    this config whatever its environment says."""
    argv: list[str] = []

    def walk(obj: Any) -> None:
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if dataclasses.is_dataclass(value):
                walk(value)
                continue
            flag = "--" + field.name.replace("_", "-")
            if field.metadata.get("secret"):
                continue  # secrets travel in the environment (``secret_env``), never on a command line
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + field.name.replace("_", "-"))
            elif value is not None:
                argv.extend([flag, _format(value)])

    walk(config)
    return argv


def secret_env(config: Any, prefix: str) -> dict[str, str]:
    """The fields marked ``metadata={"secret": True}`` that are set, as ``PREFIX_FIELD`` variables:
    how a launcher hands a child its keys without putting them where ``ps`` shows them."""
    env: dict[str, str] = {}

    def walk(obj: Any) -> None:
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if dataclasses.is_dataclass(value):
                walk(value)
            elif field.metadata.get("secret") and value:
                env[env_name(prefix, field.name)] = _format(value)

    walk(config)
    return env


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}_{field_name}".upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one ``--flag`` per dataclass field; defaults read from ``PREFIX_FIELD`` in the environment."""
    for owner, field in _leaves(cls):
        tp = _field_type(owner, field)
        env = env_name(prefix, field.name)
        default = getattr(owner(), field.name)
        if env in os.environ:
            default = _parse(tp, os.environ[env])
        flag = "--" + field.name.replace("_", "-")
        shown = "set" if field.metadata.get("secret") and default else "%(default)s"
        help_text = f"{field.metadata.get('help', '')} (env {env}; default: {shown})"
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
    return _build(cls, vars(ns))


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build a config from environment variables alone (fields not set keep their defaults)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for owner, field in _leaves(cls):
        env = env_name(prefix, field.name)
        if env in environ:
            values[field.name] = _parse(_field_type(owner, field), environ[env])
    return _build(cls, values)
