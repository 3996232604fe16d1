"""Seeded synthetic vectors with exact ground truth, for tests and the benchmark.

Uniform random high-dimensional vectors are the worst case for every ANN index (no structure to exploit;
HNSW recall collapses), and embeddings of real products are nothing like them. ``clustered`` draws points
near a low-dimensional latent manifold mapped into the full dimension, plus noise, which is the shape
real embedding sets have.
"""

from __future__ import annotations

import faiss
import numpy as np


def clustered(
    n: int, dim: int, *, seed: int = 0, latent: int = 32, clusters: int = 64, noise: float = 0.05
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, latent)).astype(np.float32)
    projection = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent)).astype(np.float32)
        out[start : start + m] = z @ projection + noise * rng.standard_normal((m, dim)).astype(np.float32)
    return out


def queries_like(base: np.ndarray, nq: int, *, seed: int = 1, noise: float = 0.05) -> np.ndarray:
    """Queries near stored points (as shoppers' queries land near products), not copies of them."""
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), nq)]
    return (picks + noise * rng.standard_normal(picks.shape)).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_knn(
    base: np.ndarray, queries: np.ndarray, k: int, inner_product: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force: (scores, row indices), best first."""
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    return faiss.knn(queries, base, k, metric=metric)


def recall_at(found: list[list[int]] | np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of the true top k that the search returned in its top k."""
    hits = 0
    for row, true_row in zip(found, truth, strict=True):
        hits += len(set(list(row)[:k]) & set(true_row[:k].tolist()))
    return hits / (k * len(truth))
