"""The main job: the whole stack on the embedded CPU default, from nothing to a serving demo.

``up`` exports the models (real checkpoints when reachable or given, else the full-size architectures
with seeded random weights, announced loudly), renders the Triton model repository, starts Triton, the
index service and the gateway, generates and ingests a demo catalog, prints a text and an image search,
and serves until SIGINT/SIGTERM. ``down`` signals a running ``up`` through its pid file. Every step that
is already done (a valid export, a generated catalog, an ingested collection) is skipped, so a second
``up`` is fast. Everything lives under one directory (``var/`` by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.recommend import RecommendSettings
from index_service.config import IndexServiceConfig
from model_repository.render import RenderOptions, render_repository, response_cache_args
from model_repository.server import Endpoints
from operations.launcher import LaunchError
from operations.servers import GatewayServer, IndexServer, TritonServer
from vitrine.contracts import Target

ENV_PREFIX = "VITRINE_STACK"

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
    gateway_port: int = field(default=50050, metadata={"help": "gateway gRPC port"})
    gateway_metrics_port: int = field(default=9101, metadata={"help": "gateway Prometheus port"})
    http_port: int = field(default=8080, metadata={"help": "gateway HTTP/JSON API and demo page port"})
    index_port: int = field(default=50051, metadata={"help": "index service gRPC port"})
    index_metrics_port: int = field(default=9102, metadata={"help": "index service Prometheus port"})
    triton_http_port: int = field(default=8000, metadata={"help": "Triton HTTP port"})
    triton_grpc_port: int = field(default=8001, metadata={"help": "Triton gRPC port"})
    triton_metrics_port: int = field(default=8002, metadata={"help": "Triton Prometheus port"})
    ingest_batch: int = field(default=32, metadata={"help": "products per upsert stream"})
    serve: bool = field(default=True, metadata={"help": "keep serving after the demo searches"})
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


def _say(message: str) -> None:
    print(f"[vitrine] {message}", file=sys.stderr, flush=True)


def _banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "!" * width, file=sys.stderr)
    for line in lines:
        print(f"! {line:<{width - 4}} !", file=sys.stderr)
    print("!" * width + "\n", file=sys.stderr, flush=True)


def pid_file(var: Path) -> Path:
    return var / "vitrine.pid"


def _valid_export(artifacts: Path, size: str) -> dict[str, object] | None:
    manifest = artifacts / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
        models = data["models"]
        if data.get("size") != size:
            return None
        if all((artifacts / m["path"]).is_file() for m in models.values()):
            return dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    return None


def export_models(cfg: StackConfig, artifacts: Path) -> dict[str, object]:
    manifest = _valid_export(artifacts, cfg.size)
    if manifest is None:
        _say(f"exporting models ({cfg.size}, source {cfg.source}) to {artifacts}: a few minutes on CPU")
        cmd = [
            sys.executable,
            "-m",
            "export",
            "--source",
            cfg.source,
            "--size",
            cfg.size,
            "--out",
            str(artifacts),
        ]
        if cfg.device == "gpu":  # the PyTorch fp16 path, for GPU hosts without onnxruntime-gpu
            cmd.append("--torch-fp16")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        manifest = _valid_export(artifacts, cfg.size)
        if manifest is None:
            raise RuntimeError(
                f"export finished but {artifacts}/manifest.json is not a valid {cfg.size} export"
            )
    else:
        _say(f"models already exported in {artifacts}")
    models: dict[str, dict[str, str]] = manifest["models"]  # type: ignore[assignment]
    weights = {name: m.get("weights", "?") for name, m in models.items()}
    if any(w != "pretrained" for w in weights.values()):
        _banner(
            [
                "NO PRETRAINED CHECKPOINT WAS REACHABLE: some models run with SEEDED RANDOM WEIGHTS.",
                *(f"  {name}: {w}" for name, w in weights.items()),
                "Latency is real (same architecture, same compute); search QUALITY IS MEANINGLESS.",
                "Give real checkpoints with: vitrine up --source <hub id or local directory>",
            ]
        )
    else:
        _say("models: pretrained weights")
    return manifest


class Stack:
    """Triton, the index service and the gateway as child processes over one work directory.

    The one assembly of the stack: ``vitrine up``, the benchmarks and the test fixtures all build theirs
    here, whole (``start``) or a piece at a time (``start_triton``, ``start_index``, ``start_gateway``).
    Ports left at 0 are chosen free before launch; the gateway is pointed at whatever Triton and index
    this stack started. ``stop`` is safe at any point of a start.
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
    ) -> None:
        self.work = Path(work).resolve()
        self.triton_trace = triton_trace
        self.logs = self.work / "logs"
        self.artifacts = artifacts
        self.endpoints = endpoints
        self.index_config = index or IndexServiceConfig(port=0, data_dir=str(self.work / "index"))
        self.gateway_config = gateway or GatewayConfig(port=0)
        self.render = render or RenderOptions()
        self.triton: TritonServer | None = None
        self.index: IndexServer | None = None
        self.gateway: GatewayServer | None = None

    @property
    def gateway_address(self) -> str:
        assert self.gateway is not None, "gateway not started"
        return self.gateway.address

    def start_triton(self) -> TritonServer:
        if self.artifacts is None:
            raise LaunchError("this stack has no model artifacts to serve")
        repo = render_repository(Path(self.artifacts), self.work / "model_repository", self.render)
        self.triton = TritonServer(
            repo,
            self.endpoints,
            workdir=self.work / "triton",
            log_file=self.logs / "tritonserver.log",
            extra_args=RELOADABLE_MODELS
            + response_cache_args(self.render)
            + (trace_args(self.triton_trace) if self.triton_trace else ()),
        )
        return self.triton.start()

    def start_index(self) -> IndexServer:
        self.index = IndexServer(self.index_config, log_file=self.logs / "index.log")
        self.index.start()
        return self.index

    def start_gateway(self, **overrides: Any) -> GatewayServer:
        """The gateway against this stack's Triton and index (started first), with ``overrides``."""
        assert self.triton is not None and self.index is not None, "start Triton and the index first"
        rec = self.gateway_config.recommend
        if rec.events_path == RecommendSettings().events_path:  # not chosen: this stack's own directory
            rec = dataclasses.replace(rec, events_path=str(self.work / "events" / "events.sqlite3"))
        config = dataclasses.replace(
            self.gateway_config,
            triton_url=self.triton.grpc_url,
            index_address=self.index.address,
            recommend=rec,
            **overrides,
        )
        self.gateway = GatewayServer(config, log_file=self.logs / "gateway.log")
        self.gateway.start()
        return self.gateway

    def start(self) -> Stack:
        self.start_triton()
        self.start_index()
        self.start_gateway()
        return self

    def stop(self) -> None:
        servers = (self.gateway, self.index, self.triton)
        self.gateway = self.index = self.triton = None
        errors = []
        for server in servers:
            if server is not None:
                try:
                    server.close()
                except (OSError, RuntimeError) as exc:
                    errors.append(exc)
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
    )


def demo_catalog(cfg: StackConfig, var: Path) -> Path:
    from demo.catalog import write_generated

    out = var / "catalog"
    stamp = out / ".generated"
    wanted = f"{cfg.products}:{cfg.seed}"
    catalog = out / "catalog.jsonl"
    if catalog.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        _say(f"demo catalog already generated ({cfg.products} products in {out})")
        return catalog
    _say(f"generating a demo catalog of {cfg.products} products in {out}")
    catalog = write_generated(out, cfg.products, seed=cfg.seed)
    stamp.write_text(wanted)
    return catalog


def ingested_count(index_address: str, collection: str) -> int:
    import grpc

    from vitrine.index.v2 import index_pb2, index_pb2_grpc

    with grpc.insecure_channel(index_address) as channel:
        try:
            stats = index_pb2_grpc.IndexServiceStub(channel).GetStats(
                index_pb2.GetStatsRequest(name=collection), timeout=10
            )
        except grpc.RpcError:
            return 0
        return int(stats.count)


def demo_searches(address: str, catalog: Path) -> None:
    from operations.client import Connection, render_results, search_request
    from vitrine.catalog import Product, read_catalog
    from vitrine.gateway.v1 import gateway_pb2_grpc

    first = next(p for p in read_catalog(catalog) if isinstance(p, Product))
    conn = Connection(address)
    with conn.channel() as channel:
        stub = gateway_pb2_grpc.ProductSearchStub(channel)
        text = "red leather ankle boots"
        resp = stub.Search(search_request(text, top_k=5, rerank=True, depth=50), timeout=120)
        print("\n" + render_results(resp, f'text search: "{text}" (re-ranked, depth 50)'))
        image = catalog.parent / first.image_uri
        resp = stub.Search(search_request(image=str(image), top_k=5), timeout=120)
        print("\n" + render_results(resp, f"image search: {image.name} ({first.title})") + "\n", flush=True)


def demo_recommendations(cfg: StackConfig, stack: Stack, var: Path, catalog: Path) -> None:
    """A demo history loaded, a recommender trained and deployed (each once), one user's recommendations."""
    from operations import recommend as rec
    from operations.client import Connection

    assert stack.triton is not None and stack.index is not None
    events = var / "events" / "demo.jsonl"
    users = cfg.users or max(20, cfg.products // 2)
    stamp = var / "events" / ".loaded"
    wanted = f"{cfg.products}:{cfg.seed}:{users}"
    if not (stamp.is_file() and stamp.read_text() == wanted and events.is_file()):
        _say(f"generating a demo history of {users} shoppers over the catalog")
        n = rec.generate_events(catalog, events, users, seed=cfg.seed)
        recorded, errors = rec.load_events(Connection(stack.gateway_address), events)
        _say(f"recorded {recorded} of {n} events ({len(errors)} refused or already recorded)")
        stamp.write_text(wanted)
    else:
        _say("demo history already recorded")
    artifacts = var / "recommender"
    collection = stack.gateway_config.pipeline.collection
    if not (artifacts / "manifest.json").is_file():
        t0 = time.monotonic()
        _say(f"training the recommender ({'tiny' if cfg.size == 'tiny' else 'default'} two-tower, CPU)")
        manifest = rec.train(
            events, catalog, stack.index.address, collection, artifacts, tiny=cfg.size == "tiny"
        )
        test = manifest["metrics"]["test"]
        _say(
            f"recommender trained in {time.monotonic() - t0:.0f} s: held-out NDCG@10 "
            f"{test.get('ndcg@10', 0):.3f}, HitRate@10 {test.get('hitrate@10', 0):.3f} (trained here)"
        )
    if not rec.served_versions(stack.triton.repo):
        version = rec.deploy(
            artifacts, stack.triton.repo, stack.triton.grpc_url, stack.index.address, collection
        )
        _say(f"recommender version {version} deployed (user tower on Triton, item vectors in the index)")
    print("\n" + rec.render_recommendations(Connection(stack.gateway_address), "u00000") + "\n", flush=True)


def up(cfg: StackConfig) -> int:
    from operations.client import Connection, ingest

    var = Path(cfg.var).resolve()
    var.mkdir(parents=True, exist_ok=True)
    pid_path = pid_file(var)
    if pid_path.is_file():
        try:
            os.kill(int(pid_path.read_text()), 0)
            _say(f"already running (pid {pid_path.read_text().strip()}); stop it with: vitrine down")
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
        export_models(cfg, stack.artifacts)
        t0 = time.monotonic()
        triton = stack.start_triton()
        _say(f"Triton ready on {triton.grpc_url} in {time.monotonic() - t0:.1f} s (log: {triton.log_file})")
        index = stack.start_index()
        _say(f"index service ready on {index.address}")
        gateway = stack.start_gateway()
        _say(f"gateway serving on {gateway.address} (metrics :{cfg.gateway_metrics_port}/metrics)")
        catalog = demo_catalog(cfg, var)
        n_catalog = sum(1 for line in catalog.read_text(encoding="utf-8").splitlines() if line.strip())
        have = ingested_count(index.address, gateway.config.pipeline.collection)
        if have >= n_catalog:
            _say(f"catalog already ingested ({have} products)")
        else:
            t0 = time.monotonic()
            summary = ingest(Connection(stack.gateway_address), catalog, batch=cfg.ingest_batch)
            _say(summary.render() + f" in {time.monotonic() - t0:.0f} s")
        demo_searches(stack.gateway_address, catalog)
        demo_recommendations(cfg, stack, var, catalog)
        _say(f"stack up in {time.monotonic() - t_start:.0f} s")
        page = f"http://127.0.0.1:{gateway.config.http_port}/"
        _say(f"page: {page}  (HTTP/JSON API: {page}openapi.json)")
        if cfg.serve:
            _say(f"serving on {stack.gateway_address}; Ctrl-C or `make down` stops everything")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        _say("interrupted")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        _say(f"failed: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the stop below finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopping gateway, index service and Triton")
        stack.stop()
        pid_path.unlink(missing_ok=True)
        _say("stopped")
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def down(var: str, timeout_s: float = 180.0) -> int:
    path = pid_file(Path(var).resolve())
    if not path.is_file():
        _say("nothing running (no pid file)")
        return 0
    pid = int(path.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        _say("nothing running (stale pid file removed)")
        return 0
    # `up` removes its pid file as the last step of a clean stop; a process that vanished counts too.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            _say("stack stopped")
            return 0
        if not path.exists():
            _say("stack stopped")
            return 0
        time.sleep(0.2)
    _say(f"pid {pid} still running after {timeout_s:.0f} s")
    return 1
