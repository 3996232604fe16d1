"""Vitrine's three servers as child processes, each started from its typed config by the one launcher.

``index_server`` and ``gateway_server`` render their service's frozen config to flags (``to_argv``) and
wait on ``grpc.health.v1``; ``triton_server`` runs the tritonserver binary of the ``nvidia-pytriton``
wheel with the command and environment ``model_repository.server`` prepares, and waits on Triton's own
readiness. A port of 0 in a config becomes a free loopback port before launch, so every address is known
up front and a restarted server comes back on the same one.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import ENV_PREFIX as GATEWAY_ENV_PREFIX
from gateway.config import GatewayConfig
from index_service.config import ENV_PREFIX as INDEX_ENV_PREFIX
from index_service.config import IndexServiceConfig
from loadtest.observability.prometheus import find_binary
from model_repository.server import (
    Endpoints,
    TritonStartError,
    check_libpython,
    triton_command,
    triton_environment,
)
from operations.launcher import ChildServer, LaunchError, grpc_serving, http_ready
from vitrine.config import secret_env, to_argv
from vitrine.net import free_port, free_ports


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


C = TypeVar("C")


def with_ports(config: C) -> C:
    """Every ``port`` / ``*_port`` field that is 0 becomes a free port (-1, "off", stays)."""
    names = [
        f.name
        for f in dataclasses.fields(config)  # type: ignore[arg-type]
        if (f.name == "port" or f.name.endswith("_port")) and getattr(config, f.name) == 0
    ]
    chosen = dict(zip(names, free_ports(len(names)), strict=True))
    return dataclasses.replace(config, **chosen) if chosen else config  # type: ignore[type-var]


def _python_module(module: str, config: Any) -> list[str]:
    return [sys.executable, "-m", module, *to_argv(config)]


def _with_secrets(config: Any, prefix: str) -> dict[str, str] | None:
    """The child's environment: ours plus the config's secret fields (keys never go on a command line)."""
    secrets = secret_env(config, prefix)
    return {**os.environ, **secrets} if secrets else None


class IndexServer(ChildServer):
    """``python -m index_service`` over a data directory; ``restart`` and ``kill`` keep the directory."""

    def __init__(self, config: IndexServiceConfig, *, log_file: Path | None = None, **kw: Any) -> None:
        self.config = with_ports(config)
        self.address = f"{self.config.host}:{self.config.port}"
        self.data_dir = Path(self.config.data_dir)
        self.metrics_port = self.config.metrics_port if self.config.metrics_port >= 0 else None
        super().__init__(
            "index service", _python_module("index_service", self.config), grpc_serving(self.address),
            log_file=log_file, env=_with_secrets(self.config, INDEX_ENV_PREFIX), **kw,
        )  # fmt: skip


def index_server(
    data_dir: str | os.PathLike[str], *, log_file: Path | None = None, **overrides: Any
) -> IndexServer:
    return IndexServer(
        dataclasses.replace(IndexServiceConfig(port=0, data_dir=str(data_dir)), **overrides),
        log_file=log_file,
    )


class GatewayServer(ChildServer):
    """``python -m gateway``; SERVING means Triton's ensembles and the index both answered its probe."""

    def __init__(
        self, config: GatewayConfig, *, log_file: Path | None = None, name: str = "gateway", **kw: Any
    ) -> None:
        self.config = with_ports(config)
        self.address = f"{self.config.host}:{self.config.port}"
        self.metrics_port = self.config.metrics_port if self.config.metrics_port >= 0 else None
        super().__init__(
            name, _python_module("gateway", self.config), grpc_serving(self.address),
            log_file=log_file, hint=" (are Triton and the index up?)",
            env=_with_secrets(self.config, GATEWAY_ENV_PREFIX), **kw,
        )  # fmt: skip


class TritonServer(ChildServer):
    """The embedded tritonserver over a rendered model repository; ready when every model loaded."""

    def __init__(
        self,
        repo: Path,
        endpoints: Endpoints | None = None,
        *,
        workdir: Path,
        log_file: Path | None = None,
        verbose: bool = False,
        extra_args: tuple[str, ...] = (),
        stop_timeout_s: float = 15.0,
        name: str = "tritonserver",
    ) -> None:
        self.repo = Path(repo).resolve()
        grpc_port, http_port, metrics_port = free_ports(3)
        self.endpoints = endpoints or Endpoints(grpc_port, http_port, metrics_port)
        self.workdir = Path(workdir)
        argv = triton_command(self.repo, self.endpoints, self.workdir / "backends", verbose, extra_args)
        super().__init__(
            name, argv, http_ready(f"http://{self.endpoints.http_url}/v2/health/ready"),
            log_file=log_file or self.workdir / "tritonserver.log", env=triton_environment(),
            stop_timeout_s=stop_timeout_s,
        )  # fmt: skip

    @property
    def grpc_url(self) -> str:
        return self.endpoints.grpc_url

    @property
    def http_url(self) -> str:
        return self.endpoints.http_url

    @property
    def metrics_url(self) -> str:
        return self.endpoints.metrics_url

    def check(self) -> None:
        if not self.repo.is_dir():
            raise TritonStartError(f"model repository {self.repo} does not exist: render it first")
        check_libpython()
        # Triton binds its ports only once every model loaded (seconds to minutes): a port taken meanwhile
        # would let another server answer this one's readiness probe. Refuse to start instead (a
        # supervisor retries with backoff).
        e = self.endpoints
        busy = [p for p in (e.grpc_port, e.http_port, e.metrics_port) if not port_free(e.host, p)]
        if busy:
            raise TritonStartError(
                f"{self.name}: port {', '.join(map(str, busy))} of {e.host} already in use"
            )

    def start(self, timeout_s: float | None = None) -> TritonServer:
        try:
            super().start(timeout_s)
        except LaunchError as exc:
            raise TritonStartError(str(exc)) from None
        return self


class PrometheusServer(ChildServer):
    """Debian's ``prometheus`` on a free loopback port with the given scrape configuration."""

    def __init__(self, config_text: str, workdir: Path, ready_timeout_s: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(config_text)
        self.port = free_port()
        argv = [
            str(find_binary()),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        super().__init__(
            "prometheus", argv, http_ready(f"{self.url}/-/ready"), log_file=self.workdir / "prometheus.log",
            startup_timeout_s=ready_timeout_s, stop_timeout_s=20.0,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
