"""The evaluation's fixed split and the weight tuning: tuned on validation queries, blind to test ones."""

from __future__ import annotations

from dataclasses import replace

from gateway.types import Candidate, Fusion, TextMatch
from operations.evaluation import TEST, VALIDATION, split_of
from operations.tuning import PLACEHOLDER, fused_ids, tune
from vitrine.catalog import LabelledQuery


def _lists(lexical: list[str], minilm: list[str]) -> dict[TextMatch, list[Candidate]]:
    def ranked(ids: list[str]) -> list[Candidate]:
        return [Candidate(pid, 1.0 - 0.1 * r, PLACEHOLDER) for r, pid in enumerate(ids)]

    return {
        TextMatch.LEXICAL: ranked(lexical),
        TextMatch.MINILM: ranked(minilm),
        TextMatch.IMAGE: ranked(["x1", "x2"]),
        TextMatch.TITLE: ranked(["x3", "x4"]),
    }


def _texts(split: str, n: int) -> list[str]:
    return [t for t in (f"query {i}" for i in range(200)) if split_of(t) == split][:n]


def test_the_split_is_fixed_by_the_words() -> None:
    assert split_of("red leather ankle boots") == split_of("red leather ankle boots")
    assert len(_texts(VALIDATION, 20)) == 20 and len(_texts(TEST, 20)) == 20


def test_weights_follow_the_validation_queries_only() -> None:
    # validation: the relevant product is lexical's 1st and MiniLM's 2nd; with rrf_k 1 it comes first
    # only when lexical weighs more than a third of MiniLM (the grid's smallest, 0.25, is too little)
    queries, lists = [], []
    for text in _texts(VALIDATION, 6):
        queries.append(LabelledQuery(text, {"good": 1.0}))
        lists.append(_lists(["good", "b"], ["c", "good"]))
    baseline = tune(queries, lists, rrf_k=1, k=1)
    best = next(c for c in baseline if c.match == TextMatch.LEXICAL_MINILM and c.fusion == Fusion.RRF)
    assert best.ndcg.mean == 1.0 and best.weights.lexical_weight >= 0.5
    assert fused_ids(lists[0], TextMatch.LEXICAL_MINILM, Fusion.RRF, best.weights, 1, 1) == ["good"]
    low = replace(best.weights, lexical_weight=0.25)
    assert fused_ids(lists[0], TextMatch.LEXICAL_MINILM, Fusion.RRF, low, 1, 1) == ["c"]
    # test queries that would favour MiniLM change nothing: they are never read
    for text in _texts(TEST, 6):
        queries.append(LabelledQuery(text, {"c": 1.0}))
        lists.append(_lists(["a", "b"], ["c", "d"]))
    assert tune(queries, lists, rrf_k=1, k=1) == baseline
