"""``vitrine eval``'s scores: Recall@K, MRR, NDCG@K and Precision@K per labelled query, and their table.

The metrics are :mod:`vitrine.ranking`'s (relevance grades come from the query file; a plain list of ids
means grade 1 each); this module only gathers them per query and prints them in the shape retrieval
papers use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vitrine import ranking


@dataclass(frozen=True)
class Scores:
    recall: float
    mrr: float
    ndcg: float
    precision: float


def score_query(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> Scores:
    """One query's figures; MRR looks at every hit returned, the others at the top ``k``."""
    return Scores(
        recall=ranking.recall_at(ranked, relevant, k),
        mrr=ranking.reciprocal_rank(ranked, relevant),
        ndcg=ranking.ndcg_at(ranked, relevant, k),
        precision=ranking.precision_at(ranked, relevant, k),
    )


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
