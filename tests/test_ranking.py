"""Ranking metrics and bootstrap intervals against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitrine import ranking

GRADES = {"a": 3.0, "b": 1.0, "z": 2.0, "n": 0.0}
"""Three relevant ids (a, z, b by grade) and one labelled not relevant."""
RANKED = ["x", "a", "y", "b", "n"]


def test_recall_divides_by_the_relevant_ids_there_could_be() -> None:
    assert ranking.recall_at(RANKED, GRADES, 4) == pytest.approx(2 / 3)  # a, b of a, b, z
    assert ranking.recall_at(RANKED, GRADES, 2) == pytest.approx(1 / 2)  # a of at most 2
    assert ranking.recall_at(RANKED, {"n": 0.0}, 4) == 0.0


def test_precision_divides_by_k() -> None:
    assert ranking.precision_at(RANKED, GRADES, 4) == pytest.approx(2 / 4)
    assert ranking.precision_at(["a"], GRADES, 10) == pytest.approx(1 / 10)


def test_hit_and_reciprocal_rank_find_the_first_relevant_id() -> None:
    assert ranking.hit_at(RANKED, GRADES, 1) == 0.0 and ranking.hit_at(RANKED, GRADES, 2) == 1.0
    assert ranking.reciprocal_rank(RANKED, GRADES) == pytest.approx(1 / 2)
    assert ranking.reciprocal_rank(["x", "n", "b"], GRADES) == pytest.approx(1 / 3)
    assert ranking.reciprocal_rank(["x", "n"], GRADES) == 0.0


def test_ndcg_uses_exponential_gains_and_the_ideal_order() -> None:
    dcg = 7 / math.log2(3) + 1 / math.log2(5)  # a (2^3 - 1) at rank 2, b (2^1 - 1) at rank 4
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)  # a, z, b
    assert ranking.ndcg_at(RANKED, GRADES, 4) == pytest.approx(dcg / ideal)
    assert ranking.ndcg_at(["a", "z", "b"], GRADES, 3) == pytest.approx(1.0)
    assert ranking.ndcg_at(["z", "a"], GRADES, 1) == pytest.approx(3 / 7)  # the ideal top 1 is a
    assert ranking.ndcg_at(RANKED, {}, 10) == 0.0


def test_binary_ndcg_is_discounted_hits_over_the_ideal() -> None:
    targets = {7: 1.0, 9: 1.0}
    expected = (1 / math.log2(3)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert ranking.ndcg_at([4, 7, 5], targets, 10) == pytest.approx(expected)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(0).random(200)
    est = ranking.bootstrap(values, seed=1)
    assert est == ranking.bootstrap(values, seed=1) != ranking.bootstrap(values, seed=2)
    assert est.mean == pytest.approx(values.mean()) and est.low < est.mean < est.high
    assert est.high - est.low == pytest.approx(2 * 1.96 * values.std() / math.sqrt(200), rel=0.15)
    assert str(ranking.Estimate(0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"


def test_a_constant_has_no_spread_and_nothing_has_no_figure() -> None:
    assert ranking.bootstrap([0.5] * 10) == ranking.Estimate(0.5, 0.5, 0.5)
    empty = ranking.bootstrap([])
    assert math.isnan(empty.mean) and math.isnan(empty.low) and math.isnan(empty.high)


def test_intervals_overlap_unless_one_lies_wholly_above() -> None:
    a = ranking.Estimate(0.5, 0.4, 0.6)
    assert a.overlaps(ranking.Estimate(0.65, 0.55, 0.75))
    assert not a.overlaps(ranking.Estimate(0.8, 0.7, 0.9))
    assert a.to_dict() == {"mean": 0.5, "low": 0.4, "high": 0.6}
