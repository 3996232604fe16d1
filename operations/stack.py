"""The local stack: Triton replicas, the index service, gateways and (optionally) PostgreSQL as
supervised child processes over one work directory; and the main job, ``vitrine up`` / ``down``.

``up`` exports the models (real checkpoints when reachable or given, else the full-size architectures
with seeded random weights, announced loudly), renders the Triton model repository, starts ``--tritons``
Triton replicas, the index service, PostgreSQL with ``--state postgres``, and ``--gateways`` gateways
(each balancing over every Triton replica), supervises them all (``operations.supervisor``), generates and
ingests a demo catalog (``operations.demo_run``: photos drawn as they are ingested, a first text search as
soon as the first batch is stored, progress while the rest goes in), trains, prints a text and an image
search, and serves until SIGINT/SIGTERM. ``down`` signals a running ``up`` through its pid file and returns
once every child process of it is gone. Everything lives under one directory (``var/`` by default).

The stack itself is assembled by ``operations.assembly`` (``Stack``, re-exported here). Ports: replica
``i`` of a kind listens on each of its configured ports + ``PORT_STRIDE * i`` (gateways 50050, 50060,
...; Triton gRPC 8001, 8011, ...). The banner lists every address, and the gRPC target a client gives
to spread over the gateways with ``round_robin`` (``vitrine.targets``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from index_service.config import IndexServiceConfig
from model_repository.render import RenderOptions
from model_repository.server import Endpoints
from operations import demo_run, trained_defaults, trained_deploy
from operations.assembly import PORT_STRIDE as PORT_STRIDE
from operations.assembly import RELOADABLE_MODELS as RELOADABLE_MODELS
from operations.assembly import Stack as Stack
from operations.assembly import trace_args as trace_args
from operations.client import STREAMS
from operations.demo_run import say
from operations.milvus_server import IndexChoice, start_index
from vitrine.contracts import Target

if TYPE_CHECKING:
    from operations.client import IngestSummary

ENV_PREFIX = "VITRINE_STACK"


class State(StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


@dataclass(frozen=True)
class StackConfig:
    var: str = field(default="var", metadata={"help": "directory for artifacts, repository, data and logs"})
    source: str = field(
        default="auto",
        metadata={"help": "model source: auto (hub, else random) | random | hub id | directory"},
    )
    size: str = field(default="full", metadata={"help": "model size: full or tiny"})
    products: int = field(default=2000, metadata={"help": "demo catalog size"})
    seed: int = field(default=0, metadata={"help": "demo catalog seed"})
    gateways: int = field(default=1, metadata={"help": "gateway replicas (gateway i on every port + 10 i)"})
    tritons: int = field(default=1, metadata={"help": "Triton replicas (replica i on every port + 10 i)"})
    state: State = field(
        default=State.SQLITE,
        metadata={
            "help": "where gateways keep events and the serving versions: sqlite (files under var) or "
            "postgres (a PostgreSQL started here, shared by every gateway)"
        },
    )
    gateway_port: int = field(default=50050, metadata={"help": "first gateway's gRPC port"})
    gateway_metrics_port: int = field(default=9101, metadata={"help": "first gateway's Prometheus port"})
    http_port: int = field(
        default=8080, metadata={"help": "first gateway's HTTP/JSON API and demo page port"}
    )
    index_port: int = field(default=50051, metadata={"help": "index service gRPC port"})
    index_metrics_port: int = field(default=9102, metadata={"help": "index service Prometheus port"})
    index: IndexChoice = field(
        default=IndexChoice.FAISS,
        metadata={
            "help": "index tier: faiss (the FAISS index service) or milvus-lite (a milvus-lite server on "
            "--index-port over var/milvus: Milvus's API, not its performance)"
        },
    )
    triton_http_port: int = field(default=8000, metadata={"help": "first Triton's HTTP port"})
    triton_grpc_port: int = field(default=8001, metadata={"help": "first Triton's gRPC port"})
    triton_metrics_port: int = field(default=8002, metadata={"help": "first Triton's Prometheus port"})
    postgres_port: int = field(default=15432, metadata={"help": "PostgreSQL port (--state postgres)"})
    supervisor_metrics_port: int = field(
        default=9103,
        metadata={"help": "Prometheus port of the supervisor's restart counter (-1: off)"},
    )
    ingest_batch: int = field(default=32, metadata={"help": "products per upsert stream"})
    ingest_streams: int = field(default=STREAMS, metadata={"help": "upsert streams in flight at once"})
    serve: bool = field(default=True, metadata={"help": "keep serving after the demo searches"})
    train: bool = field(
        default=True,
        metadata={
            "help": "train catalog adapters and the cross-encoder on the demo catalog (once), and serve "
            "each that beats the exported one on held-out data (docs/ADAPTATION.md)"
        },
    )
    users: int = field(default=0, metadata={"help": "demo shoppers with generated history (0: products / 2)"})
    device: str = field(
        default="cpu",
        metadata={
            "help": "cpu, or gpu: encoders on the GPU through the wheel's tritonserver (gpu-embedded target, "
            "needs onnxruntime-gpu); the index uses faiss-gpu wherever it is installed"
        },
    )
    response_cache_mb: int = field(
        default=0,
        metadata={
            "help": "Triton's response cache in MB (0: off): a repeated text query, photo or re-rank is "
            "answered without running the models"
        },
    )
    triton_trace: str = field(
        default="",
        metadata={
            "help": "write Triton's per-request trace here (read with python -m loadtest.trace); "
            "for measurements, it costs a little per request"
        },
    )


def pid_file(var: Path) -> Path:
    return var / "vitrine.pid"


def main_stack(cfg: StackConfig) -> Stack:
    """The main job's stack: fixed ports from ``cfg``, everything under ``cfg.var``."""
    var = Path(cfg.var).resolve()
    return Stack(
        var,
        var / "artifacts",
        endpoints=Endpoints(cfg.triton_grpc_port, cfg.triton_http_port, cfg.triton_metrics_port),
        render=RenderOptions(
            target=Target.GPU_EMBEDDED if cfg.device == "gpu" else Target.CPU,
            response_cache_mb=cfg.response_cache_mb,
        ),
        triton_trace=Path(cfg.triton_trace) if cfg.triton_trace else None,
        index=IndexServiceConfig(
            port=cfg.index_port, metrics_port=cfg.index_metrics_port, data_dir=str(var / "index")
        ),
        gateway=GatewayConfig(
            port=cfg.gateway_port,
            metrics_port=cfg.gateway_metrics_port,
            http_port=cfg.http_port,
            image_roots=(str(var / "catalog"),),
            # `vitrine adapt deploy` / `rollback` switch the main job's encoder version through this file.
            serving_file=str(var / "serving.json"),
        ),
        postgres_port=cfg.postgres_port,
    )


def _addresses(stack: Stack, cfg: StackConfig) -> list[str]:
    lines = []
    if stack.postgres is not None:
        lines.append(f"PostgreSQL       {stack.postgres.dsn}")
    for t in stack.tritons:
        lines.append(f"{t.name:<16} grpc {t.grpc_url}  http {t.http_url}  metrics {t.metrics_url}")
    if stack.index is not None:
        lines.append(f"index service    {stack.index.address}")
    for g in stack.gateways:
        c = g.config
        lines.append(
            f"{g.name:<16} grpc {g.address}  http http://{c.host}:{c.http_port}/  "
            f"metrics :{c.metrics_port}/metrics"
        )
    if cfg.supervisor_metrics_port >= 0:
        lines.append(f"supervisor       metrics :{cfg.supervisor_metrics_port}/metrics")
    lines.append(f"clients          --gateway {','.join(g.address for g in stack.gateways)}")
    return lines


def start_supervised(cfg: StackConfig, stack: Stack) -> None:
    """Every child of ``cfg``'s stack started, then supervised, its restarts counted on a port."""
    t0 = time.monotonic()
    if cfg.state == State.POSTGRES:
        postgres = stack.start_postgres()
        say(f"PostgreSQL ready on {postgres.dsn} (log: {postgres.log_file})")
    for _ in range(cfg.tritons):
        triton = stack.start_triton()
        say(f"{triton.name} ready on {triton.grpc_url} in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
    index = start_index(stack, cfg.index, cfg.index_port)  # the FAISS index service or milvus-lite
    say(f"index ({cfg.index}) ready on {index.address}")
    for _ in range(cfg.gateways):
        gateway = stack.start_gateway()
        say(f"{gateway.name} serving on {gateway.address}")
    supervisor = stack.supervise()
    if cfg.supervisor_metrics_port >= 0:
        from prometheus_client import start_http_server

        start_http_server(cfg.supervisor_metrics_port, addr="127.0.0.1", registry=supervisor.registry)


def up(cfg: StackConfig) -> int:
    if cfg.gateways < 1 or cfg.tritons < 1:
        say("--gateways and --tritons must be at least 1")
        return 2
    var = Path(cfg.var).resolve()
    var.mkdir(parents=True, exist_ok=True)
    pid_path = pid_file(var)
    if pid_path.is_file():
        try:
            os.kill(int(pid_path.read_text()), 0)
            say(f"already running (pid {pid_path.read_text().strip()}); stop it with: vitrine down")
            return 1
        except (ProcessLookupError, ValueError):
            pid_path.unlink()
    # SIGTERM (`vitrine down`) behaves like Ctrl-C: whatever step is running is abandoned, then every
    # process started so far is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = 0
    pid_path.write_text(str(os.getpid()))
    stack = main_stack(cfg)
    t_start = time.monotonic()
    try:
        assert stack.artifacts is not None
        demo_run.export_models(stack.artifacts, cfg.size, cfg.source, cfg.device)
        start_supervised(cfg, stack)
        assert stack.index is not None and stack.gateway is not None and stack.triton is not None
        demo = demo_run.demo_catalog(var, cfg.products, cfg.seed)
        catalog = demo.path
        collection = stack.gateway_config.pipeline.collection
        have = demo_run.ingested_count(stack.index.address, collection)
        if have >= demo.total and demo.rows is None:
            say(f"catalog already ingested ({have} products)")
        else:
            summary = demo_run.ingest_while_serving(
                partial(ingest_demo, stack.gateway_target, demo, cfg.ingest_batch, cfg.ingest_streams),
                demo.total,
                partial(first_search, stack.gateway_target, catalog, demo.total, t_start),
            )
            say(summary.render())
        if cfg.train:
            demo_run.banner(trained_defaults.serve_trained(var, catalog, trained_deploy.Live.of(stack)))
        rerank, why = trained_defaults.rerank_advice(stack)
        demo_run.demo_searches(stack.gateway_target, catalog, rerank, why)
        demo_run.demo_recommendations(
            var, catalog, products=cfg.products, seed=cfg.seed, users=cfg.users, tiny=cfg.size == "tiny",
            repo=stack.triton.repo, triton_urls=[t.grpc_url for t in stack.tritons],
            index_address=stack.index.address, collection=collection, gateway_address=stack.gateway_target,
        )  # fmt: skip
        say(f"stack up in {time.monotonic() - t_start:.0f} s")
        page = f"http://127.0.0.1:{stack.gateway.config.http_port}/"
        say(f"page: {page}  (HTTP/JSON API: {page}openapi.json)")
        demo_run.banner(["Serving (supervised: a child that dies is restarted):", *_addresses(stack, cfg)])
        if cfg.serve:
            say("Ctrl-C or `make down` stops everything")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        say("interrupted")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        say(f"failed: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the stop below finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping gateways, index service, Triton and PostgreSQL")
        stack.stop()
        pid_path.unlink(missing_ok=True)
        say("stopped")
    return code


def ingest_demo(
    address: str,
    demo: demo_run.DemoCatalog,
    batch: int,
    streams: int,
    on_batch: Callable[[IngestSummary], None],
) -> IngestSummary:
    from operations.client import Connection, ingest

    return ingest(
        Connection(address), demo.path, batch, False, streams=streams, rows=demo.rows, on_batch=on_batch
    )


def first_search(address: str, catalog: Path, total: int, t_start: float, stored: int) -> None:
    """The demo text search over the first products stored, while the rest are still being ingested (a
    photo search now would queue behind the catalog's photos; it comes with the later demo searches)."""
    say(f"first {stored} products searchable {time.monotonic() - t_start:.0f} s after start")
    why = f"searched while indexing ({stored} of {total} so far)"
    demo_run.demo_searches(address, catalog, False, why, image=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def down(var: str, timeout_s: float = 180.0) -> int:
    path = pid_file(Path(var).resolve())
    if not path.is_file():
        say("nothing running (no pid file)")
        return 0
    pid = int(path.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        say("nothing running (stale pid file removed)")
        return 0
    # `up` removes its pid file as the last step of a clean stop, after every child is gone (the
    # launcher waits until no process of a child's group lives); a process that vanished counts too.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            say("stack stopped")
            return 0
        if not path.exists():
            say("stack stopped")
            return 0
        time.sleep(0.2)
    say(f"pid {pid} still running after {timeout_s:.0f} s")
    return 1
