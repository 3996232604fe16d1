"""Flags and environment variables derive from one dataclass, so they cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import enum

import pytest

from vitrine import config


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"


@dataclasses.dataclass(frozen=True)
class Sample:
    port: int = dataclasses.field(default=0, metadata={"help": "port to bind"})
    device: Device = Device.AUTO
    tls: bool = False
    buckets: tuple[int, ...] = (1, 2)
    name: str | None = None


def _parse(argv: list[str]) -> Sample:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Sample, "vt")
    return config.from_namespace(Sample, parser.parse_args(argv))


def test_flags_override_defaults() -> None:
    assert _parse(["--port", "7", "--device", "cpu", "--tls", "--buckets", "4,8"]) == Sample(
        port=7, device=Device.CPU, tls=True, buckets=(4, 8)
    )


def test_environment_supplies_flag_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VT_PORT", "9")
    monkeypatch.setenv("VT_TLS", "on")
    assert _parse([]) == Sample(port=9, tls=True)
    assert _parse(["--no-tls"]) == Sample(port=9, tls=False)


def test_from_env_reads_only_prefixed_variables() -> None:
    cfg = config.from_env(Sample, "vt", {"VT_NAME": "a", "VT_DEVICE": "cpu", "OTHER_PORT": "3"})
    assert cfg == Sample(name="a", device=Device.CPU)


def test_bad_boolean_is_refused() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        config.from_env(Sample, "vt", {"VT_TLS": "maybe"})


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = 3
    mode: Device = Device.CPU


@dataclasses.dataclass(frozen=True)
class Outer:
    port: int = 0
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_a_nested_config_is_composed_into_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    monkeypatch.setenv("VT_DEPTH", "5")
    config.add_arguments(parser, Outer, "vt")
    assert config.from_namespace(Outer, parser.parse_args(["--mode", "auto"])) == Outer(
        inner=Inner(depth=5, mode=Device.AUTO)
    )
    assert config.from_env(Outer, "vt", {"VT_PORT": "4", "VT_DEPTH": "1"}) == Outer(port=4, inner=Inner(1))


def test_to_argv_round_trips_every_field() -> None:
    for cfg in (Sample(port=7, device=Device.CPU, tls=True, buckets=(4, 8), name="x"), Sample()):
        assert _parse(config.to_argv(cfg)) == cfg
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Outer, "vt")
    outer = Outer(port=3, inner=Inner(depth=9, mode=Device.AUTO))
    assert config.from_namespace(Outer, parser.parse_args(config.to_argv(outer))) == outer
