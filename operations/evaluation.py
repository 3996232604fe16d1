"""``vitrine eval``'s scores: Recall@K, MRR, NDCG@K and Precision@K per labelled query, their tables (with
bootstrap intervals over queries), and the fixed validation/test split of labelled queries.

The metrics are :mod:`vitrine.ranking`'s (relevance grades come from the query file; a plain list of ids
means grade 1 each); this module only gathers them per query and prints them in the shape retrieval
papers use.
"""

from __future__ import annotations

import hashlib
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


# ---- held-out splits and intervals ------------------------------------------------------------------

VALIDATION = "validation"
TEST = "test"
SPLITS = (VALIDATION, TEST, "all")


def split_of(text: str) -> str:
    """A query's split, fixed by its words alone (about half each): weights and modes are chosen on
    ``validation`` queries and reported on ``test`` ones, whatever file or order they come in."""
    return VALIDATION if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else TEST


def in_split(text: str, split: str) -> bool:
    return split == "all" or split_of(text) == split


@dataclass(frozen=True)
class Row:
    """One system's per-query figures."""

    name: str
    per_query: Sequence[Scores]

    def ndcg(self) -> ranking.Estimate:
        return ranking.bootstrap([s.ndcg for s in self.per_query])

    def mean(self) -> Scores:
        return mean_scores(self.per_query)


def format_interval_table(title: str, rows: Sequence[Row], k: int) -> str:
    """One row per system: NDCG@k with its 95% bootstrap interval over queries, then the plain means."""
    header = (
        f"{'system':<40} {'NDCG@' + str(k) + ' [95% CI]':>24} {'Recall@' + str(k):>10} {'MRR':>7} "
        f"{'P@' + str(k):>7}"
    )
    n = len(rows[0].per_query) if rows else 0
    lines = [f"{title}: {n} queries", header, "-" * len(header)]
    for row in rows:
        m = row.mean()
        lines.append(f"{row.name:<40} {row.ndcg()!s:>24} {m.recall:>10.3f} {m.mrr:>7.3f} {m.precision:>7.3f}")
    return "\n".join(lines)
