"""Each gateway scenario as one request built from the query data: the Locust users and the open-loop
generator send exactly the same traffic, so their figures are comparable."""

from __future__ import annotations

import random
from typing import Any

from loadtest.data import FilterSpec, QueryData
from vitrine.gateway.v1 import gateway_pb2 as pb

SEARCH = "Search"
SIMILAR = "SimilarItems"
RECOMMEND = "Recommend"
DEMO_SHOPPERS = 1000
"""Recommend draws shoppers from the demo history's ids (``u00000``...); unknown ones get trending items."""


def filters(specs: list[FilterSpec]) -> list[pb.Filter]:
    out = []
    for spec in specs:
        message = pb.Filter(field=spec.field, any_of=list(spec.any_of))
        if spec.min is not None:
            message.min = spec.min
        if spec.max is not None:
            message.max = spec.max
        out.append(message)
    return out


def build(scenario: str, data: QueryData, rng: random.Random, top_k: int) -> tuple[str, Any]:
    """``(method, request)`` for one call of ``scenario`` (a name of ``GATEWAY_SCENARIOS``)."""
    if scenario == "similar":
        return SIMILAR, pb.SimilarItemsRequest(id=data.product_id(rng), top_k=top_k)
    if scenario == "recommend":
        return RECOMMEND, pb.RecommendRequest(user_id=f"u{rng.randrange(DEMO_SHOPPERS):05d}", top_k=top_k)
    if scenario == "text":
        request = pb.SearchRequest(text=data.text(rng))
    elif scenario in ("text_rerank10", "text_rerank50"):
        depth = 10 if scenario == "text_rerank10" else 50
        request = pb.SearchRequest(text=data.text(rng), rerank=True, rerank_depth=depth)
    elif scenario == "image":
        request = pb.SearchRequest(image=data.image(rng))
    elif scenario == "hybrid":
        request = pb.SearchRequest(text=data.text(rng), image=data.image(rng), image_weight=0.5)
    elif scenario == "filtered":
        request = pb.SearchRequest(text=data.text(rng), filters=filters(data.filters(rng)))
    else:
        raise ValueError(f"unknown gateway scenario {scenario!r}")
    request.top_k = top_k
    return SEARCH, request
