"""``text_match=lexical``: BM25 over the catalog's words in the index's lexical space, through the gateway.

The stack's weights are random, so only words can find a product by its description here: its exact
title must come back first, a brand query must return that brand's products, and filters must hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from gateway.errors import InvalidInput
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.types import Candidate, SearchQuery, TextMatch
from tests.fixtures.stack import GatewayHandle
from vitrine.catalog import Product
from vitrine.filters import FieldFilter, matches
from vitrine.gateway.v1 import gateway_pb2 as pb


@pytest.mark.slow
async def test_lexical_search_finds_products_by_their_words(gateway_stack: GatewayHandle) -> None:
    target = gateway_stack.products["p000011"]
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text=target.title, top_k=5, text_match=pb.TEXT_MATCH_LEXICAL), timeout=30
    )
    assert resp.hits[0].product.id == target.id
    stages = {t.stage for t in resp.timings}
    assert "lexical" in stages and "embed_text" not in stages  # words need no model
    scores = [h.retrieval_score for h in resp.hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0

    brand = target.brand
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text=brand, top_k=100, text_match=pb.TEXT_MATCH_LEXICAL), timeout=30
    )
    same_brand = {p.id for p in gateway_stack.products.values() if p.brand == brand}
    assert same_brand <= {h.product.id for h in resp.hits}
    assert all(h.product.brand == brand for h in resp.hits[: len(same_brand)])


@pytest.mark.slow
async def test_lexical_search_keeps_only_what_the_filters_admit(gateway_stack: GatewayHandle) -> None:
    filters = (FieldFilter("category", ("Fashion",)), FieldFilter("price", max=120.0))
    text = "leather boots red"
    every = await gateway_stack.stub.Search(
        pb.SearchRequest(text=text, top_k=100, text_match=pb.TEXT_MATCH_LEXICAL), timeout=30
    )
    filtered = await gateway_stack.stub.Search(
        pb.SearchRequest(
            text=text,
            top_k=100,
            text_match=pb.TEXT_MATCH_LEXICAL,
            filters=[pb.Filter(field="category", any_of=["Fashion"]), pb.Filter(field="price", max=120.0)],
        ),
        timeout=30,
    )
    products = gateway_stack.products
    expected = [h.product.id for h in every.hits if matches(products[h.product.id], filters)]
    assert [h.product.id for h in filtered.hits] == expected and expected


class _Words:
    """A catalog searched by words only; records what it was asked."""

    def __init__(self, lexical: bool) -> None:
        self.calls: list[str] = []
        if lexical:
            self.search_text = self._search_text

    async def _search_text(
        self, space: str, texts: Sequence[str], k: int, filters: Sequence[FieldFilter], timeout: float | None,
        prefix: bool = False,
    ) -> list[list[Candidate]]:  # fmt: skip
        self.calls.append(f"text:{space}:{texts[0]}")
        product = Product(id="w1", title=texts[0])
        return [[Candidate("w1", 7.5, product)]]

    async def search(self, *args: object) -> list[list[Candidate]]:
        raise AssertionError("no vector space is searched in lexical mode")


class _NoEmbedder:
    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        raise AssertionError("lexical mode embeds nothing")

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        raise AssertionError("no image")


async def test_lexical_mode_embeds_nothing_and_needs_a_lexical_index() -> None:
    words = _Words(lexical=True)
    pipeline = Pipeline(_NoEmbedder(), words, None, PipelineSettings())  # type: ignore[arg-type]
    result = await pipeline.search(SearchQuery(text="red boots", text_match=TextMatch.LEXICAL))
    assert [h.product.id for h in result.hits] == ["w1"] and result.hits[0].retrieval_score == 7.5
    assert words.calls == ["text:lexical:red boots"] and "lexical" in result.timings
    without = Pipeline(_NoEmbedder(), _Words(lexical=False), None, PipelineSettings())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="lexical space"):
        await without.search(SearchQuery(text="red boots", text_match=TextMatch.LEXICAL))
