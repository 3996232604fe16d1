"""Retrieval quality: Recall@K, MRR, NDCG@K and Precision@K over a labelled query file.

Definitions follow the usual IR conventions (as BEIR and the MS MARCO leaderboards report them):
relevance grades come from the query file (a plain list of ids means grade 1 each); Recall@K divides
by the number of relevant products (capped at K, so a query with 40 relevant products can still reach
1.0 at K=10); MRR uses the first relevant hit at any depth returned; NDCG@K uses gains of
``2^grade - 1`` with a log2 discount against the ideal ordering of the labelled grades.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scores:
    recall: float
    mrr: float
    ndcg: float
    precision: float


def score_query(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> Scores:
    top = list(ranked[:k])
    hits = [pid for pid in top if relevant.get(pid, 0.0) > 0]
    n_rel = sum(1 for g in relevant.values() if g > 0)
    recall = len(hits) / min(n_rel, k) if n_rel else 0.0
    precision = len(hits) / k
    mrr = 0.0
    for rank, pid in enumerate(ranked, start=1):
        if relevant.get(pid, 0.0) > 0:
            mrr = 1.0 / rank
            break
    dcg = sum((2 ** relevant.get(pid, 0.0) - 1) / math.log2(i + 2) for i, pid in enumerate(top))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    ndcg = dcg / idcg if idcg else 0.0
    return Scores(recall, mrr, ndcg, precision)


def mean_scores(scores: Sequence[Scores]) -> Scores:
    n = max(len(scores), 1)
    return Scores(
        recall=sum(s.recall for s in scores) / n,
        mrr=sum(s.mrr for s in scores) / n,
        ndcg=sum(s.ndcg for s in scores) / n,
        precision=sum(s.precision for s in scores) / n,
    )


def format_table(rows: Sequence[tuple[str, Scores]], k: int, n_queries: int) -> str:
    """A results table in the shape retrieval papers print (one row per system)."""
    header = f"{'system':<34} {'Recall@' + str(k):>10} {'MRR':>8} {'NDCG@' + str(k):>9} {'P@' + str(k):>8}"
    lines = [f"{n_queries} queries", header, "-" * len(header)]
    for name, s in rows:
        lines.append(f"{name:<34} {s.recall:>10.4f} {s.mrr:>8.4f} {s.ndcg:>9.4f} {s.precision:>8.4f}")
    return "\n".join(lines)
