"""``vitrine recommend eval``: the two-tower against three baselines on the same held-out sessions.

Every method ranks the whole catalog for each test case (the user's last session; see
``recommend.data``), items the user had already touched removed, as Recommend removes them. Metrics at 10:
HitRate (a target in the list), NDCG (binary gain, ideal = min(targets, 10)), MRR (first target's
reciprocal rank within the top 100, else 0), coverage (share of the catalog recommended to anyone),
intra-list diversity (share of pairs in a list from different leaf categories) and novelty (mean
``-log2`` of an item's share of training users; higher = less mainstream). 95% intervals: percentile
bootstrap over users (1,000 resamples, seeded); coverage is a property of the whole set and has none.

Baselines, all learning from the same training events:
- popularity: training events weighted by type, same list for everyone;
- co-visitation item-kNN: items sharing sessions with the user's history (type-weighted, recency-decayed);
- content-only: cosine to the mean of the history's CLIP image and title vectors (no behaviour at all).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recommend.data import Case, Split
from recommend.items import ItemTable
from recommend.model import TwoTower
from recommend.scoring import score_cases
from vitrine import ranking
from vitrine.events import EVENT_WEIGHT, Event
from vitrine.tables import markdown_table

K = 10
MRR_DEPTH = 100


def rank_lists(scores: np.ndarray, cases: Sequence[Case], k: int = MRR_DEPTH) -> np.ndarray:
    """Top ``k`` item rows per case, seen items excluded."""
    scores = scores.astype(np.float64, copy=True)
    for i, c in enumerate(cases):
        if c.seen:
            scores[i, list(c.seen)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(lists: np.ndarray, cases: Sequence[Case], k: int = K) -> dict[str, np.ndarray]:
    """HitRate, NDCG and MRR per case; every target counts as relevant with the same gain (binary)."""
    hit, ndcg, mrr = [], [], []
    for row, c in zip(lists, cases, strict=True):
        ranked = row.tolist()
        targets = dict.fromkeys(c.targets, 1.0)
        hit.append(ranking.hit_at(ranked, targets, k))
        ndcg.append(ranking.ndcg_at(ranked, targets, k))
        mrr.append(ranking.reciprocal_rank(ranked, targets))
    return {"hit": np.asarray(hit), "ndcg": np.asarray(ndcg), "mrr": np.asarray(mrr)}


def _diversity(top: np.ndarray, table: ItemTable) -> np.ndarray:
    out = []
    for row in top:
        leaves = [table.leaves[int(i)] for i in row]
        pairs = [(a, b) for i, a in enumerate(leaves) for b in leaves[i + 1 :]]
        out.append(sum(a != b for a, b in pairs) / len(pairs) if pairs else 0.0)
    return np.asarray(out)


def _novelty(top: np.ndarray, share: np.ndarray) -> np.ndarray:
    return np.asarray([float(np.mean(-np.log2(share[row]))) for row in top])


@dataclass(frozen=True)
class Summary:
    """One method's figures: per-user metrics with intervals, coverage (a property of the whole set, so
    without one) and the per-user NDCG kept for paired comparisons."""

    per_user: dict[str, ranking.Estimate]
    coverage: float
    ndcg_per_user: np.ndarray


def summarise(lists: np.ndarray, cases: Sequence[Case], table: ItemTable, share: np.ndarray) -> Summary:
    m = ranking_metrics(lists, cases)
    top = lists[:, :K]
    per_user = {
        "hitrate@10": m["hit"],
        "ndcg@10": m["ndcg"],
        "mrr": m["mrr"],
        "diversity": _diversity(top, table),
        "novelty": _novelty(top, share),
    }
    return Summary(
        per_user={name: ranking.bootstrap(v) for name, v in per_user.items()},
        coverage=len(np.unique(top)) / len(table),
        ndcg_per_user=m["ndcg"],
    )


# ---- methods: each returns [cases, items] scores ---------------------------------------------------------


def popularity_scores(train_events: Sequence[Event], table: ItemTable, cases: Sequence[Case]) -> np.ndarray:
    index = table.index
    pop = np.zeros(len(table))
    for e in train_events:
        if e.item_id in index:
            pop[index[e.item_id]] += EVENT_WEIGHT[e.type]
    return np.tile(pop, (len(cases), 1))


def covisit_scores(train_events: Sequence[Event], table: ItemTable, cases: Sequence[Case]) -> np.ndarray:
    index = table.index
    sessions: dict[str, dict[int, float]] = defaultdict(dict)
    for e in train_events:
        if e.item_id in index:
            s = sessions[e.session_id or e.user_id]
            row = index[e.item_id]
            s[row] = max(s.get(row, 0.0), EVENT_WEIGHT[e.type])
    covis = np.zeros((len(table), len(table)), dtype=np.float32)
    for items in sessions.values():
        rows = np.fromiter(items, dtype=np.int64)
        w = np.fromiter(items.values(), dtype=np.float32)
        covis[np.ix_(rows, rows)] += np.outer(w, w) / max(1.0, math.log2(1 + len(rows)))
    np.fill_diagonal(covis, 0.0)
    pop = popularity_scores(train_events, table, cases[:1])[0] if cases else np.zeros(len(table))
    out = np.zeros((len(cases), len(table)), dtype=np.float64)
    for i, c in enumerate(cases):
        recency = np.exp(-c.history.ages / (24.0 * 7))
        weight = recency * np.asarray([EVENT_WEIGHT_BY_CODE[int(t)] for t in c.history.types])
        out[i] = weight @ covis[c.history.items]
    return out + 1e-6 * pop / max(pop.max(), 1.0)  # popularity breaks ties (and fills empty rows)


def content_scores(table: ItemTable, cases: Sequence[Case]) -> np.ndarray:
    norm = table.content / np.maximum(np.linalg.norm(table.content, axis=1, keepdims=True), 1e-12)
    users = (
        np.stack([norm[c.history.items].mean(axis=0) for c in cases])
        if cases
        else np.zeros((0, norm.shape[1]))
    )
    return users @ norm.T


def evaluate_model(model: TwoTower, table: ItemTable, cases: Sequence[Case]) -> dict[str, float]:
    """The two-tower's headline figures (for the training manifest)."""
    if not cases:
        return {}
    m = ranking_metrics(rank_lists(score_cases(model, table, list(cases)), cases), cases)
    return {
        "hitrate@10": float(m["hit"].mean()),
        "ndcg@10": float(m["ndcg"].mean()),
        "mrr": float(m["mrr"].mean()),
    }


def compare(model: TwoTower, table: ItemTable, data: Split) -> dict[str, Summary]:
    """Every method on ``data.test``; keys in table order."""
    cases = data.test
    users_per_item = np.zeros(len(table))
    index = table.index
    for item, users in _users_per_item(data.train_events).items():
        if item in index:
            users_per_item[index[item]] = users
    n_users = max(1, len({e.user_id for e in data.train_events}))
    share = (users_per_item + 1.0) / (n_users + 1.0)
    methods: dict[str, Callable[[], np.ndarray]] = {
        "popularity": lambda: popularity_scores(data.train_events, table, cases),
        "co-visitation item-kNN": lambda: covisit_scores(data.train_events, table, cases),
        "content-only (mean of history CLIP vectors)": lambda: content_scores(table, cases),
        "two-tower": lambda: score_cases(model, table, list(cases)),
    }
    return {name: summarise(rank_lists(fn(), cases), cases, table, share) for name, fn in methods.items()}


def _users_per_item(events: Sequence[Event]) -> dict[str, int]:
    users: dict[str, set[str]] = defaultdict(set)
    for e in events:
        users[e.item_id].add(e.user_id)
    return {k: len(v) for k, v in users.items()}


EVENT_WEIGHT_BY_CODE = {0: 0.0, **{i + 1: w for i, w in enumerate(EVENT_WEIGHT.values())}}


def paired_gain(a: np.ndarray, b: np.ndarray, seed: int = 0) -> ranking.Estimate:
    """Mean per-user difference a - b with its bootstrap interval (same users, paired)."""
    return ranking.bootstrap(a - b, seed)


COLUMNS = {
    "hitrate@10": "HitRate@10",
    "ndcg@10": "NDCG@10",
    "mrr": "MRR",
    "coverage": "coverage",
    "diversity": "intra-list diversity",
    "novelty": "novelty",
}
"""The table's columns: a figure's key in :class:`Summary` -> its heading."""


def _cells(s: Summary) -> list[object]:
    return [f"{s.coverage:.3f}" if key == "coverage" else s.per_user[key] for key in COLUMNS]


def render_table(results: dict[str, Summary]) -> str:
    lines = markdown_table(["method", *COLUMNS.values()], [[name, *_cells(s)] for name, s in results.items()])
    tower = results.get("two-tower")
    if tower is not None:
        for name, s in results.items():
            if name == "two-tower":
                continue
            gain = paired_gain(tower.ndcg_per_user, s.ndcg_per_user)
            base = s.per_user["ndcg@10"].mean
            ratio = f"{tower.per_user['ndcg@10'].mean / base:.2f}x" if base > 0 else "n/a"
            interval = f"[{gain.low:+.3f}, {gain.high:+.3f}]"
            lines.append(f"\ntwo-tower vs {name}: NDCG@10 {gain.mean:+.3f} {interval} ({ratio})")
    return "\n".join(lines)
