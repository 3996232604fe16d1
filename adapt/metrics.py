"""Retrieval metrics per query, and percentile-bootstrap intervals over queries.

Every metric returns one value per query so intervals come from resampling queries (1,000 resamples,
95%), as the seeds' tables report them; a table then shows ``mean [low, high]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    def overlaps(self, other: Estimate) -> bool:
        return not (self.low > other.high or other.low > self.high)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return Estimate(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def instance_ranks(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each text's own image (row i matches column i) among all images."""
    sims = text @ image.T
    own = np.diagonal(sims)[:, None]
    return (sims > own).sum(axis=1)


def instance_metrics(text: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
    """Instance level (one matching image per text): R@1, R@5, R@10 and reciprocal rank per query."""
    ranks = instance_ranks(text, image)
    return {
        "R@1": (ranks < 1).astype(float),
        "R@5": (ranks < 5).astype(float),
        "R@10": (ranks < 10).astype(float),
        "MRR": 1.0 / (ranks + 1.0),
    }


GALLERY = 500
"""Class-level retrieval ranks each prompt over galleries of this many test images: ten prompts alone
are too few queries for an interval, and a gallery of 500 holds ~50 images of each class."""


def class_metrics(
    image: np.ndarray, labels: np.ndarray, prompts: np.ndarray, gallery: int = GALLERY, k: int = 10
) -> dict[str, np.ndarray]:
    """Class level (many images match a prompt): mAP@10 and P@10 per (prompt, gallery), and zero-shot
    classification correctness per image (nearest of the prompts)."""
    ap, prec = [], []
    for start in range(0, len(image) - gallery + 1, gallery):
        sims = prompts @ image[start : start + gallery].T
        lab = labels[start : start + gallery]
        for c in range(len(prompts)):
            top = np.argsort(-sims[c], kind="stable")[:k]
            rel = (lab[top] == c).astype(float)
            hits = np.cumsum(rel)
            n_rel = min(k, int((lab == c).sum()))
            ap.append(float((rel * hits / np.arange(1, k + 1)).sum() / n_rel) if n_rel else 0.0)
            prec.append(float(rel.mean()))
    correct = (np.argmax(image @ prompts.T, axis=1) == labels).astype(float)
    return {"mAP@10": np.asarray(ap), "P@10": np.asarray(prec), "accuracy": correct}


def ndcg_at(order: Sequence[str], grades: Mapping[str, float], k: int = 10) -> float:
    gains = [float(grades.get(pid, 0.0)) for pid in order[:k]]
    dcg = sum((2**g - 1) / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def reciprocal_rank(order: Sequence[str], grades: Mapping[str, float]) -> float:
    for i, pid in enumerate(order):
        if grades.get(pid, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0
