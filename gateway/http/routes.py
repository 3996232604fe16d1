"""The HTTP/JSON routes: JSON (or a form) in, plain values to ``gateway.calls``, JSON out; nothing else.

Reads and writes are two routers so the API-key scope of every route is where it is declared
(``gateway.http.app`` includes each with its scope's key check when keys are configured).
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import TypeAdapter, ValidationError

from gateway.calls import Calls, RecommendArgs, SearchArgs
from gateway.errors import InvalidInput
from gateway.events import Rejected, parse_event
from gateway.http.models import (
    MAX_EVENTS,
    CatalogOut,
    DeleteOut,
    ErrorOut,
    EventErrorOut,
    EventsIn,
    EventsOut,
    FilterIn,
    ItemErrorOut,
    ProductOut,
    ProductsOut,
    RecommendationOut,
    RecommendOut,
    SearchIn,
    SearchOut,
    ServingOut,
    SimilarIn,
    SimilarOut,
    UpsertIn,
    UpsertOut,
    decode_base64,
    describe_validation,
    filters_in,
    hits_out,
    timings_out,
)
from gateway.recommend import MAX_RECOMMEND
from gateway.types import MAX_ID_CHARS, MAX_IDS, MAX_TOP_K, SearchResult
from gateway.upserts import UpsertItem
from vitrine.events import Event
from vitrine.filters import FieldFilter

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 429, 503, 504)
}
reads = APIRouter(prefix="/v1", responses=ERRORS)
writes = APIRouter(prefix="/v1", responses=ERRORS)


@dataclass(frozen=True)
class Served:
    """What the routes call, kept on ``app.state.served``: the call layer and the budget of a call
    (HTTP carries no deadline, so every call gets the gateway's default)."""

    calls: Calls
    timeout: float


def served(request: Request) -> Served:
    state: Served = request.app.state.served
    return state


Api = Annotated[Served, Depends(served)]
ProductId = Annotated[str, Path(json_schema_extra={"minLength": 1, "maxLength": MAX_ID_CHARS})]
Ids = Annotated[
    list[str],
    Query(
        alias="id",
        description=f"product ids, 1..{MAX_IDS}",
        json_schema_extra={"minItems": 1, "maxItems": MAX_IDS, "items": {"type": "string", "minLength": 1}},
    ),
]
_FILTERS = TypeAdapter(list[FilterIn])


def parse_filters(raw: str) -> tuple[FieldFilter, ...]:
    """Filters given as a JSON array in a form field or query parameter."""
    if not raw.strip():
        return ()
    try:
        return filters_in(_FILTERS.validate_json(raw))
    except ValidationError as exc:
        raise InvalidInput(f"filters: {describe_validation(exc.errors(), 'the value')}") from None


def search_out(result: SearchResult) -> SearchOut:
    return SearchOut(
        hits=hits_out(result.hits),
        timings=timings_out(result.timings),
        text_truncated=result.text_truncated,
        reranked=result.reranked,
    )


@reads.post("/search", response_model=SearchOut, summary="Text, image or hybrid search (JSON)")
async def search(body: SearchIn, api: Api) -> SearchOut:
    return search_out(await api.calls.search(body.plain(), api.timeout))


@reads.post("/search/upload", response_model=SearchOut, summary="Search with an uploaded photo (multipart)")
async def search_upload(
    api: Api,
    image: Annotated[UploadFile | None, File(description="JPEG/PNG/WebP photo")] = None,
    text: Annotated[str, Form()] = "",
    image_weight: Annotated[float | None, Form(json_schema_extra={"minimum": 0.0, "maximum": 1.0})] = None,
    top_k: Annotated[int | None, Form(json_schema_extra={"minimum": 0, "maximum": MAX_TOP_K})] = None,
    rerank: Annotated[bool, Form()] = False,
    rerank_depth: Annotated[int | None, Form(json_schema_extra={"minimum": 0})] = None,
    text_match: Annotated[str, Form()] = "",
    filters: Annotated[str, Form(description="JSON array of filters, as in /v1/search")] = "",
) -> SearchOut:
    args = SearchArgs(
        text=text,
        image=await image.read() if image is not None else b"",
        image_weight=image_weight,
        top_k=top_k,
        filters=parse_filters(filters),
        rerank=rerank,
        rerank_depth=rerank_depth,
        text_match=text_match,
    )
    return search_out(await api.calls.search(args, api.timeout))


@reads.post(
    "/products/{product_id}/similar", response_model=SimilarOut, summary="Neighbours by image and title"
)
async def similar(product_id: ProductId, api: Api, body: SimilarIn | None = None) -> SimilarOut:
    body = body or SimilarIn.model_validate({})
    result = await api.calls.similar(product_id, body.top_k, filters_in(body.filters), api.timeout)
    return SimilarOut(
        by_image=hits_out(result.by_image),
        by_title=hits_out(result.by_title),
        timings=timings_out(result.timings),
    )


@reads.get(
    "/serving",
    response_model=ServingOut,
    summary="The model versions serving, and whether searches should re-rank by default (and why)",
)
async def serving(api: Api) -> ServingOut:
    return ServingOut.of(await api.calls.serving(api.timeout))


@reads.get("/catalog", response_model=CatalogOut, summary="How many products the catalog holds now")
async def catalog(api: Api) -> CatalogOut:
    return CatalogOut(products=await api.calls.catalog_size(api.timeout))


@reads.get("/products/{product_id}", response_model=ProductOut, summary="One stored product")
async def get_product(product_id: ProductId, api: Api) -> ProductOut:
    return ProductOut.of((await api.calls.get_products([product_id], api.timeout))[0])


@reads.get(
    "/products", response_model=ProductsOut, summary="Stored products by id (NOT_FOUND if any is unknown)"
)
async def get_products(ids: Ids, api: Api) -> ProductsOut:
    return ProductsOut(products=[ProductOut.of(p) for p in await api.calls.get_products(ids, api.timeout)])


@reads.get(
    "/products/{product_id}/image",
    response_class=FileResponse,
    summary="The product's image, from the configured image roots only",
    responses={200: {"content": {"image/*": {}}}},
)
async def product_image(product_id: ProductId, api: Api) -> Response:
    path = await api.calls.product_image(product_id, api.timeout)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=mime, headers={"x-content-type-options": "nosniff"})


@writes.put("/products", response_model=UpsertOut, summary="Insert or replace products by id")
async def upsert(body: UpsertIn, api: Api) -> UpsertOut:
    items = []
    for item in body.items:
        product = item.product.plain()
        try:
            items.append(UpsertItem(product, image=decode_base64(item.image_base64, "image_base64")))
        except InvalidInput as exc:  # reported at its position, like any bad item
            items.append(UpsertItem(product, error=exc))
    upserted, errors = await api.calls.upsert_products(items, lambda: api.timeout)
    return UpsertOut(upserted=upserted, errors=[ItemErrorOut.of(e) for e in errors])


@writes.delete("/products/{product_id}", response_model=DeleteOut, summary="Delete one product")
async def delete_product(product_id: ProductId, api: Api) -> DeleteOut:
    deleted, missing = await api.calls.delete_products([product_id], api.timeout)
    return DeleteOut(deleted=deleted, not_found=missing)


@writes.delete(
    "/products", response_model=DeleteOut, summary="Delete products by id (unknown ids are listed)"
)
async def delete_products(ids: Ids, api: Api) -> DeleteOut:
    deleted, missing = await api.calls.delete_products(ids, api.timeout)
    return DeleteOut(deleted=deleted, not_found=missing)


@writes.post(
    "/events",
    response_model=EventsOut,
    summary=f"Record shopper events (idempotent by id; at most {MAX_EVENTS} per call)",
)
async def record_events(body: EventsIn, api: Api) -> EventsOut:
    async def events() -> AsyncIterator[Event | Rejected]:
        for e in body.events:
            yield parse_event(**e.model_dump())

    recorded, rejected = await api.calls.record_events(events(), lambda: api.timeout)
    return EventsOut(
        recorded=recorded,
        errors=[
            EventErrorOut(index=r.index, event_id=r.event_id, code=r.code, message=r.message)
            for r in rejected
        ],
    )


@reads.get("/recommendations", response_model=RecommendOut, summary="Recommendations for a shopper")
async def recommendations(
    api: Api,
    user_id: str = "",
    top_k: Annotated[int | None, Query(json_schema_extra={"minimum": 0, "maximum": MAX_RECOMMEND})] = None,
    context_item_id: str = "",
    exclude_seen: bool = True,
    diversity: Annotated[float | None, Query(json_schema_extra={"minimum": 0.0, "maximum": 1.0})] = None,
    filters: Annotated[str, Query(description="JSON array of filters, as in /v1/search")] = "",
) -> RecommendOut:
    args = RecommendArgs(
        user_id=user_id,
        top_k=top_k,
        context_item=context_item_id,
        filters=parse_filters(filters),
        exclude_seen=exclude_seen,
        diversity=diversity,
    )
    result = await api.calls.recommend(args, api.timeout)
    return RecommendOut(
        hits=[RecommendationOut.of(r) for r in result.items],
        strategy=result.strategy,
        model_version=result.model_version,
        timings=timings_out(result.timings),
    )
