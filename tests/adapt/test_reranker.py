"""The cross-encoder trained on labelled catalog pairs: held-out queries, better ranking, saved and
reloaded exactly, deterministic for a seed, int8 agreement measured."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from adapt import data, reranker
from vitrine.catalog import LabelledQuery, Product

SPEC = reranker.RerankSpec(
    rerank_mined=8, rerank_relevant=4, rerank_same_kind=4, rerank_epochs=12, rerank_lr=3e-3
)


def _lists(queries: list[LabelledQuery], products: list[Product]) -> list[list[Product]]:
    """Stand-ins for the adapter's retrieval: other products in a seeded order."""
    rng = random.Random(5)
    out = []
    for q in queries:
        others = [p for p in products if p.id not in q.relevant]
        rng.shuffle(others)
        out.append(others)
    return out


def _ndcg(enc: reranker.Encoder, queries: list[LabelledQuery], products: list[Product]) -> float:
    out = []
    for q, mined in zip(queries, _lists(queries, products), strict=True):
        cands = reranker.candidates(q, products, mined, SPEC, random.Random(0))
        sc = reranker.scores(enc, q.text, [p.passage(reranker.PASSAGE_WORDS) for p in cands])
        order = [cands[i].id for i in np.argsort(-sc, kind="stable")]
        out.append(reranker.ranking_metrics([order], [q])["NDCG@10"][0])
    return float(np.mean(out))


def test_training_improves_ranking_holds_queries_out_and_reloads(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    ds = data.catalog_pairs(120, seed=2, image_size=32)
    train_p, test_p = list(ds.products[: len(ds.train)]), list(ds.products[len(ds.products) - len(ds.test) :])
    train_q, test_q = reranker.labelled_queries(train_p, test_p, seed=0)
    assert train_q and test_q
    by_id = {p.id: p for p in ds.products}

    def key(q: LabelledQuery) -> tuple[str, str]:
        p = by_id[next(iter(q.relevant))]
        return p.category[-1], p.attributes["color"]

    assert not {key(q) for q in train_q} & {key(q) for q in test_q}
    assert all(pid in {p.id for p in test_p} for q in test_q for pid in q.relevant)

    train_q = train_q[:16]
    enc = reranker.Encoder(tiny_artifacts, layers=1)
    frozen = {n: p.detach().clone() for n, p in enc.model.bert.embeddings.named_parameters()}
    before = _ndcg(enc, train_q, train_p)
    report = reranker.train(enc, train_q, train_p, _lists(train_q, train_p), SPEC, seed=3, progress=False)
    assert report["loss_last"] < report["loss_first"]
    assert report["pairs"] > len(train_q) * SPEC.rerank_relevant
    assert _ndcg(enc, train_q, train_p) > before
    # Only the top block and the head learn; the embeddings and lower blocks are as exported.
    assert all(torch.equal(p, frozen[n]) for n, p in enc.model.bert.embeddings.named_parameters())

    torch.save(enc.trained_state(), tmp_path / "reranker.pt")
    again = reranker.Encoder.from_saved(tiny_artifacts, tmp_path / "reranker.pt")
    passages = [p.passage(reranker.PASSAGE_WORDS) for p in test_p[:10]]
    np.testing.assert_array_equal(
        reranker.scores(enc, test_q[0].text, passages), reranker.scores(again, test_q[0].text, passages)
    )

    pools = [(q.text, [p.passage(reranker.PASSAGE_WORDS) for p in test_p[:12]]) for q in test_q[:2]]
    agreement, int8_scores = reranker.int8_agreement(enc, tmp_path / "ce", pools)
    assert [len(sc) for sc in int8_scores] == [12, 12]
    assert agreement["fp32_vs_pytorch_max_abs"] < 1e-4
    assert 0.0 <= agreement["top10_overlap"] <= 1.0 and agreement["pools"] == 2


def test_training_is_deterministic_for_a_seed(tiny_artifacts: Path) -> None:
    ds = data.catalog_pairs(80, seed=4, image_size=32)
    train_p, test_p = list(ds.products[: len(ds.train)]), list(ds.products[len(ds.products) - len(ds.test) :])
    queries = reranker.labelled_queries(train_p, test_p, seed=0)[0][:6]
    spec = reranker.RerankSpec(rerank_mined=6, rerank_relevant=3, rerank_same_kind=3, rerank_epochs=2)
    states = []
    for _ in range(2):
        enc = reranker.Encoder(tiny_artifacts, layers=1)
        reranker.train(enc, queries, train_p, _lists(queries, train_p), spec, seed=7, progress=False)
        states.append(enc.trained_state()["state"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
