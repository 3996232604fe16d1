"""A call's life whichever transport carries it: gRPC (``servicer``) and HTTP/JSON (``http``) both come here.

The transports only decode their wire format into plain values; everything the gateway decides about a
call lives here once: the checks and defaults that turn plain values into a pipeline call (text length,
the image header, ``text_match`` names, ``0`` meaning "the default"), per-item upsert handling, and the
admission limit, metrics and status translation around every call. So a rule cannot differ between
the two APIs, and an error reads the same on both (``Failure`` carries the gRPC code and message; gRPC
aborts with them, HTTP answers ``errors.HTTP_STATUS[code]`` with the same message).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from gateway.clients import check_image_header
from gateway.errors import DependencyError, GatewayError, InvalidInput, Overloaded, status_of
from gateway.ingest import IngestRoots
from gateway.metrics import GatewayMetrics
from gateway.pipeline import (
    DEFAULT_RERANK_DEPTH,
    DEFAULT_TOP_K,
    MAX_ID_CHARS,
    FieldFilter,
    Pipeline,
    SearchQuery,
    TextMatch,
)
from vitrine.catalog import Product
from vitrine.contracts import MAX_TEXT_CHARS
from vitrine.errors import bounded

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
    """One product to store. ``image_path`` is read by the gateway from its ingest roots
    (``gateway.ingest``); ``error`` is set when the transport could not decode the item (it is
    reported, not stored)."""

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


@dataclass
class UpsertProgress:
    """How far a stream got, kept current while it runs, so a stream that fails part-way can still
    tell its caller what was stored: every item at a position below ``settled`` was either stored
    (``upserted`` counts them) or refused (``errors``); nothing at or after ``settled`` was stored,
    except that a batch whose index write ran out of time may have been."""

    upserted: int = 0
    settled: int = 0
    errors: list[ItemError] = field(default_factory=list)


UPSERTED_KEY = "vitrine-upserted"
SETTLED_KEY = "vitrine-settled"
REFUSED_KEY = "vitrine-refused"
MAX_REFUSED_LISTED = 200


def upsert_trailers(progress: UpsertProgress) -> list[tuple[str, str]]:
    """A stream's progress as trailing metadata, sent on success and failure alike (documented in
    gateway.proto): items stored, the settled prefix of the stream, the refused positions within it
    (the first ``MAX_REFUSED_LISTED``, then ``...``), so the metadata stays far below gRPC's limits."""
    refused = [str(e.index) for e in sorted(progress.errors, key=lambda e: e.index)]
    listed = ",".join(refused[:MAX_REFUSED_LISTED]) + (",..." if len(refused) > MAX_REFUSED_LISTED else "")
    return [
        (UPSERTED_KEY, str(progress.upserted)),
        (SETTLED_KEY, str(progress.settled)),
        (REFUSED_KEY, listed),
    ]


def item_error(index: int, pid: str, exc: BaseException) -> ItemError:
    code, message = status_of(exc)
    return ItemError(index, bounded(pid, 200), code, message)


def check_product(product: Product) -> None:
    """Everything about a product that can be decided before it costs an embedding or an index write."""
    if not product.id:
        raise InvalidInput("missing product id")
    if len(product.id) > MAX_ID_CHARS:
        raise InvalidInput(f"product id is {len(product.id)} characters; the limit is {MAX_ID_CHARS}")
    if not product.title.strip():
        raise InvalidInput(f"product {product.id!r}: missing title")
    if not math.isfinite(product.price) or product.price < 0:
        raise InvalidInput(
            f"product {product.id!r}: price must be a finite non-negative number, got {product.price!r}"
        )


async def _load_image(item: UpsertItem, ingest: IngestRoots) -> bytes:
    if item.image or not item.image_path:
        return item.image
    return await ingest.read(item.image_path)


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
    ingest: IngestRoots | None = None,
    progress: UpsertProgress | None = None,
) -> tuple[int, list[ItemError]]:
    """Stores items in batches of ``batch_size``; a bad item is reported by its position in the stream
    and does not stop the others. Returns how many were stored and the errors. ``timeout`` is read per
    batch; ``progress`` is kept current for a caller that must report a failure part-way. Items with
    the same id in one stream: the last stored one wins, whatever the batching (the pipeline keeps the
    last of a batch, and batches are written in stream order)."""
    ingest = ingest or IngestRoots(())
    progress = progress if progress is not None else UpsertProgress()
    batch: list[tuple[int, Product, bytes]] = []

    async def flush(settled: int) -> None:
        if batch:
            results = await pipeline.upsert([(p, img) for _, p, img in batch], timeout())
            for (index, product, _), err in zip(batch, results, strict=True):
                if err is None:
                    progress.upserted += 1
                else:
                    progress.errors.append(item_error(index, product.id, err))
            batch.clear()
        progress.settled = settled

    index = 0
    async for item in _aiter(items):
        try:
            if item.error is not None:
                raise item.error
            check_product(item.product)
            image = await _load_image(item, ingest)
            if not image:
                raise InvalidInput(f"product {item.product.id!r}: missing image")
            check_image(image)
            batch.append((index, item.product, image))
        except InvalidInput as exc:
            progress.errors.append(item_error(index, item.product.id, exc))
        index += 1
        if len(batch) >= batch_size:
            await flush(index)
        elif not batch:
            progress.settled = index
    await flush(index)
    progress.errors.sort(key=lambda e: e.index)
    return progress.upserted, progress.errors


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
