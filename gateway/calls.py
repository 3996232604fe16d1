"""The gateway's API as plain code: one async function per method, called by both transports.

gRPC (``gateway.servicer``) and HTTP/JSON (``gateway.http``) only convert their wire format into the
plain values these methods take and the results back. Each method is the whole of a call: pass the gate
(admission, metrics under the gRPC method name, one status translation: ``gateway.gate``), build and
check the query, run it, observe its stage timings. So a rule cannot differ between the two APIs, and a
refused call is counted like any other failure.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.errors import DependencyError, InvalidInput, NotFound
from gateway.events import EventIngest, Rejected
from gateway.gate import CallGate, Failure
from gateway.ingest import IngestRoots
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.recommend import Boost, Recommender, RecommendResult, recommend_query
from gateway.serving_info import ServingInfo
from gateway.types import (
    DEFAULT_IMAGE_WEIGHT,
    DEFAULT_RERANK_DEPTH,
    DEFAULT_TOP_K,
    SearchQuery,
    SearchResult,
    SimilarResult,
    TextMatch,
)
from gateway.upserts import ItemError, UpsertItem, UpsertProgress, upsert_products
from vitrine.catalog import Product
from vitrine.events import Event
from vitrine.filters import FieldFilter
from vitrine.reranking import UNKNOWN, rerank_default

TEXT_MATCH_NAMES = tuple(m.value for m in TextMatch)


@dataclass(frozen=True)
class SearchArgs:
    """A search as a transport decodes it: ``None`` and ``0`` mean "the default" (proto3 cannot tell an
    unset number from 0), ``text_match`` is a name."""

    text: str = ""
    image: bytes = b""
    image_weight: float | None = None
    top_k: int | None = None
    filters: tuple[FieldFilter, ...] = ()
    rerank: bool = False
    rerank_depth: int | None = None
    text_match: str = ""


@dataclass(frozen=True)
class RecommendArgs:
    user_id: str = ""
    top_k: int | None = None
    context_item: str = ""
    filters: tuple[FieldFilter, ...] = ()
    exclude_seen: bool | None = None
    diversity: float | None = None
    boosts: tuple[Boost, ...] = ()


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
    return top_k or DEFAULT_TOP_K


def search_query(args: SearchArgs) -> SearchQuery:
    """The pipeline's query from plain values: defaults filled in, names looked up. The pipeline checks
    the query itself (``Pipeline.validate``), whoever built it."""
    return SearchQuery(
        text=args.text,
        image=args.image,
        image_weight=DEFAULT_IMAGE_WEIGHT if args.image_weight is None else args.image_weight,
        top_k=top_k_or_default(args.top_k),
        filters=args.filters,
        rerank=args.rerank,
        rerank_depth=args.rerank_depth or max(DEFAULT_RERANK_DEPTH, args.top_k or 0),
        text_match=text_match_of(args.text_match),
    )


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


class Calls:
    """Every API method once. ``timeout`` is the caller's budget in seconds (a transport passes the
    smaller of the caller's deadline and the gateway's default)."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: GatewayMetrics,
        max_in_flight: int,
        on_unavailable: Callable[[DependencyError], None],
        *,
        upsert_batch: int,
        ingest: IngestRoots,
        image_roots: Sequence[str] = (),
        events: EventIngest | None = None,
        recommender: Recommender | None = None,
        reranker_weights: Callable[[int, float | None], Awaitable[str]] | None = None,
        count_products: Callable[[float | None], Awaitable[int]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.reranker_weights = reranker_weights
        self.count_products = count_products
        self.metrics = metrics
        self.gate = CallGate(metrics, max_in_flight, on_unavailable)
        self.upsert_batch = upsert_batch
        self.ingest = ingest
        self.image_roots = tuple(Path(r) for r in image_roots)
        self.events = events
        self.recommender = recommender

    async def search(self, args: SearchArgs, timeout: float) -> SearchResult:
        async with self.gate.call("Search"):
            result = await self.pipeline.search(search_query(args), timeout)
            self.gate.observe(result.timings)
            return result

    async def serving(self, timeout: float) -> ServingInfo:
        """The versions answering searches and whether re-ranking is on by default with the served
        cross-encoder (``vitrine.reranking``); read at the call, so it follows a rollout."""
        async with self.gate.call("GetServing"):
            serving = self.pipeline.serving
            weights = UNKNOWN
            if self.reranker_weights is not None:
                weights = await self.reranker_weights(serving.reranker_version, timeout)
            return ServingInfo(serving.version, serving.reranker_version, rerank_default(weights))

    async def catalog_size(self, timeout: float) -> int:
        """How many products the catalog holds now (the page shows it grow while a catalog is ingested);
        0 when unknown."""
        return await self.count_products(timeout) if self.count_products is not None else 0

    async def similar(
        self, product_id: str, top_k: int | None, filters: Sequence[FieldFilter], timeout: float
    ) -> SimilarResult:
        async with self.gate.call("SimilarItems"):
            result = await self.pipeline.similar(product_id, top_k_or_default(top_k), filters, timeout)
            self.gate.observe(result.timings)
            return result

    async def get_products(self, ids: Sequence[str], timeout: float) -> list[Product]:
        async with self.gate.call("GetProducts"):
            return await self.pipeline.get(ids, timeout)

    async def product_image(self, product_id: str, timeout: float) -> Path:
        """The file of a product's image, from the configured image roots only."""
        async with self.gate.call("GetProductImage"):
            product = (await self.pipeline.get([product_id], timeout))[0]
            path = await asyncio.to_thread(image_file, product.image_uri, self.image_roots)
            if path is None:
                raise NotFound(f"product {product_id!r} has no image under the gateway's image roots")
            return path

    async def delete_products(self, ids: Sequence[str], timeout: float) -> tuple[int, list[str]]:
        async with self.gate.call("DeleteProducts"):
            return await self.pipeline.delete(ids, timeout)

    async def upsert_products(
        self,
        items: AsyncIterable[UpsertItem] | Iterable[UpsertItem],
        timeout: Callable[[], float],
        progress: UpsertProgress | None = None,
    ) -> tuple[int, list[ItemError]]:
        """Stores a stream of products; ``progress`` stays current for a caller that must report how
        far a failed stream got."""
        async with self.gate.call("UpsertProducts"):
            return await upsert_products(
                self.pipeline,
                items,
                self.upsert_batch,
                timeout,
                self.ingest,
                progress if progress is not None else UpsertProgress(),
            )

    async def record_events(
        self, events: AsyncIterable[Event | Rejected], timeout: Callable[[], float]
    ) -> tuple[int, list[Rejected]]:
        """Stores the valid events of a stream; an event that could not be decoded or checked arrives
        as a ``Rejected`` and is reported at its position."""
        async with self.gate.call("RecordEvents"):
            if self.events is None:
                raise Failure(grpc.StatusCode.UNIMPLEMENTED, "this gateway records no events")
            recorded, rejected = await self.events.record(events, timeout)
            self.metrics.events_recorded.inc(recorded)
            return recorded, rejected

    async def recommend(self, args: RecommendArgs, timeout: float) -> RecommendResult:
        async with self.gate.call("Recommend"):
            if self.recommender is None:
                raise Failure(grpc.StatusCode.UNIMPLEMENTED, "this gateway serves no recommendations")
            query = recommend_query(
                user_id=args.user_id,
                top_k=args.top_k,
                context_item=args.context_item,
                filters=args.filters,
                exclude_seen=args.exclude_seen,
                diversity=args.diversity,
                boosts=args.boosts,
            )
            result = await self.recommender.recommend(query, timeout)
            self.gate.observe(result.timings)
            self.metrics.recommendations.labels(result.strategy).inc()
            return result
