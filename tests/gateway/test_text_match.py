"""The text modes end to end: MiniLM finds a product by its own words, and every fused mode returns the
gateway's fusion of the single-space lists it is made of (a real Triton with the tiny MiniLM, a real
index service with its lexical space)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidInput
from gateway.pipeline import PipelineSettings, fuse
from gateway.text_match import QUERY_TEXT, TextWeights, servable_spaces, text_spaces
from gateway.types import Candidate, Fusion, TextMatch
from tests.fixtures.stack import GatewayHandle
from vitrine.catalog import Product
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.items import IMAGE, LEXICAL, MINILM, TITLE, sentence_text

MODE = {
    TextMatch.IMAGE: pb.TEXT_MATCH_IMAGE,
    TextMatch.TITLE: pb.TEXT_MATCH_TITLE,
    TextMatch.LEXICAL: pb.TEXT_MATCH_LEXICAL,
    TextMatch.MINILM: pb.TEXT_MATCH_MINILM,
    TextMatch.LEXICAL_MINILM: pb.TEXT_MATCH_LEXICAL_MINILM,
    TextMatch.ALL: pb.TEXT_MATCH_ALL,
}
SINGLE = {
    IMAGE: TextMatch.IMAGE,
    TITLE: TextMatch.TITLE,
    LEXICAL: TextMatch.LEXICAL,
    MINILM: TextMatch.MINILM,
}


def test_fused_modes_weigh_their_signals() -> None:
    weights = TextWeights(title_weight=0.25, lexical_weight=3.0, minilm_weight=1.0, clip_weight=0.0)
    assert text_spaces(TextMatch.LEXICAL_MINILM, weights, 1.0) == [
        (LEXICAL, QUERY_TEXT, 0.75),
        (MINILM, "minilm", 0.25),
    ]
    assert [s[0] for s in text_spaces(TextMatch.ALL, weights, 0.5)] == [LEXICAL, MINILM]  # CLIP weighs 0
    full = text_spaces(TextMatch.ALL, TextWeights(title_weight=0.25), 1.0)
    assert [(s, round(w, 4)) for s, _, w in full] == [
        (LEXICAL, 0.3333),
        (MINILM, 0.3333),
        (IMAGE, 0.25),
        (TITLE, 0.0833),
    ]


async def _search(stack: GatewayHandle, text: str, match: TextMatch, k: int = 10) -> list[pb.SearchHit]:
    resp = await stack.stub.Search(pb.SearchRequest(text=text, top_k=k, text_match=MODE[match]), timeout=30)
    return list(resp.hits)


@pytest.mark.slow
async def test_minilm_finds_a_product_by_its_own_words(gateway_stack: GatewayHandle) -> None:
    product: Product = gateway_stack.products["p000009"]
    hits = await _search(gateway_stack, sentence_text(product), TextMatch.MINILM, 3)
    assert hits[0].product.id == "p000009"
    assert hits[0].retrieval_score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("match", [TextMatch.LEXICAL_MINILM, TextMatch.ALL])
async def test_a_fused_mode_is_the_fusion_of_its_spaces(
    gateway_stack: GatewayHandle, match: TextMatch
) -> None:
    settings = PipelineSettings()
    product = gateway_stack.products["p000004"]
    text = f"{product.brand} {product.attributes['color']} {product.category[-1]}"
    lists = {}
    for space, mode in SINGLE.items():
        lists[space] = [
            Candidate(h.product.id, h.retrieval_score, product)
            for h in await _search(gateway_stack, text, mode)
        ]
    assert lists[LEXICAL] and lists[MINILM]
    expected_lists = []
    for space, which, weight in text_spaces(match, settings.weights(), 1.0):
        ranked = lists[space]
        if settings.fusion == Fusion.WEIGHTED and which == QUERY_TEXT:
            ranked = [Candidate(c.id, c.score / ranked[0].score, c.product) for c in ranked]
        expected_lists.append((weight, ranked))
    expected = [c.id for c in fuse(expected_lists, settings.fusion, settings.rrf_k)[:10]]
    got = [h.product.id for h in await _search(gateway_stack, text, match)]
    assert got == expected


def test_the_default_falls_back_to_clip_where_its_parts_are_missing() -> None:
    weights = TextWeights()
    clip = text_spaces(TextMatch.FUSION, weights, 1.0)
    assert servable_spaces(None, TextMatch.LEXICAL_MINILM, weights, 1.0, {QUERY_TEXT}) == clip
    assert servable_spaces(None, TextMatch.LEXICAL_MINILM, weights, 1.0, set()) == text_spaces(
        TextMatch.LEXICAL_MINILM, weights, 1.0
    )
    with pytest.raises(InvalidInput, match="needs the MiniLM sentence encoder"):
        servable_spaces(TextMatch.MINILM, TextMatch.FUSION, weights, 1.0, {"minilm"})
