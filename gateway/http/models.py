"""The HTTP/JSON wire shapes, and their conversion from and to the gateway's plain values.

The schema states the limits the call layer enforces (``minimum``/``maximum``, ``minLength``, the
"text or image" rule), read from the same constants, so a client generated from ``/openapi.json``
builds requests the server accepts. The server still checks everything itself, with the messages both
APIs share: the schema describes, the call layer decides.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from gateway.calls import TEXT_MATCH_NAMES, SearchArgs
from gateway.errors import InvalidInput
from gateway.events import MAX_ID_CHARS as MAX_EVENT_ID_CHARS
from gateway.recommend import Recommendation
from gateway.serving_info import ServingInfo
from gateway.types import (
    DEFAULT_IMAGE_WEIGHT,
    DEFAULT_RERANK_DEPTH,
    DEFAULT_TOP_K,
    MAX_ID_CHARS,
    MAX_RERANK_DEPTH,
    MAX_TOP_K,
    Hit,
)
from gateway.upserts import ItemError
from vitrine.catalog import Product
from vitrine.contracts import MAX_TEXT_CHARS
from vitrine.filters import FieldFilter

MAX_UPSERT_ITEMS = 1000
"""Products one PUT /v1/products may carry (gRPC streams have no limit)."""
MAX_EVENTS = 1000
"""Events one POST /v1/events may carry (gRPC streams have no limit)."""
NOT_BLANK = r"\S"
"""A string with at least one non-space character (what "non-empty" means to the call layer)."""


def _limits(**keywords: Any) -> JsonDict:
    """JSON Schema keywords for the document only: pydantic does not enforce them, the call layer does
    (with the messages gRPC answers too)."""
    return keywords


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterIn(_Strict):
    field: str = Field(
        description="category (any level of the path), brand, price, or a configured attribute"
    )
    any_of: list[str] = Field(default=[], description="keep products whose value is any of these")
    min: float | None = Field(default=None, description="inclusive lower bound (price)")
    max: float | None = Field(default=None, description="inclusive upper bound (price)")

    def plain(self) -> FieldFilter:
        return FieldFilter(self.field, tuple(self.any_of), self.min, self.max)


def filters_in(filters: Sequence[FilterIn]) -> tuple[FieldFilter, ...]:
    return tuple(f.plain() for f in filters)


_TEXT_OR_IMAGE: JsonDict = {
    "anyOf": [
        {"required": ["text"], "properties": {"text": {"pattern": NOT_BLANK}}},
        {"required": ["image_base64"], "properties": {"image_base64": {"minLength": 1}}},
    ]
}


class SearchIn(_Strict):
    """A search needs text, an image, or both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_TEXT_OR_IMAGE)

    text: str = Field(default="", json_schema_extra=_limits(maxLength=MAX_TEXT_CHARS))
    image_base64: str = Field(default="", description="JPEG/PNG/WebP bytes, base64 (a data: URL is accepted)")
    image_weight: float | None = Field(
        default=None,
        description=f"hybrid weight of the image side in [0, 1] (default {DEFAULT_IMAGE_WEIGHT})",
        json_schema_extra=_limits(minimum=0.0, maximum=1.0),
    )
    top_k: int | None = Field(
        default=None,
        description=f"results, 1..{MAX_TOP_K} (absent or 0: {DEFAULT_TOP_K})",
        json_schema_extra=_limits(minimum=0, maximum=MAX_TOP_K),
    )
    filters: list[FilterIn] = []
    rerank: bool = Field(default=False, description="re-score candidates with the cross-encoder (needs text)")
    rerank_depth: int | None = Field(
        default=None,
        description=f"candidates re-scored, top_k..{MAX_RERANK_DEPTH} (default {DEFAULT_RERANK_DEPTH})",
        json_schema_extra=_limits(minimum=0, maximum=MAX_RERANK_DEPTH),
    )
    text_match: str = Field(
        default="",
        description=f"one of {', '.join(TEXT_MATCH_NAMES)}; empty: the gateway's default",
        json_schema_extra=_limits(enum=["", *TEXT_MATCH_NAMES]),
    )

    def plain(self) -> SearchArgs:
        return SearchArgs(
            text=self.text,
            image=decode_base64(self.image_base64, "image_base64"),
            image_weight=self.image_weight,
            top_k=self.top_k,
            filters=filters_in(self.filters),
            rerank=self.rerank,
            rerank_depth=self.rerank_depth,
            text_match=self.text_match,
        )


class SimilarIn(_Strict):
    top_k: int | None = Field(
        default=None,
        description=f"neighbours per space, 1..{MAX_TOP_K} (absent or 0: {DEFAULT_TOP_K})",
        json_schema_extra=_limits(minimum=0, maximum=MAX_TOP_K),
    )
    filters: list[FilterIn] = []


class ProductIn(_Strict):
    """A product as stored: the kernel's ``Product`` field for field."""

    id: str = Field(json_schema_extra=_limits(minLength=1, maxLength=MAX_ID_CHARS))
    title: str = Field(
        default="", description="required, not blank", json_schema_extra=_limits(pattern=NOT_BLANK)
    )
    description: str = ""
    category: list[str] = Field(default=[], description='path from the root, e.g. ["Fashion", "Shoes"]')
    brand: str = ""
    price: float = Field(default=0.0, json_schema_extra=_limits(minimum=0.0))
    image_uri: str = Field(default="", description="where the image lives, relative to an image root")
    attributes: dict[str, str] = {}

    def plain(self) -> Product:
        fields = self.model_dump() | {"id": self.id.strip(), "category": tuple(self.category)}
        return Product(**fields)


class UpsertItemIn(_Strict):
    product: ProductIn
    image_base64: str = Field(default="", description="the product's photo, base64")


class UpsertIn(_Strict):
    items: list[UpsertItemIn] = Field(max_length=MAX_UPSERT_ITEMS)


class ProductOut(BaseModel):
    id: str
    title: str
    description: str
    category: list[str]
    brand: str
    price: float
    image_uri: str
    attributes: dict[str, str]
    image_url: str = Field(description="this API's route to the product's image")

    @classmethod
    def of(cls, p: Product) -> ProductOut:
        return cls(**dataclasses.asdict(p), image_url=f"/v1/products/{quote(p.id, safe='')}/image")


class HitOut(BaseModel):
    product: ProductOut
    retrieval_score: float
    rerank_score: float | None = None


def hits_out(hits: Sequence[Hit]) -> list[HitOut]:
    return [
        HitOut(
            product=ProductOut.of(h.product), retrieval_score=h.retrieval_score, rerank_score=h.rerank_score
        )
        for h in hits
    ]


class StageTimingOut(BaseModel):
    stage: str
    ms: float


def timings_out(timings: Mapping[str, float]) -> list[StageTimingOut]:
    return [StageTimingOut(stage=k, ms=v) for k, v in timings.items()]


class SearchOut(BaseModel):
    hits: list[HitOut]
    timings: list[StageTimingOut]
    text_truncated: bool
    reranked: bool


class SimilarOut(BaseModel):
    by_image: list[HitOut]
    by_title: list[HitOut]
    timings: list[StageTimingOut]


class ProductsOut(BaseModel):
    products: list[ProductOut]


class ItemErrorOut(BaseModel):
    index: int
    id: str
    code: str
    message: str

    @classmethod
    def of(cls, e: ItemError) -> ItemErrorOut:
        return cls(index=e.index, id=e.id, code=e.code.name, message=e.message)


class UpsertOut(BaseModel):
    upserted: int
    errors: list[ItemErrorOut]


class DeleteOut(BaseModel):
    deleted: int
    not_found: list[str]


class EventIn(_Strict):
    """A shopper event: the kernel's ``Event`` field for field (``type`` by name)."""

    event_id: str = Field(
        description="client-chosen, unique: recording it twice stores it once",
        json_schema_extra=_limits(minLength=1, maxLength=MAX_EVENT_ID_CHARS),
    )
    user_id: str = Field(json_schema_extra=_limits(minLength=1))
    session_id: str = ""
    item_id: str = Field(description="a stored product's id", json_schema_extra=_limits(minLength=1))
    type: str = Field(description="view, click, favorite, cart, contact or purchase")
    ts: float = Field(default=0.0, description="Unix seconds; 0 = when the gateway receives it")
    device: str = ""
    query: str = ""


class EventsIn(_Strict):
    events: list[EventIn] = Field(max_length=MAX_EVENTS)


class EventErrorOut(BaseModel):
    index: int
    event_id: str
    code: str
    message: str


class EventsOut(BaseModel):
    recorded: int
    errors: list[EventErrorOut]


class RecommendationOut(HitOut):
    reason: str = Field(description='why it is recommended, e.g. "because you viewed ..."')

    @classmethod
    def of(cls, r: Recommendation) -> RecommendationOut:
        return cls(product=ProductOut.of(r.product), retrieval_score=r.score, reason=r.reason)


class RecommendOut(BaseModel):
    hits: list[RecommendationOut]
    strategy: str = Field(description="personal, session (context item neighbours) or trending")
    model_version: int
    timings: list[StageTimingOut]


class ServingOut(BaseModel):
    encoder_version: int = Field(description="the encoder version answering searches")
    reranker_version: int = Field(description="the cross-encoder version re-ranking when asked")
    reranker_weights: str = Field(
        description="the served cross-encoder's weights: pretrained, trained here, partial (random head), "
        "random or unknown"
    )
    rerank_by_default: bool = Field(
        description="whether a search should re-rank unless told otherwise: only with a cross-encoder "
        "trained for relevance (the demo page starts its switch from this; the API re-ranks only when asked)"
    )
    reason: str = Field(description="why, in words")

    @classmethod
    def of(cls, info: ServingInfo) -> ServingOut:
        d = info.rerank_default
        return cls(
            encoder_version=info.encoder_version,
            reranker_version=info.reranker_version,
            reranker_weights=d.weights,
            rerank_by_default=d.on,
            reason=d.reason,
        )


class CatalogOut(BaseModel):
    products: int = Field(description="products the catalog holds now (it grows while one is ingested)")


class HealthOut(BaseModel):
    status: str = Field(description="SERVING or NOT_SERVING, as grpc.health.v1 reports it")
    dependencies: dict[str, bool]


class ErrorDetail(BaseModel):
    code: str = Field(description="the gRPC status code name the gRPC API would answer")
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


def decode_base64(value: str, name: str) -> bytes:
    if not value:
        return b""
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid base64") from None


def describe_validation(errors: Sequence[Any], what: str = "request body") -> str:
    """Pydantic's complaints as one line: where, then what."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            parts.append(f"{what} is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
