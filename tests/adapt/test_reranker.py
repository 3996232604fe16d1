"""The cross-encoder head trained on labelled catalog pairs: held-out queries, better ranking, int8."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from adapt import data, reranker


def _ndcg(enc: reranker.Encoder, queries: list, products: list) -> float:
    rng = random.Random(0)
    out = []
    for q in queries:
        cands = reranker._candidates(q, products, 20, rng)
        sc = reranker.scores(enc, q.text, [p.passage(reranker.PASSAGE_WORDS) for p in cands])
        order = [cands[i].id for i in np.argsort(-sc, kind="stable")]
        out.append(reranker.ranking_metrics([order], [q])["NDCG@10"][0])
    return float(np.mean(out))


def test_head_training_improves_ranking_and_holds_queries_out(tiny_artifacts: Path, tmp_path: Path) -> None:
    ds = data.catalog_pairs(120, seed=2, image_size=32)
    train_p, test_p = ds.products[: len(ds.train)], ds.products[len(ds.products) - len(ds.test) :]
    train_q, test_q = reranker.labelled_queries(train_p, test_p, seed=0)
    assert train_q and test_q
    by_id = {p.id: p for p in ds.products}

    def key(q: object) -> tuple[str, str]:
        p = by_id[next(iter(q.relevant))]  # type: ignore[attr-defined]
        return p.category[-1], p.attributes["color"]

    assert not {key(q) for q in train_q} & {key(q) for q in test_q}
    assert all(pid in {p.id for p in test_p} for q in test_q for pid in q.relevant)

    train_q = train_q[:16]
    enc = reranker.Encoder(tiny_artifacts)
    before = _ndcg(enc, train_q, list(train_p))
    report = reranker.train_head(
        enc, train_q, list(train_p), reranker.RerankSpec(candidates=12, epochs=30), progress=False
    )
    assert report["loss_last"] < report["loss_first"]
    assert _ndcg(enc, train_q, list(train_p)) > before

    pools = [(q.text, [p.passage(reranker.PASSAGE_WORDS) for p in list(test_p)[:12]]) for q in test_q[:2]]
    agreement = reranker.int8_agreement(enc, tmp_path / "ce", pools)
    assert agreement["fp32_vs_pytorch_max_abs"] < 1e-4
    assert 0.0 <= agreement["top10_overlap"] <= 1.0 and agreement["pools"] == 2
