"""The business re-rank's MMR over categories: its picks, by hand and against the rule written out."""

from __future__ import annotations

import math
import random

import pytest

from gateway.recommend import Recommendation, mmr
from vitrine.catalog import Product


def _rec(pid: str, score: float, category: tuple[str, ...]) -> Recommendation:
    return Recommendation(Product(id=pid, title=pid, category=category), score, "")


def _similarity(a: Product, b: Product) -> float:
    if a.category and a.category == b.category:
        return 1.0
    if len(a.category) > 1 and a.category[:-1] == b.category[:-1]:
        return 0.5
    return 0.0


def _mmr_by_the_rule(items: list[Recommendation], k: int, diversity: float) -> list[str]:
    """Every remaining item against every pick, as the rule reads (the earlier item wins a tie)."""
    if diversity <= 0 or len(items) <= 1:
        return [r.product.id for r in sorted(items, key=lambda r: -r.score)[:k]]
    low, high = min(r.score for r in items), max(r.score for r in items)
    spread = (high - low) or 1.0
    picked: list[int] = []
    left = list(range(len(items)))
    while left and len(picked) < k:
        best, best_value = left[0], -math.inf
        for i in left:
            sim = max((_similarity(items[i].product, items[j].product) for j in picked), default=0.0)
            value = (1 - diversity) * ((items[i].score - low) / spread) - diversity * sim
            if value > best_value:
                best, best_value = i, value
        picked.append(best)
        left.remove(best)
    return [items[i].product.id for i in picked]


def test_diversity_spreads_the_picks_over_categories() -> None:
    shoes, boots = ("fashion", "shoes", "sneakers"), ("fashion", "shoes", "boots")
    bags = ("fashion", "bags", "totes")
    items = [
        _rec("s1", 1.00, shoes),
        _rec("s2", 0.95, shoes),
        _rec("b1", 0.90, boots),
        _rec("t1", 0.50, bags),
        _rec("s3", 0.85, shoes),
    ]
    assert [r.product.id for r in mmr(items, 3, 0.0)] == ["s1", "s2", "b1"]  # relevance only
    # relevance s1 1, s2 0.9, b1 0.8, s3 0.7, t1 0: after s1, the boot (same parent, 0.5 off) beats a
    # second sneaker (same leaf, 1 off); then the bag (nothing in common) beats both sneakers left
    assert [r.product.id for r in mmr(items, 3, 0.5)] == ["s1", "b1", "t1"]
    assert [r.product.id for r in mmr(items, 10, 0.5)] == ["s1", "b1", "t1", "s2", "s3"]
    assert mmr([], 3, 0.5) == [] and [r.product.id for r in mmr(items[:1], 3, 0.5)] == ["s1"]


@pytest.mark.parametrize("seed", range(8))
def test_picks_are_those_of_the_rule(seed: int) -> None:
    rng = random.Random(seed)
    leaves = [("a", "b", "c"), ("a", "b", "d"), ("a", "e", "c"), ("x", "b"), ("x", "y"), ("a",), ("x",), ()]
    n = rng.choice([2, 5, 40, 150])
    # coarse scores, so ties between items happen and are broken as the rule breaks them
    items = [_rec(f"p{i}", rng.randrange(20) / 7, rng.choice(leaves)) for i in range(n)]
    for diversity in (0.0, 0.1, 0.3, 0.5, 0.9, 1.0):
        for k in (1, 10, n + 5):
            assert [r.product.id for r in mmr(items, k, diversity)] == _mmr_by_the_rule(items, k, diversity)
