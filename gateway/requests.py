"""A call's life whichever transport carries it: gRPC (``servicer``) and HTTP/JSON (``http``) both come here.

The transports only decode their wire format into plain values; everything the gateway decides about a
call lives here once: the checks and defaults that turn plain values into a pipeline call (text length,
the image header, ``text_match`` names, ``0`` meaning "the default"), per-item upsert handling, and the
admission limit, metrics and status translation around every call. So a rule cannot differ between
the two APIs, and an error reads the same on both (``Failure`` carries the gRPC code and message; gRPC
aborts with them, HTTP answers ``errors.HTTP_STATUS[code]`` with the same message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.clients import check_image_header
from gateway.errors import DependencyError, GatewayError, InvalidInput, Overloaded, status_of
from gateway.metrics import GatewayMetrics
from gateway.pipeline import (
    DEFAULT_RERANK_DEPTH,
    DEFAULT_TOP_K,
    FieldFilter,
    Pipeline,
    SearchQuery,
    TextMatch,
)
from vitrine.catalog import Product
from vitrine.contracts import MAX_TEXT_CHARS

log = logging.getLogger(__name__)

DEFAULT_IMAGE_WEIGHT = 0.5
TEXT_MATCH_NAMES = tuple(m.value for m in TextMatch)


class Failure(Exception):
    """A call failed with this status; the transport reports ``code`` and ``message`` as they are."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- checks and defaults ---------------------------------------------------------------------------


def check_image(image: bytes) -> None:
    """Header-only check (``vitrine.images``' rules) before an image costs a Triton round trip."""
    check_image_header(image)


def text_match_of(name: str | None) -> TextMatch | None:
    """A ``TextMatch`` from its name; empty means the gateway's configured default."""
    if not name:
        return None
    try:
        return TextMatch(name.lower())
    except ValueError:
        raise InvalidInput(
            f"unknown text_match {name[:40]!r}; one of {', '.join(TEXT_MATCH_NAMES)}"
        ) from None


def top_k_or_default(top_k: int | None) -> int:
    """0 or absent means the default (proto3 cannot tell an unset number from 0)."""
    return top_k or DEFAULT_TOP_K


def search_query(
    *,
    text: str = "",
    image: bytes = b"",
    image_weight: float | None = None,
    top_k: int | None = None,
    filters: Sequence[FieldFilter] = (),
    rerank: bool = False,
    rerank_depth: int | None = None,
    text_match: str | None = None,
) -> SearchQuery:
    """The pipeline's query from plain values, with the checks that need no pipeline state; the
    pipeline validates the rest (empty query, ranges, filter fields) when it runs."""
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    match = text_match_of(text_match)
    if image:
        check_image(image)
    return SearchQuery(
        text=text,
        image=image,
        image_weight=DEFAULT_IMAGE_WEIGHT if image_weight is None else image_weight,
        top_k=top_k_or_default(top_k),
        filters=tuple(filters),
        rerank=rerank,
        rerank_depth=rerank_depth or max(DEFAULT_RERANK_DEPTH, top_k or 0),
        text_match=match,
    )


# ---- upsert ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertItem:
    """One product to store. ``image_path`` is read by the gateway (local ingestion over gRPC);
    ``error`` is set when the transport could not decode the item (it is reported, not stored)."""

    product: Product
    image: bytes = b""
    image_path: str = ""
    error: InvalidInput | None = None


@dataclass(frozen=True)
class ItemError:
    index: int
    id: str
    code: grpc.StatusCode
    message: str


def item_error(index: int, pid: str, exc: BaseException) -> ItemError:
    code, message = status_of(exc)
    return ItemError(index, pid, code, message)


async def _load_image(item: UpsertItem) -> bytes:
    if item.image or not item.image_path:
        return item.image
    try:
        return await asyncio.to_thread(Path(item.image_path).read_bytes)
    except OSError as exc:
        raise InvalidInput(f"cannot read image {item.image_path!r}: {exc.strerror}") from None


async def _aiter(items: AsyncIterable[UpsertItem] | Iterable[UpsertItem]) -> AsyncIterator[UpsertItem]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def upsert_products(
    pipeline: Pipeline,
    items: AsyncIterable[UpsertItem] | Iterable[UpsertItem],
    batch_size: int,
    timeout: Callable[[], float],
) -> tuple[int, list[ItemError]]:
    """Stores items in batches of ``batch_size``; a bad item is reported by its position and does not
    stop the others. Returns how many were stored and the errors. ``timeout`` is read per batch."""
    upserted = 0
    errors: list[ItemError] = []
    batch: list[tuple[int, Product, bytes]] = []

    async def flush() -> int:
        if not batch:
            return 0
        results = await pipeline.upsert([(p, img) for _, p, img in batch], timeout())
        ok = 0
        for (index, product, _), err in zip(batch, results, strict=True):
            if err is None:
                ok += 1
            else:
                errors.append(item_error(index, product.id, err))
        batch.clear()
        return ok

    index = 0
    async for item in _aiter(items):
        try:
            if item.error is not None:
                raise item.error
            image = await _load_image(item)
            if image:
                check_image(image)
            batch.append((index, item.product, image))
        except InvalidInput as exc:
            errors.append(item_error(index, item.product.id, exc))
        index += 1
        if len(batch) >= batch_size:
            upserted += await flush()
    upserted += await flush()
    return upserted, errors


# ---- admission, metrics, status ------------------------------------------------------------------


class CallGate:
    """Admission (one in-flight bound for both transports), metrics under the method's name, and the
    one translation of any failure into ``Failure(code, message)``."""

    def __init__(
        self, metrics: GatewayMetrics, max_in_flight: int, on_unavailable: Callable[[DependencyError], None]
    ) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.on_unavailable = on_unavailable
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def call(self, method: str) -> AsyncIterator[None]:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        admitted = self.in_flight < self.max_in_flight
        if admitted:
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
        try:
            if not admitted:
                raise Overloaded(f"{self.max_in_flight} requests in flight; retry with backoff")
            yield
        except Failure as exc:
            code = exc.code
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if isinstance(exc, DependencyError) and code == grpc.StatusCode.UNAVAILABLE:
                self.on_unavailable(exc)
            if not isinstance(exc, (GatewayError, TimeoutError)):
                log.exception("unexpected failure", extra={"method": method})
            raise Failure(code, message) from exc
        finally:
            if admitted:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - t0)

    def observe(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.metrics.stage_latency.labels(stage).observe(ms / 1000.0)
