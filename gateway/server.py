"""The gateway server: factory, dependency health probe, authentication, metrics endpoint, shutdown.

Health is computed from the dependencies, not assumed: a probe asks Triton whether the three ensembles
are ready and the index service whether it serves, every ``health_interval_s``, and sets grpc.health.v1
accordingly. A request that finds a dependency unreachable flips health at once; the probe flips it
back when the dependency returns. Clients reconnect on their own, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health_pb2

from gateway import serving_info
from gateway.auth import ApiKeys, scope_of
from gateway.calls import Calls
from gateway.config import GatewayConfig
from gateway.errors import Dependency, DependencyError
from gateway.events import EventIngest
from gateway.index_backends import count_items, open_index
from gateway.ingest import IngestRoots
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline, Serving
from gateway.recommend import Recommender
from gateway.servicer import ProductSearchServicer
from gateway.serving_pointer import ServingVersions
from gateway.state import GatewayState
from gateway.triton_client import PinnedEmbedder, PinnedReranker, TritonModels
from vitrine.contracts import BASE_VERSION
from vitrine.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from vitrine.grpc_server import ServerSpec, build_server

if TYPE_CHECKING:
    from gateway.http.server import HttpServer

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["ProductSearch"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest gRPC message either way: an upsert stream message carries one product with its image."""


class Gateway:
    """A running gateway: the gRPC server plus its clients, probe task and metrics endpoint."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.triton = TritonModels(config.triton_url, self.metrics)
        self.index = open_index(  # the FAISS index service, or Milvus for a milvus:// address
            config.index_address,
            config.pipeline.collection,
            config.pipeline.filter_attributes,
            config.index_kind,
            config.index_api_key,
        )
        self.pipeline = Pipeline(self.triton, self.index, self.triton, config.pipeline)
        self.set_versions(config.encoder_version, config.reranker_version)
        self.state = GatewayState(config)
        self.apply_serving(self.state.versions())
        rec = config.recommend
        self.event_ingest = EventIngest(self.state.open_events, self.index)
        self.recommender = Recommender(
            lambda: self.event_ingest.store, self.triton, self.index, rec, self.pipeline.validate_filters
        )
        self.keys = ApiKeys.from_config(config.api_key, config.api_keys, config.api_keys_file)
        self.calls = Calls(
            self.pipeline,
            self.metrics,
            config.max_in_flight,
            self._on_unavailable,
            upsert_batch=config.upsert_batch,
            ingest=IngestRoots(config.ingest_roots),
            image_roots=config.image_roots,
            events=self.event_ingest,
            recommender=self.recommender,
            reranker_weights=lambda v, t: serving_info.reranker_weights(self.triton.client, v, t),
            count_products=lambda t: count_items(config.index_address, config.pipeline.collection, t or 10.0),
        )
        self.servicer = ProductSearchServicer(self.calls, config.default_timeout_s)
        spec = ServerSpec(
            service=SERVICE_NAME,
            host=config.host,
            port=config.port,
            max_message_bytes=MAX_MESSAGE_BYTES,
            keys=self.keys.keys,
            scope_of=scope_of,
            # An undecodable stream message is reported at its position, like any bad item or event.
            per_item=("UpsertProducts", "RecordEvents"),
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
        )
        served = build_server(
            spec, lambda server: gateway_pb2_grpc.add_ProductSearchServicer_to_server(self.servicer, server)
        )
        self.server, self.health, self.port = served.server, served.health, served.port
        self.up: dict[Dependency, bool] = {Dependency.TRITON: False, Dependency.INDEX: False}
        self._probe_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._probe_now = asyncio.Event()
        self._metrics_http: Any = None
        self.metrics_port: int | None = None
        self.http: HttpServer | None = None
        self.http_port: int | None = None

    def _on_unavailable(self, exc: DependencyError) -> None:
        if exc.dependency not in self.up:
            return  # the state database: events and recommendations fail, searches serve on
        if self.up.get(exc.dependency, False):
            log.warning("dependency unavailable", extra={"dependency": exc.dependency.value})
        self.up[exc.dependency] = False
        self._probe_now.set()

    async def _publish(self) -> None:
        serving = all(self.up.values())
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for dep, ok in self.up.items():
            self.metrics.dependency_up.labels(dep.value).set(1.0 if ok else 0.0)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    def set_versions(
        self, version: int, reranker_version: int = BASE_VERSION, pending_version: int = BASE_VERSION
    ) -> None:
        """Serve encoder ``version`` (its pinned ensembles and index spaces) and cross-encoder
        ``reranker_version``, and write ``pending_version``'s vectors on ingest while it is rolled out;
        switched in one assignment."""
        current = self.pipeline.serving
        if (version, reranker_version, pending_version) == (
            current.version,
            current.reranker_version,
            current.pending_version,
        ):
            return  # every health probe re-reads the serving file: nothing changed, nothing to rebuild
        log.warning(
            "serving model versions",
            extra={
                "encoder_version": version,
                "reranker_version": reranker_version,
                "pending_version": pending_version,
            },
        )
        embedder = self.triton if version == BASE_VERSION else PinnedEmbedder(self.triton, version)
        reranker = (
            self.triton if reranker_version == BASE_VERSION else PinnedReranker(self.triton, reranker_version)
        )
        pending = None if pending_version == BASE_VERSION else PinnedEmbedder(self.triton, pending_version)
        self.pipeline.serving = Serving(
            version, embedder, reranker, reranker_version, pending_version, pending
        )

    def apply_serving(self, versions: ServingVersions | None) -> None:
        """Follow the serving pointer (``gateway.serving_pointer``: the file or the database that
        ``vitrine adapt deploy``/``rollback`` write); None (no pointer, nothing written, unreadable)
        keeps the versions being served."""
        if versions is not None:
            self.set_versions(versions.encoder_version, versions.reranker_version, versions.pending_version)

    async def probe_once(self) -> bool:
        self.apply_serving(await asyncio.to_thread(self.state.versions))
        if self.config.state_url:  # shown, not part of health: searches do not need the database
            up = 1.0 if self.state.reachable else 0.0
            self.metrics.dependency_up.labels(Dependency.STATE.value).set(up)
        triton_ok, index_ok = await asyncio.gather(
            self.triton.ready(
                version=self.pipeline.serving.version, reranker_version=self.pipeline.serving.reranker_version
            ),
            self.index.ready(),
        )
        self.up[Dependency.TRITON], self.up[Dependency.INDEX] = triton_ok, index_ok
        if index_ok:
            try:
                await self.index.ensure_collection(timeout=5.0)
            except DependencyError:
                self.up[Dependency.INDEX] = False
        await self._publish()
        return all(self.up.values())

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # the probe must outlive any surprise
                log.exception("health probe failed")
            self._probe_now.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), self.config.health_interval_s)

    async def start(self) -> None:
        # NOT_SERVING until the first probe has seen both dependencies (the servicer's default is SERVING).
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.config.metrics_port >= 0:
            from prometheus_client import start_http_server

            self._metrics_http, _ = start_http_server(
                self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry
            )
            self.metrics_port = int(self._metrics_http.server_port)
        if self.config.http_port >= 0:
            from gateway.http.server import HttpServer  # FastAPI loads only when HTTP is on

            self.http = HttpServer(
                self.config, self.calls, self.keys, lambda: {dep.value: ok for dep, ok in self.up.items()}
            )
            self.http_port = await self.http.start()
        await self.probe_once()
        self._probe_task = asyncio.create_task(self._probe_loop())
        self._follow_task = asyncio.create_task(self.state.follow(self.apply_serving))

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight calls, then release clients; safe to call twice."""
        for task in (self._probe_task, self._follow_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe_task = self._follow_task = None
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await self.http.stop(self.config.grace_s if grace is None else grace)
            self.http = None
        await self.server.stop(self.config.grace_s if grace is None else grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        await self.triton.close()
        await self.index.close()
        await asyncio.to_thread(self.event_ingest.close)
        self.state.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def create_server(config: GatewayConfig) -> tuple[Gateway, int]:
    """Build and start a gateway bound to ``config.port`` (0 = a free one); returns it and its port."""
    gateway = Gateway(config)
    await gateway.start()
    return gateway, gateway.port
