"""Offline checks of rendered manifests: what can be proved without a cluster.

- every object deserializes into the ``kubernetes`` client's model of its kind (wrong types and missing
  required fields are refused by the client's models; unknown fields, which the client drops silently,
  are refused here by walking each model's attribute map);
- every container's arguments parse with the parser its program uses (the gateway's and the index
  service's from their config dataclasses, the model repository's CLI, and tritonserver's options as the
  wheel's binary lists them) and give back the config they were rendered from;
- every ``VITRINE_*`` variable a container sets names a field of its service's config.

Each check returns the problems it found as bounded one-line messages; none means the check passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config import ENV_PREFIX as GATEWAY_ENV_PREFIX
from gateway.config import GatewayConfig
from index_service.config import ENV_PREFIX as INDEX_ENV_PREFIX
from index_service.config import IndexServiceConfig
from operations.deploy.services import fields_of, flag
from vitrine import config as vconfig

MAX_SHOWN = 200


def _short(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


# -- Kubernetes models ------------------------------------------------------------------------------------


def model_name(obj: dict[str, Any]) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment`` (the client's class for that kind and version)."""
    version = str(obj.get("apiVersion", "")).rsplit("/", 1)[-1]
    return version[:1].upper() + version[1:] + str(obj.get("kind", ""))


def _unknown_fields(data: Any, klass: str, path: str) -> list[str]:
    import kubernetes.client.models as models

    if data is None:
        return []
    match = re.fullmatch(r"[Ll]ist\[(.+)\]", klass)
    if match:
        return [p for i, v in enumerate(data) for p in _unknown_fields(v, match.group(1), f"{path}[{i}]")]
    match = re.fullmatch(r"(?:dict\(|Dict\[)str, (.+)[)\]]", klass)
    if match:
        return [p for k, v in data.items() for p in _unknown_fields(v, match.group(1), f"{path}.{k}")]
    model = getattr(models, klass, None)
    if model is None or not isinstance(data, dict):
        return []  # a primitive, or ``object`` (free-form): the model's own validation judges it
    by_key = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        if key not in by_key:
            problems.append(f"{path}.{key}: not a field of {klass}")
        else:
            problems += _unknown_fields(value, model.openapi_types[by_key[key]], f"{path}.{key}")
    return problems


def check_object(obj: Any) -> list[str]:
    """Problems of one manifest object against the client's model of its kind."""
    import kubernetes.client.models as models
    from kubernetes.client import ApiClient

    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    name = model_name(obj)
    if getattr(models, name, None) is None:
        return [f"{name}: no such kind in the kubernetes client"]
    where = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name', '?')}"
    try:
        ApiClient()._ApiClient__deserialize(obj, name)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        return [_short(f"{where}: {' '.join(str(exc).split())}")]
    return [_short(f"{where}: {p}") for p in _unknown_fields(obj, name, "")]


# -- container arguments ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """How one program's command line is judged."""

    parse: Callable[[list[str]], list[str]]
    env_prefix: str = ""
    env_fields: frozenset[str] = frozenset()


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # raise instead of exiting, with argparse's own message
        raise _Refused(message)


def config_program(cls: type, prefix: str, expected: Any = None) -> Program:
    """A service whose flags derive from ``cls``: its arguments must parse, and (given ``expected``) give
    back that config less its secret fields, which travel in the environment."""

    def parse(args: list[str]) -> list[str]:
        parser = _Parser(prog=cls.__name__, add_help=False, allow_abbrev=False)  # exact names only
        vconfig.add_arguments(parser, cls, prefix)
        try:
            ns = parser.parse_args(args)
        except _Refused as exc:
            return [_short(f"{cls.__name__} refuses its arguments: {exc}")]
        if expected is not None:
            got, want = _flat(vconfig.from_namespace(cls, ns)), _flat(expected)
            differ = [
                f"{flag(k)}={got.get(k)!r} (rendered {want.get(k)!r})" for k in want if got.get(k) != want[k]
            ]
            if differ:
                return [_short(f"{cls.__name__}: the arguments give another config: {', '.join(differ)}")]
        return []

    names = frozenset(vconfig.env_name(prefix, f.name) for f, _ in fields_of(cls))
    return Program(parse, prefix, names)


def _flat(config: Any) -> dict[str, Any]:
    """Every non-secret leaf field of a config by name (secrets travel in the environment, not in args)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value))
        elif not f.metadata.get("secret"):
            out[f.name] = value
    return out


def triton_options() -> dict[str, str]:
    """Option -> value kind (``boolean``, ``integer``, ``string``...), as the wheel's tritonserver lists."""
    from model_repository.server import triton_home

    binary = triton_home() / "bin" / "tritonserver"
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    return {m.group(1): m.group(2) or "" for m in re.finditer(r"^  --([a-z0-9-]+)(?: <(.+)>)?$", text, re.M)}


def triton_program(options: dict[str, str]) -> Program:
    def parse(args: list[str]) -> list[str]:
        problems = []
        for arg in args:
            match = re.fullmatch(r"--([a-z0-9-]+)(?:=(.*))?", arg)
            if match is None:
                problems.append(_short(f"tritonserver: {arg!r} is not --option=value"))
                continue
            option, value = match.group(1), match.group(2)
            kind = options.get(option)
            if kind is None:
                problems.append(f"tritonserver: unknown option --{option}")
            elif kind == "boolean" and value not in ("true", "false"):
                problems.append(_short(f"tritonserver: --{option} wants a boolean, got {value!r}"))
            elif kind == "integer" and not (value or "").lstrip("-").isdigit():
                problems.append(_short(f"tritonserver: --{option} wants an integer, got {value!r}"))
        return problems

    return Program(parse)


def model_repository_program() -> Program:
    from model_repository.__main__ import build_parser

    def parse(args: list[str]) -> list[str]:
        parser = build_parser()
        parser.exit_on_error = False
        try:
            _, extra = parser.parse_known_args(args)
        except (SystemExit, argparse.ArgumentError) as exc:
            return [_short(f"model_repository refuses its arguments: {exc}")]
        return [_short(f"model_repository: unknown arguments {extra}")] if extra else []

    return Program(parse)


def default_programs(gateway: Any = None, index: Any = None) -> dict[tuple[str, ...], Program]:
    """Command (as the manifests spell it) -> how its arguments are judged."""
    return {
        ("python", "-m", "gateway"): config_program(GatewayConfig, GATEWAY_ENV_PREFIX, gateway),
        ("python", "-m", "index_service"): config_program(IndexServiceConfig, INDEX_ENV_PREFIX, index),
        ("python", "-m", "model_repository"): model_repository_program(),
        ("tritonserver",): triton_program(triton_options()),
    }


def containers(obj: dict[str, Any]) -> Iterable[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def check_containers(obj: dict[str, Any], programs: dict[tuple[str, ...], Program]) -> list[str]:
    problems = []
    for c in containers(obj):
        command = tuple(c.get("command") or ())
        program = programs.get(command)
        if program is None:
            problems.append(_short(f"container {c.get('name')}: no parser known for {' '.join(command)!r}"))
            continue
        problems += [f"container {c.get('name')}: {p}" for p in program.parse(list(c.get("args") or []))]
        for env in c.get("env") or []:
            var = env.get("name", "")
            ours = program.env_prefix and var.startswith(program.env_prefix + "_")
            if ours and var not in program.env_fields:
                problems.append(f"container {c.get('name')}: {var} names no field of its config")
    return problems


def check_documents(documents: dict[str, list[Any]], programs: dict[tuple[str, ...], Program]) -> list[str]:
    """Every problem of every object of every file (``load``'s output); Helm values files are skipped."""
    problems = []
    for name, docs in documents.items():
        if name.endswith("-values.yaml"):
            continue
        for doc in docs:
            problems += [f"{name}: {p}" for p in check_object(doc)]
            if isinstance(doc, dict):
                problems += [f"{name}: {p}" for p in check_containers(doc, programs)]
    return problems
