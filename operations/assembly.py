"""The one assembly of the stack: Triton replicas, the index service, gateways and PostgreSQL as child
processes over one work directory, optionally supervised.

``vitrine up`` (``operations.stack``), the benchmarks and the test fixtures all build theirs here. Replica
``i`` of a kind listens on each of its configured ports + ``PORT_STRIDE * i`` (gateways 50050, 50060,
...; Triton gRPC 8001, 8011, ...); ports left at 0 are chosen free.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.recommend import RecommendSettings
from index_service.config import IndexServiceConfig
from model_repository.render import RenderOptions, render_repository, response_cache_args
from model_repository.server import Endpoints
from operations.launcher import ChildServer, LaunchError
from operations.servers import GatewayServer, IndexServer, TritonServer
from operations.supervisor import Supervisor
from vitrine.targets import round_robin_target

if TYPE_CHECKING:
    from operations.postgres import PostgresServer

PORT_STRIDE = 10
"""Replica ``i`` of a kind uses each configured port + ``PORT_STRIDE * i``."""

RELOADABLE_MODELS = ("--model-control-mode=explicit", "--load-model=*")
"""Triton loads every model at start and reloads one when asked, serving its old versions meanwhile:
how a retrained recommender is deployed while serving (``operations.recommend.deploy``)."""


def trace_args(path: Path) -> tuple[str, ...]:
    """Triton's own request tracing: every request's timestamps (ensemble and each step: queued, compute
    start/end) written to ``path`` as JSON (read by ``loadtest.trace``). For measurements, not serving:
    it costs a little per request."""
    return (
        f"--trace-config=triton,file={Path(path).resolve()}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
        "--trace-config=count=-1",
        "--trace-config=triton,log-frequency=500",  # written in chunks: <path>.0, <path>.1, ..., then <path>
    )


def _shifted(port: int, i: int) -> int:
    """Replica ``i``'s port: fixed ports shift by the stride; 0 (free) and -1 (off) stay."""
    return port + PORT_STRIDE * i if port > 0 else port


class Stack:
    """Triton replicas, the index service, gateways and PostgreSQL as child processes over one directory.

    The one assembly of the stack: ``vitrine up``, the benchmarks and the test fixtures all build theirs
    here, whole (``start``) or a piece at a time (``start_triton``, ``start_index``, ``start_postgres``,
    ``start_gateway``; each ``start_triton`` / ``start_gateway`` adds one more replica). Ports left at 0
    are chosen free before launch; a gateway is pointed at every Triton replica started before it, the
    index and PostgreSQL if started. ``supervise`` restarts whatever dies. ``stop`` is safe at any point
    of a start and leaves no process of the stack behind.
    """

    def __init__(
        self,
        work: Path,
        artifacts: Path | None = None,
        *,
        endpoints: Endpoints | None = None,
        index: IndexServiceConfig | None = None,
        gateway: GatewayConfig | None = None,
        render: RenderOptions | None = None,
        triton_trace: Path | None = None,
        postgres_port: int = 0,
    ) -> None:
        self.work = Path(work).resolve()
        self.triton_trace = triton_trace
        self.logs = self.work / "logs"
        self.artifacts = artifacts
        self.endpoints = endpoints
        self.index_config = index or IndexServiceConfig(port=0, data_dir=str(self.work / "index"))
        self.gateway_config = gateway or GatewayConfig(port=0)
        self.render = render or RenderOptions()
        self.postgres_port = postgres_port
        self.tritons: list[TritonServer] = []
        self.gateways: list[GatewayServer] = []
        self.index: IndexServer | None = None
        self.postgres: PostgresServer | None = None
        self.supervisor: Supervisor | None = None
        self._repo: Path | None = None

    @property
    def triton(self) -> TritonServer | None:
        """The first Triton replica."""
        return self.tritons[0] if self.tritons else None

    @property
    def gateway(self) -> GatewayServer | None:
        """The first gateway."""
        return self.gateways[0] if self.gateways else None

    @property
    def gateway_address(self) -> str:
        assert self.gateways, "gateway not started"
        return self.gateways[0].address

    @property
    def gateway_target(self) -> str:
        """One gRPC target over every gateway: clients spread calls over them with ``round_robin``."""
        return round_robin_target([g.address for g in self.gateways])

    @property
    def triton_url(self) -> str:
        """The gateways' ``--triton-url``: every Triton replica."""
        return ",".join(t.grpc_url for t in self.tritons)

    def children(self) -> list[ChildServer]:
        return [*([self.postgres] if self.postgres else []), *self.tritons,
                *([self.index] if self.index else []), *self.gateways]  # fmt: skip

    def start_triton(self) -> TritonServer:
        """One more Triton replica over the one rendered repository (rendered at the first)."""
        if self.artifacts is None:
            raise LaunchError("this stack has no model artifacts to serve")
        if self._repo is None:
            self._repo = render_repository(Path(self.artifacts), self.work / "model_repository", self.render)
        i = len(self.tritons)
        endpoints = None
        if self.endpoints is not None:
            e = self.endpoints
            endpoints = dataclasses.replace(
                e,
                grpc_port=_shifted(e.grpc_port, i),
                http_port=_shifted(e.http_port, i),
                metrics_port=_shifted(e.metrics_port, i),
            )
        suffix = f"-{i}" if i else ""
        triton = TritonServer(
            self._repo,
            endpoints,
            workdir=self.work / f"triton{suffix}",
            log_file=self.logs / f"tritonserver{suffix}.log",
            extra_args=RELOADABLE_MODELS
            + response_cache_args(self.render)
            + (trace_args(self.triton_trace) if self.triton_trace and not i else ()),
            name=f"triton-{i}",
        )
        self.tritons.append(triton)
        return triton.start()

    def start_index(self) -> IndexServer:
        self.index = IndexServer(self.index_config, log_file=self.logs / "index.log")
        self.index.start()
        return self.index

    def start_postgres(self) -> PostgresServer:
        """PostgreSQL for the gateways' shared state (events, serving versions); data kept in the work
        directory across restarts."""
        from operations.postgres import PostgresServer

        self.postgres = PostgresServer(
            self.work / "postgres", self.postgres_port, log_file=self.logs / "postgres.log"
        )
        self.postgres.start()
        return self.postgres

    def start_gateway(self, **overrides: Any) -> GatewayServer:
        """One more gateway over this stack's Triton replicas and index (started first), with its state
        in PostgreSQL when this stack started one, and ``overrides``."""
        assert self.tritons and self.index is not None, "start Triton and the index first"
        i = len(self.gateways)
        base = self.gateway_config
        rec = base.recommend
        if rec.events_path == RecommendSettings().events_path:  # not chosen: this stack's own directory
            rec = dataclasses.replace(rec, events_path=str(self.work / "events" / "events.sqlite3"))
        fields: dict[str, Any] = {
            "port": _shifted(base.port, i),
            "metrics_port": _shifted(base.metrics_port, i),
            "http_port": _shifted(base.http_port, i),
            "triton_url": self.triton_url,
            "index_address": self.index.address,
            "recommend": rec,
        }
        if self.postgres is not None:
            fields["state_url"] = self.postgres.dsn
        config = dataclasses.replace(base, **{**fields, **overrides})
        suffix = f"-{i}" if i else ""
        gateway = GatewayServer(config, log_file=self.logs / f"gateway{suffix}.log", name=f"gateway-{i}")
        self.gateways.append(gateway)
        gateway.start()
        return gateway

    def start(self, tritons: int = 1, gateways: int = 1, postgres: bool = False) -> Stack:
        if postgres:
            self.start_postgres()
        for _ in range(tritons):
            self.start_triton()
        self.start_index()
        for _ in range(gateways):
            self.start_gateway()
        return self

    def supervise(self, **options: Any) -> Supervisor:
        """Restart every child of this stack that dies (``operations.supervisor``), from now on."""
        if self.supervisor is None:
            self.supervisor = Supervisor(self.children, **options).start()
        return self.supervisor

    def stop(self) -> None:
        """The supervisor first (nothing stopped here comes back), then the gateways, the index, the
        Triton replicas and PostgreSQL last (gateways may still be writing to it); the replicas of one
        kind stop together, each drained and its whole process group gone before the next kind."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        index, postgres = [self.index] if self.index else [], [self.postgres] if self.postgres else []
        kinds: list[Sequence[ChildServer]] = [self.gateways, index, self.tritons, postgres]
        self.gateways, self.tritons, self.index, self.postgres = [], [], None, None
        errors: list[BaseException] = []

        def close(server: ChildServer) -> None:
            try:
                server.close()
            except (OSError, RuntimeError) as exc:
                errors.append(exc)

        for servers in kinds:
            threads = [threading.Thread(target=close, args=(s,)) for s in servers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
