"""Ranking metrics per query, and percentile-bootstrap intervals over queries.

Search evaluation (``vitrine eval``), adaptation (``vitrine adapt eval``) and the recommender
(``vitrine recommend eval``) report the same metrics; one definition keeps their tables comparable.

Definitions follow the usual IR conventions (as BEIR and the MS MARCO leaderboards report them). A
query's relevance maps ids to grades; a grade above zero is relevant (binary relevance is grade 1).
Recall@K divides by the number of relevant ids capped at K, so a query with 40 relevant products can
still reach 1.0 at K=10; reciprocal rank uses the first relevant id at any depth given; NDCG@K uses
gains of ``2^grade - 1`` with a log2 discount against the ideal ordering of the relevant grades.

Every metric is one value per query, so an interval comes from resampling queries: :func:`bootstrap`
(1,000 resamples, 95%, seeded), shown as ``mean [low, high]``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

RESAMPLES = 1000

Id = TypeVar("Id", bound=Hashable)
"""A product or item id; a query's relevance maps ids to grades, and ids missing from it have grade 0."""


def _relevant_count(relevance: Mapping[Id, float]) -> int:
    return sum(1 for grade in relevance.values() if grade > 0)


def _hits(ranked: Sequence[Id], relevance: Mapping[Id, float], k: int) -> int:
    return sum(1 for item in ranked[:k] if relevance.get(item, 0.0) > 0)


def hit_at(ranked: Sequence[Id], relevance: Mapping[Id, float], k: int) -> float:
    """1.0 when any relevant id is in the top ``k``, else 0.0 (a hit rate's per-query value)."""
    return 1.0 if _hits(ranked, relevance, k) else 0.0


def recall_at(ranked: Sequence[Id], relevance: Mapping[Id, float], k: int) -> float:
    """Relevant ids in the top ``k`` over the relevant ids there could be (at most ``k``)."""
    n_relevant = _relevant_count(relevance)
    return _hits(ranked, relevance, k) / min(n_relevant, k) if n_relevant else 0.0


def precision_at(ranked: Sequence[Id], relevance: Mapping[Id, float], k: int) -> float:
    """Relevant ids in the top ``k`` over ``k`` (a short list is not rewarded for being short)."""
    return _hits(ranked, relevance, k) / k


def reciprocal_rank(ranked: Sequence[Id], relevance: Mapping[Id, float]) -> float:
    """1 / rank of the first relevant id in ``ranked`` (pass the depth to judge), else 0.0."""
    for rank, item in enumerate(ranked, start=1):
        if relevance.get(item, 0.0) > 0:
            return 1.0 / rank
    return 0.0


def _dcg(grades: Sequence[float]) -> float:
    return sum((2**grade - 1) / math.log2(i + 2) for i, grade in enumerate(grades))


def ndcg_at(ranked: Sequence[Id], relevance: Mapping[Id, float], k: int) -> float:
    """DCG of the top ``k`` over the DCG of the ideal top ``k``; 0.0 for a query with nothing relevant."""
    ideal = _dcg(sorted((g for g in relevance.values() if g > 0), reverse=True)[:k])
    if not ideal:
        return 0.0
    return _dcg([relevance.get(item, 0.0) for item in ranked[:k]]) / ideal


@dataclass(frozen=True)
class Estimate:
    """A mean over queries with its bootstrap interval."""

    mean: float
    low: float
    high: float

    def overlaps(self, other: Estimate) -> bool:
        return not (self.low > other.high or other.low > self.high)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def bootstrap(values: Sequence[float] | np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> Estimate:
    """The mean of ``values`` and its 95% percentile-bootstrap interval; NaN throughout for no values.

    Seeded, so a report printed twice from the same figures shows the same interval.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Estimate(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return Estimate(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
