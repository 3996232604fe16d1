"""Builds the index gRPC server: the engine, a sized executor, metrics, and the servicer served through
the kernel's server kit (``vitrine.grpc_server``: keys, decode errors, health, reflection)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry, start_http_server

from index_service import auth
from index_service.config import MAX_MESSAGE_BYTES, Device, IndexServiceConfig
from index_service.engine import Engine
from index_service.servicer import IndexServicer, Metrics
from vitrine.api_keys import ApiKeys
from vitrine.grpc_server import ServerSpec, build_server
from vitrine.index.v2 import index_pb2, index_pb2_grpc
from vitrine.metrics import service_registry

log = logging.getLogger(__name__)
SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name


def resolve_device(device: Device) -> str:
    """``auto`` means GPU when FAISS reports one; asking for ``gpu`` without one is a startup error."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == Device.GPU and gpus == 0:
        raise RuntimeError("device=gpu requested but FAISS reports no GPU (install faiss-gpu on a GPU host)")
    if device == Device.CPU:
        return "cpu"
    return "gpu" if gpus > 0 else "cpu"


@dataclass
class IndexServer:
    """What ``create_server`` hands back besides the gRPC server: things to close on shutdown."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    executor: ThreadPoolExecutor
    health: HealthServicer
    metrics_port: int | None
    registry: CollectorRegistry

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.executor.shutdown(wait=True)
        self.engine.close()


async def create_server(config: IndexServiceConfig) -> tuple[IndexServer, int]:
    """Load the data directory, then bind; the port is known (and health SERVING) only once data is loaded."""
    # OpenMP's thread count is per calling thread, so it is set in every executor thread, not just here.
    # One FAISS thread per executor thread is the default: on a small shared host, a single query split
    # across busy cores waits at OpenMP barriers (measured: 0.5 ms with one thread, 1.3-16 ms with two
    # on 2 loaded vCPUs for a 10k flat scan), while concurrent calls and coalesced batches still use
    # every core through the executor.
    omp_threads = config.omp_threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(omp_threads)
    device = resolve_device(config.device)
    engine = Engine(
        config.data_dir,
        snapshot_every=config.snapshot_every,
        device=device,
        brute_force_max=config.brute_force_max,
    )
    engine.load(progress=log.isEnabledFor(logging.INFO))
    executor = ThreadPoolExecutor(
        max_workers=max(1, config.threads),
        thread_name_prefix="index",
        initializer=faiss.omp_set_num_threads,
        initargs=(omp_threads,),
    )
    registry = service_registry()
    metrics = Metrics(registry, engine)
    metrics_port = None
    if config.metrics_port >= 0:
        http_server, _thread = start_http_server(config.metrics_port, addr=config.host, registry=registry)
        metrics_port = int(http_server.server_port)

    servicer = IndexServicer(engine, executor, metrics, coalesce=config.coalesce)
    spec = ServerSpec(
        service=SERVICE_NAME,
        host=config.host,
        port=config.port,
        max_message_bytes=MAX_MESSAGE_BYTES,
        keys=ApiKeys.from_config(config.api_keys, config.api_keys_file),
        scope_of=auth.scope_of,
        per_item=("UpsertStream",),  # an undecodable stream message is reported like a bad item
        max_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    served = build_server(
        spec, lambda server: index_pb2_grpc.add_IndexServiceServicer_to_server(servicer, server)
    )
    await served.server.start()
    await served.set_serving(True)
    log.info(
        "index service listening", extra={"port": served.port, "metrics_port": metrics_port, "device": device}
    )
    server = IndexServer(served.server, served.port, engine, executor, served.health, metrics_port, registry)
    return server, served.port
