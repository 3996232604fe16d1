"""The scaling benchmark's catalog, its exact neighbours and its result row (``benchmarks.scaling``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from benchmarks.datasets import clustered
from vitrine.measure import percentile

DIM = 512
K = 10
SPACES = ("image", "text")
CATEGORIES = 8
BATCH = 1000
COLLECTION = "scaling"


@dataclass
class Row:
    backend: str  # "faiss-service" or "milvus-lite"
    kind: str
    size: int
    rss_mb: float
    ingest_per_s: float
    ingest_s: float
    build_s: float  # after the last write until searchable (milvus-lite's flush and index build; FAISS: 0)
    snapshot_s: float
    restart_s: float
    queries: int
    p50_ms: float
    p95_ms: float
    recall: float
    filtered_p50_ms: float
    filtered_p95_ms: float
    filtered_recall: float


@dataclass
class Catalog:
    """Products 0..size-1: ``vectors[space][i]``, category ``i % 8``, price ``i % 1000``; held-out queries."""

    size: int
    vectors: dict[str, np.ndarray]
    queries: np.ndarray  # image-space queries
    truth: np.ndarray  # exact top K of each query over every product
    filtered_truth: np.ndarray  # exact top K among the query's category (query j filters category j % 8)

    def category(self, i: int) -> str:
        return f"c{i % CATEGORIES}"


def make_catalog(size: int, n_queries: int) -> Catalog:
    vectors: dict[str, np.ndarray] = {}
    queries = np.empty((0, DIM), np.float32)
    for s, space in enumerate(SPACES):
        every = clustered(size + n_queries, DIM, seed=size + s)
        vectors[space] = every[:size]
        if space == "image":
            queries = np.ascontiguousarray(every[size:])
        del every
    base = vectors["image"]
    _, truth = faiss.knn(queries, base, K)
    filtered = np.empty((n_queries, K), dtype=np.int64)
    for c in range(CATEGORIES):
        rows = np.arange(c, size, CATEGORIES)
        picks = np.arange(c, n_queries, CATEGORIES)
        if len(picks):
            _, local = faiss.knn(queries[picks], base[rows], K)
            filtered[picks] = rows[local]
    return Catalog(size, vectors, queries, truth, filtered)


def timed_queries(search: Callable[[int], list[int]], n: int) -> tuple[float, float, list[list[int]]]:
    search(0)  # warm-up
    latencies, found = [], []
    for j in range(n):
        t0 = time.perf_counter()
        found.append(search(j))
        latencies.append((time.perf_counter() - t0) * 1e3)
    return percentile(latencies, 0.50), percentile(latencies, 0.95), found
