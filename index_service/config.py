"""The index service's one configuration object; flags and ``VITRINE_INDEX_*`` variables derive from it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

ENV_PREFIX = "VITRINE_INDEX"
DEFAULT_PORT = 50051

MAX_K = 1000
"""Most neighbours one query may ask for: beyond this a result list is a scan, not a search."""

MAX_QUERIES = 256
"""Most query vectors in one Search call."""

MAX_BATCH = 1000
"""Most items in one Upsert/Delete/Get call (or one message of UpsertStream)."""

MAX_DIM = 4096
"""Vector dimension: 1..MAX_DIM."""

# Index parameters. 0 means "the default" for each; beyond these bounds a request is INVALID_ARGUMENT
# (FAISS would overflow its int fields, allocate without limit, or never train).
MAX_NLIST = 65_536
"""IVF lists; training needs 39 vectors a list, so more is a collection of billions."""
MAX_NPROBE = 65_536
"""IVF lists probed by one search (clamped to the collection's nlist)."""
MAX_PQ_NBITS = 12
"""IVF_PQ bits per code (1..12); pq_m must divide dim (1..dim). The codebook holds dim x 2^pq_nbits
floats, allocated when the collection is created: 16 bits at dim 4096 would be 1 GiB, 12 bits is 64 MiB."""
MIN_HNSW_M, MAX_HNSW_M = 2, 256
"""HNSW neighbours per node."""
MAX_EF_CONSTRUCTION = 4096
"""HNSW build effort."""
MAX_EF_SEARCH = 32_768
"""HNSW search effort (at least k is used)."""
MAX_TRAIN_MIN = 50_000_000
"""IVF: vectors needed before training."""
MAX_PAYLOAD_BYTES = 64 * 1024
"""Largest stored attributes + payload of one item, serialised."""

MAX_FILTER_NODES = 256
MAX_NAME_CHARS = 128
MAX_SPACES = 16
"""Most named vector spaces one collection declares (at creation and by AddVectorSpace)."""

MAX_SPACE_NAME_CHARS = 64
MAX_LEXICAL_SPACES = 4
"""Most lexical spaces (SQLite FTS5 tables) one collection declares."""
MAX_LEXICAL_FIELDS = 16
MAX_LEXICAL_WEIGHT = 100.0
MAX_QUERY_TEXT_CHARS = 1024
"""Longest text query of a lexical space."""
MAX_QUERY_TERMS = 64
"""Terms of one text query that are matched (the rest are ignored): bounds the FTS5 expression."""
MAX_ID_CHARS = 512
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""gRPC message limit: a full Upsert batch of 1000 x 4096-d vectors plus payloads fits."""


class Device(enum.StrEnum):
    AUTO = "auto"  # a GPU copy of flat/IVF indexes when FAISS reports a GPU, CPU otherwise
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class IndexServiceConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=0, metadata={"help": "gRPC port; 0 binds a free one"})
    data_dir: str = field(default="var/index", metadata={"help": "where the database and snapshots live"})
    threads: int = field(default=2, metadata={"help": "executor threads for FAISS and database work"})
    omp_threads: int = field(
        default=1,
        metadata={"help": "FAISS OpenMP threads per executor thread; 0 = one per core (see server.py)"},
    )
    device: Device = field(default=Device.AUTO, metadata={"help": "where searches run"})
    coalesce: bool = field(
        default=True,
        metadata={"help": "merge concurrent single-query searches into one FAISS call (IVF and HNSW)"},
    )
    metrics_port: int = field(default=-1, metadata={"help": "Prometheus port; 0 = a free one, -1 = off"})
    snapshot_every: int = field(
        default=100_000,
        metadata={
            "help": "minimum writes between a collection's snapshots: one is taken once the writes since "
            "the last reach this many AND half the collection's size (so a bulk load spends a constant "
            "share of its time on snapshots); 0 = never"
        },
    )
    brute_force_max: int = field(
        default=20_000,
        metadata={"help": "filtered searches matching at most this many items scan them exactly"},
    )
    max_concurrent_rpcs: int = field(
        default=512, metadata={"help": "calls beyond this are refused with RESOURCE_EXHAUSTED, not queued"}
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "API keys, SCOPES:KEY comma-separated (SCOPES read, write or read+write; reads are "
            "Search, Get, GetStats, List*); empty with no api_keys_file = open. Prefer the environment "
            "or api_keys_file: a flag shows in the process list",
            "secret": True,
        },
    )
    api_keys_file: str = field(
        default="", metadata={"help": "file of SCOPES:KEY lines (# comments; keep it mode 0600)"}
    )
    grace_s: float = field(default=5.0, metadata={"help": "seconds in-flight calls get on shutdown"})
    log_level: str = field(default="warning", metadata={"help": "debug, info, warning or error"})
