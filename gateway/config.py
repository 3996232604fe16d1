"""The gateway's one configuration object; flags and ``VITRINE_GATEWAY_*`` variables derive from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.pipeline import PipelineSettings
from gateway.recommend import RecommendSettings

ENV_PREFIX = "VITRINE_GATEWAY"
DEFAULT_PORT = 50050


@dataclass(frozen=True)
class GatewayConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=DEFAULT_PORT, metadata={"help": "gRPC port; 0 binds a free one"})
    triton_url: str = field(
        default="127.0.0.1:8001",
        metadata={
            "help": "Triton gRPC endpoint, comma-separated replicas, or dns:///name:port (every address "
            "of the name is a replica, resolved again every 10 s); see gateway/replicas.py"
        },
    )
    index_address: str = field(
        default="127.0.0.1:50051",
        metadata={
            "help": "index: the FAISS index service's host:port, or milvus://host:19530 (Milvus), or "
            "milvus-lite:<path>.db (embedded milvus-lite, local trials)"
        },
    )
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    """Search settings (collection, text match, fusion, filterable attributes): their flags are the
    gateway's flags, declared once in ``PipelineSettings``."""
    recommend: RecommendSettings = field(default_factory=RecommendSettings)
    """Events store and recommendation settings (``gateway.recommend``); their flags are the gateway's."""
    index_kind: str = field(
        default="flat", metadata={"help": "index of new collections: flat, hnsw, ivf_flat"}
    )
    max_in_flight: int = field(
        default=64, metadata={"help": "requests served at once; more get RESOURCE_EXHAUSTED"}
    )
    default_timeout_s: float = field(
        default=30.0, metadata={"help": "deadline applied when the caller sets none"}
    )
    upsert_batch: int = field(default=32, metadata={"help": "products embedded and written per batch"})
    api_key: str = field(
        default="",
        metadata={"help": "one read+write key: 'authorization: Bearer <key>'; empty = off", "secret": True},
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "keys with scopes, SCOPES:KEY comma-separated (SCOPES read, write or read+write); "
            "prefer the environment or api_keys_file",
            "secret": True,
        },
    )
    index_api_key: str = field(
        default="",
        metadata={"help": "key the gateway presents to an index service that requires one", "secret": True},
    )
    api_keys_file: str = field(
        default="", metadata={"help": "file of SCOPES:KEY lines (# comments); see gateway/auth.py"}
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain; with tls_key enables TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key"})
    health_interval_s: float = field(
        default=1.0, metadata={"help": "seconds between dependency readiness probes"}
    )
    metrics_port: int = field(default=-1, metadata={"help": "Prometheus port; 0 = a free one, -1 = off"})
    http_port: int = field(
        default=-1, metadata={"help": "HTTP/JSON API and demo page port; 0 = a free one, -1 = off"}
    )
    image_roots: tuple[str, ...] = field(
        default=(),
        metadata={"help": "directories product images are served from over HTTP (comma-separated)"},
    )
    ingest_roots: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "directories UpsertProducts' image_path may read from (comma-separated); "
            "empty = image_path refused, callers send image bytes"
        },
    )
    encoder_version: int = field(
        default=1,
        metadata={"help": "CLIP encoder version answering queries, with its index spaces (pinned as one)"},
    )
    reranker_version: int = field(
        default=1,
        metadata={"help": "cross-encoder version re-ranking results (its pinned rerank ensemble)"},
    )
    serving_file: str = field(
        default="",
        metadata={
            "help": 'JSON file {"encoder_version": N, "reranker_version": M} re-read every health '
            "interval, overriding both; `vitrine adapt deploy` and `rollback` replace it atomically"
        },
    )
    state_url: str = field(
        default="",
        metadata={
            "help": "postgresql://... : events and the serving pointer in this database, shared by every "
            "gateway (schema migrated at start; replaces --events-path and --serving-file); "
            "empty = the embedded SQLite events store and the serving file",
            "secret": True,  # a DSN may carry a password
        },
    )
    grace_s: float = field(default=5.0, metadata={"help": "seconds in-flight calls get on shutdown"})
    log_level: str = field(default="warning", metadata={"help": "debug, info, warning or error"})
