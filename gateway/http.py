"""The HTTP/JSON API and the demo page, served by the gateway process next to gRPC.

FastAPI on uvicorn, run as a task on the gateway's own event loop (``uvicorn.Server.serve``): the
pipeline's gRPC and Triton channels belong to that loop, so a second loop or thread would need a second
set of clients; FastAPI derives the OpenAPI document and request validation from the same pydantic
models, so the schema cannot drift from the code. (aiohttp's ``AppRunner`` would also run in-loop, with
a hand-kept schema.) uvicorn's signal capture is switched off: the process's signals belong to
``gateway.__main__``, which stops both servers.

Nothing here decides anything about a call: ``gateway.requests`` builds queries, stores products, admits
calls, counts them under the gRPC method names and turns failures into a gRPC code and message, which
this module reports as ``errors.HTTP_STATUS[code]`` and ``{"error": {"code": NAME, "message": ...}}``.
Framework-level refusals (malformed JSON, wrong types, unknown routes, oversized bodies) use the same
shape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import mimetypes
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import ApiKeys
from gateway.auth import Scope as KeyScope
from gateway.config import GatewayConfig
from gateway.errors import HTTP_STATUS, InvalidInput, NotFound
from gateway.events import EventIngest, parse_event
from gateway.messages import product_from_pb
from gateway.pipeline import FieldFilter, Hit, Pipeline, SearchQuery
from gateway.recommend import Recommender, recommend_query
from gateway.requests import (
    DEFAULT_IMAGE_WEIGHT,
    CallGate,
    Failure,
    UpsertItem,
    search_query,
    top_k_or_default,
    upsert_products,
)
from vitrine.catalog import Product
from vitrine.contracts import MAX_IMAGE_BYTES
from vitrine.errors import bounded
from vitrine.gateway.v1 import gateway_pb2 as pb

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + (1 << 20)
"""The largest accepted image, base64-encoded, plus room for the rest of a request."""
MAX_UPSERT_ITEMS = 1000
_PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"


# ---- wire models ---------------------------------------------------------------------------------------


MAX_EVENTS = 1000
"""Events one POST /v1/events may carry (gRPC streams have no limit)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterIn(_Strict):
    field: str = Field(
        description="category (any level of the path), brand, price, or a configured attribute"
    )
    any_of: list[str] = Field(default=[], description="keep products whose value is any of these")
    min: float | None = Field(default=None, description="inclusive lower bound (price)")
    max: float | None = Field(default=None, description="inclusive upper bound (price)")


class SearchIn(_Strict):
    text: str = ""
    image_base64: str = Field(default="", description="JPEG/PNG/WebP bytes, base64 (a data: URL is accepted)")
    image_weight: float | None = Field(
        default=None,
        description=f"hybrid weight of the image side in [0, 1] (default {DEFAULT_IMAGE_WEIGHT})",
    )
    top_k: int | None = Field(default=None, description="results, 1..100 (absent or 0: 10)")
    filters: list[FilterIn] = []
    rerank: bool = Field(default=False, description="re-score candidates with the cross-encoder (needs text)")
    rerank_depth: int | None = Field(
        default=None, description="candidates re-scored, top_k..200 (default 50)"
    )
    text_match: str = Field(default="", description="image, title or fusion; empty: the gateway's default")


class SimilarIn(_Strict):
    top_k: int | None = Field(default=None, description="neighbours per space, 1..100 (absent or 0: 10)")
    filters: list[FilterIn] = []


class ProductIn(_Strict):
    id: str
    title: str = ""
    description: str = ""
    category: list[str] = Field(default=[], description='path from the root, e.g. ["Fashion", "Shoes"]')
    brand: str = ""
    price: float = 0.0
    image_uri: str = Field(default="", description="where the image lives, relative to an image root")
    attributes: dict[str, str] = {}


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


class HitOut(BaseModel):
    product: ProductOut
    retrieval_score: float
    rerank_score: float | None = None


class StageTimingOut(BaseModel):
    stage: str
    ms: float


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


class UpsertOut(BaseModel):
    upserted: int
    errors: list[ItemErrorOut]


class DeleteOut(BaseModel):
    deleted: int
    not_found: list[str]


class EventIn(_Strict):
    event_id: str = Field(description="client-chosen, unique: recording it twice stores it once")
    user_id: str
    session_id: str = ""
    item_id: str = Field(description="a stored product's id")
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


class RecommendOut(BaseModel):
    hits: list[RecommendationOut]
    strategy: str = Field(description="personal, session (context item neighbours) or trending")
    model_version: int
    timings: list[StageTimingOut]


class HealthOut(BaseModel):
    status: str = Field(description="SERVING or NOT_SERVING, as grpc.health.v1 reports it")
    dependencies: dict[str, bool]


class ErrorDetail(BaseModel):
    code: str = Field(description="the gRPC status code name the gRPC API would answer")
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


_FILTERS = TypeAdapter(list[FilterIn])
_BEARER = HTTPBearer(auto_error=False, description="the gateway's API key, when it requires one")


# ---- conversions ---------------------------------------------------------------------------------------


def product_out(p: Product) -> ProductOut:
    return ProductOut(
        id=p.id,
        title=p.title,
        description=p.description,
        category=list(p.category),
        brand=p.brand,
        price=p.price,
        image_uri=p.image_uri,
        attributes=dict(p.attributes),
        image_url=f"/v1/products/{quote(p.id, safe='')}/image",
    )


def hits_out(hits: Sequence[Hit]) -> list[HitOut]:
    return [
        HitOut(product=product_out(h.product), retrieval_score=h.retrieval_score, rerank_score=h.rerank_score)
        for h in hits
    ]


def timings_out(timings: Mapping[str, float]) -> list[StageTimingOut]:
    return [StageTimingOut(stage=k, ms=v) for k, v in timings.items()]


def filters_in(filters: Sequence[FilterIn]) -> tuple[FieldFilter, ...]:
    return tuple(FieldFilter(f.field, tuple(f.any_of), f.min, f.max) for f in filters)


def product_in(p: ProductIn) -> Product:
    """Through the protobuf message, so both APIs normalise a product the same way."""
    return product_from_pb(pb.Product(**p.model_dump()))  # the fields are pb.Product's


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


def image_file(ref: str, roots: Sequence[Path]) -> Path | None:
    """The file behind an image reference, only if it lies inside one of ``roots`` (symlinks resolved,
    so neither ``..`` nor a link leads out) and looks like an image."""
    if not ref or not roots:
        return None
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif "://" in ref:
        return None
    mime, _ = mimetypes.guess_type(ref)
    if not (mime or "").startswith("image/"):
        return None
    for root in roots:
        try:
            base = root.resolve()
            candidate = (base / ref).resolve()
        except (OSError, ValueError, RuntimeError):
            continue
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    return None


def error_response(code: grpc.StatusCode, message: str, status: int | None = None) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else None
    return JSONResponse(
        {"error": {"code": code.name, "message": bounded(message)}},
        status_code=status or HTTP_STATUS.get(code, 500),
        headers=headers,
    )


_CODE_OF_HTTP = {405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED} | {
    status: code for code, status in reversed(HTTP_STATUS.items())
}


class BodyLimit:
    """413 for a body above ``limit`` bytes: refused from its Content-Length before it is read, or as
    soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"request body is larger than {self.limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            exc = self._too_large()
            await error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc.detail), 413)(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


# ---- the application -----------------------------------------------------------------------------------


def create_app(
    config: GatewayConfig,
    pipeline: Pipeline,
    gate: CallGate,
    health: Callable[[], Mapping[str, bool]],
    recommender: Recommender | None = None,
    event_ingest: EventIngest | None = None,
) -> FastAPI:
    roots = tuple(Path(r) for r in config.image_roots)
    timeout = config.default_timeout_s
    app = FastAPI(
        title="Vitrine gateway",
        version="1",
        description=(
            "Text, image and hybrid product search with filters and re-ranking, similar items, and the "
            "catalog, over HTTP/JSON. Same operations, rules and messages as the gRPC API "
            "(vitrine.gateway.v1.ProductSearch); a failure answers "
            '`{"error": {"code": "<gRPC code name>", "message": "..."}}`.'
        ),
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the page must work offline
        redoc_url=None,
    )

    keys = ApiKeys.from_config(config.api_key, config.api_keys, config.api_keys_file)

    def require(scope: KeyScope) -> list[Any]:
        """The key check of ``gateway.auth`` for every route of a router; none when no key is set."""

        async def require_key(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        ) -> None:
            given = credentials.credentials if credentials is not None else ""
            refusal = keys.check_scope(given, scope, f"{request.method} {request.url.path}")
            if refusal is not None:
                raise Failure(refusal.code, str(refusal))

        return [Depends(require_key)] if keys.enabled else []

    errors_doc: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 429, 503, 504)
    }
    # Reads and writes are two routers so each route's scope is where it is declared.
    api = APIRouter(prefix="/v1", dependencies=require(KeyScope.READ), responses=errors_doc)
    writes = APIRouter(prefix="/v1", dependencies=require(KeyScope.WRITE), responses=errors_doc)

    async def run_search(build: Callable[[], SearchQuery]) -> SearchOut:
        """``build`` runs inside the gate, so a refused query is counted and reported like any failure."""
        async with gate.call("Search"):
            result = await pipeline.search(build(), timeout)
            gate.observe(result.timings)
            return SearchOut(
                hits=hits_out(result.hits),
                timings=timings_out(result.timings),
                text_truncated=result.text_truncated,
                reranked=result.reranked,
            )
        raise AssertionError("unreachable")  # pragma: no cover - the gate raises Failure

    @api.post("/search", response_model=SearchOut, summary="Text, image or hybrid search (JSON)")
    async def search(body: SearchIn) -> SearchOut:
        return await run_search(
            lambda: search_query(
                text=body.text,
                image=decode_base64(body.image_base64, "image_base64"),
                image_weight=body.image_weight,
                top_k=body.top_k,
                filters=filters_in(body.filters),
                rerank=body.rerank,
                rerank_depth=body.rerank_depth,
                text_match=body.text_match,
            )
        )

    @api.post("/search/upload", response_model=SearchOut, summary="Search with an uploaded photo (multipart)")
    async def search_upload(
        image: Annotated[UploadFile | None, File(description="JPEG/PNG/WebP photo")] = None,
        text: Annotated[str, Form()] = "",
        image_weight: Annotated[float | None, Form()] = None,
        top_k: Annotated[int | None, Form()] = None,
        rerank: Annotated[bool, Form()] = False,
        rerank_depth: Annotated[int | None, Form()] = None,
        text_match: Annotated[str, Form()] = "",
        filters: Annotated[str, Form(description="JSON array of filters, as in /v1/search")] = "",
    ) -> SearchOut:
        data = await image.read() if image is not None else b""
        return await run_search(
            lambda: search_query(
                text=text,
                image=data,
                image_weight=image_weight,
                top_k=top_k,
                filters=_parse_filters(filters),
                rerank=rerank,
                rerank_depth=rerank_depth,
                text_match=text_match,
            )
        )

    @api.post(
        "/products/{product_id}/similar", response_model=SimilarOut, summary="Neighbours by image and title"
    )
    async def similar(product_id: str, body: SimilarIn | None = None) -> SimilarOut:
        body = body or SimilarIn()
        async with gate.call("SimilarItems"):
            result = await pipeline.similar(
                product_id, top_k_or_default(body.top_k), filters_in(body.filters), timeout
            )
            gate.observe(result.timings)
            return SimilarOut(
                by_image=hits_out(result.by_image),
                by_title=hits_out(result.by_title),
                timings=timings_out(result.timings),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    @api.get("/products/{product_id}", response_model=ProductOut, summary="One stored product")
    async def get_product(product_id: str) -> ProductOut:
        async with gate.call("GetProducts"):
            products = await pipeline.get([product_id], timeout)
            return product_out(products[0])
        raise AssertionError("unreachable")  # pragma: no cover

    @api.get(
        "/products", response_model=ProductsOut, summary="Stored products by id (NOT_FOUND if any is unknown)"
    )
    async def get_products(ids: Annotated[list[str], Query(alias="id")]) -> ProductsOut:
        async with gate.call("GetProducts"):
            products = await pipeline.get(ids, timeout)
            return ProductsOut(products=[product_out(p) for p in products])
        raise AssertionError("unreachable")  # pragma: no cover

    @writes.put("/products", response_model=UpsertOut, summary="Insert or replace products by id")
    async def upsert(body: UpsertIn) -> UpsertOut:
        async with gate.call("UpsertProducts"):
            items = []
            for item in body.items:
                product = product_in(item.product)
                try:
                    items.append(UpsertItem(product, image=decode_base64(item.image_base64, "image_base64")))
                except InvalidInput as exc:
                    items.append(UpsertItem(product, error=exc))
            upserted, errors = await upsert_products(pipeline, items, config.upsert_batch, lambda: timeout)
            return UpsertOut(
                upserted=upserted,
                errors=[
                    ItemErrorOut(index=e.index, id=e.id, code=e.code.name, message=e.message) for e in errors
                ],
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_delete(ids: list[str]) -> DeleteOut:
        async with gate.call("DeleteProducts"):
            deleted, missing = await pipeline.delete(ids, timeout)
            return DeleteOut(deleted=deleted, not_found=missing)
        raise AssertionError("unreachable")  # pragma: no cover

    @writes.delete("/products/{product_id}", response_model=DeleteOut, summary="Delete one product")
    async def delete_product(product_id: str) -> DeleteOut:
        return await run_delete([product_id])

    @writes.delete(
        "/products", response_model=DeleteOut, summary="Delete products by id (unknown ids are listed)"
    )
    async def delete_products(ids: Annotated[list[str], Query(alias="id")]) -> DeleteOut:
        return await run_delete(ids)

    @api.get(
        "/products/{product_id}/image",
        response_class=FileResponse,
        summary="The product's image, from the configured image roots only",
        responses={200: {"content": {"image/*": {}}}},
    )
    async def product_image(product_id: str) -> Response:
        async with gate.call("GetProductImage"):
            product = (await pipeline.get([product_id], timeout))[0]
            path = await asyncio.to_thread(image_file, product.image_uri, roots)
            if path is None:
                raise NotFound(f"product {product_id!r} has no image under the gateway's image roots")
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return FileResponse(path, media_type=mime, headers={"x-content-type-options": "nosniff"})
        raise AssertionError("unreachable")  # pragma: no cover

    @writes.post("/events", response_model=EventsOut, summary="Record shopper events (idempotent by id)")
    async def record_events(body: EventsIn) -> EventsOut:
        async with gate.call("RecordEvents"):
            if event_ingest is None:
                raise Failure(grpc.StatusCode.UNIMPLEMENTED, "this gateway records no events")

            async def events() -> AsyncIterator[Any]:
                for e in body.events:
                    yield parse_event(**e.model_dump())

            recorded, rejected = await event_ingest.record(events(), lambda: timeout)
            gate.metrics.events_recorded.inc(recorded)
            return EventsOut(
                recorded=recorded,
                errors=[
                    EventErrorOut(index=r.index, event_id=r.event_id, code=r.code, message=r.message)
                    for r in rejected
                ],
            )
        raise AssertionError("unreachable")  # pragma: no cover

    @api.get("/recommendations", response_model=RecommendOut, summary="Recommendations for a shopper")
    async def recommendations(
        user_id: str = "",
        top_k: int | None = None,
        context_item_id: str = "",
        exclude_seen: bool = True,
        diversity: float | None = None,
        filters: Annotated[str, Query(description="JSON array of filters, as in /v1/search")] = "",
    ) -> RecommendOut:
        async with gate.call("Recommend"):
            if recommender is None:
                raise Failure(grpc.StatusCode.UNIMPLEMENTED, "this gateway serves no recommendations")
            query = recommend_query(
                user_id=user_id,
                top_k=top_k,
                context_item=context_item_id,
                filters=_parse_filters(filters),
                exclude_seen=exclude_seen,
                diversity=diversity,
            )
            result = await recommender.recommend(query, timeout)
            gate.observe(result.timings)
            gate.metrics.recommendations.labels(result.strategy).inc()
            return RecommendOut(
                hits=[
                    RecommendationOut(
                        product=product_out(r.product), retrieval_score=r.score, reason=r.reason
                    )
                    for r in result.items
                ],
                strategy=result.strategy,
                model_version=result.model_version,
                timings=timings_out(result.timings),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    app.include_router(api)
    app.include_router(writes)

    @app.get("/healthz", response_model=HealthOut, summary="SERVING when Triton and the index both serve")
    async def healthz() -> JSONResponse:
        deps = dict(health())
        serving = bool(deps) and all(deps.values())
        body = HealthOut(status="SERVING" if serving else "NOT_SERVING", dependencies=deps)
        return JSONResponse(body.model_dump(), status_code=200 if serving else 503)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"content-security-policy": _PAGE_CSP, "cache-control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(Failure)
    async def on_failure(request: Request, exc: Failure) -> JSONResponse:
        return error_response(exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_HTTP.get(exc.status_code, grpc.StatusCode.UNKNOWN)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(code, message, exc.status_code)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    _drop_framework_422(app)
    return app


def _parse_filters(raw: str) -> tuple[FieldFilter, ...]:
    if not raw.strip():
        return ()
    try:
        return filters_in(_FILTERS.validate_json(raw))
    except ValidationError as exc:
        raise InvalidInput(f"filters: {describe_validation(exc.errors(), 'the value')}") from None


def _drop_framework_422(app: FastAPI) -> None:
    """Validation failures answer 400 with the error shape; the schema should not promise FastAPI's 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---- the server --------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so port 0 resolves before the server starts."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _InLoopServer:
    """uvicorn's server minus its signal handlers (the gateway's process owns SIGINT/SIGTERM)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


class HttpServer:
    """The HTTP/JSON API and page on ``config.http_port`` (0 = a free one), HTTPS with the gRPC
    server's certificate and key when those are configured."""

    def __init__(
        self,
        config: GatewayConfig,
        pipeline: Pipeline,
        gate: CallGate,
        health: Callable[[], Mapping[str, bool]],
        recommender: Recommender | None = None,
        event_ingest: EventIngest | None = None,
    ) -> None:
        self.config = config
        self.app = create_app(config, pipeline, gate, health, recommender, event_ingest)
        self.port: int | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ready_timeout_s: float = 30.0) -> int:
        import uvicorn

        cfg = self.config
        tls = bool(cfg.tls_cert and cfg.tls_key)
        sock = _bind(cfg.host, cfg.http_port)
        self.port = int(sock.getsockname()[1])
        server_config = uvicorn.Config(
            self.app,
            host=cfg.host,
            port=self.port,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(max(1, cfg.grace_s)),
            ssl_certfile=cfg.tls_cert if tls else None,
            ssl_keyfile=cfg.tls_key if tls else None,
        )
        self._server = _InLoopServer(server_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout_s
        # uvicorn exposes readiness only as a flag; wait on it, bounded, and fail with the server's error.
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()
                raise RuntimeError("HTTP server stopped while starting")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"HTTP server not listening after {ready_timeout_s} s")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in progress finish (up to ``grace``), then close; safe twice."""
        if self._task is None:
            return
        self._server.should_exit = True
        wait = (self.config.grace_s if grace is None else grace) + 2.0
        try:
            await asyncio.wait_for(asyncio.shield(self._task), wait)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._task = None
