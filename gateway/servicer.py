"""Transport only: protobuf in, the shared request building and call gate, protobuf out.

Every check, default and status translation lives in ``gateway.requests``, shared with the HTTP/JSON API.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from gateway.errors import DependencyError, InvalidInput
from gateway.events import EventIngest, Rejected, parse_event
from gateway.ingest import IngestRoots
from gateway.messages import product_from_pb, product_to_pb
from gateway.metrics import GatewayMetrics
from gateway.pipeline import FieldFilter, Hit, Pipeline
from gateway.recommend import Boost, Recommender, recommend_query
from gateway.requests import (
    CallGate,
    Failure,
    UpsertItem,
    UpsertProgress,
    search_query,
    top_k_or_default,
    upsert_products,
    upsert_trailers,
)
from vitrine.catalog import Product
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.grpc_decode import Undecodable

_TEXT_MATCH = {
    pb.TEXT_MATCH_UNSPECIFIED: "",
    pb.TEXT_MATCH_IMAGE: "image",
    pb.TEXT_MATCH_TITLE: "title",
    pb.TEXT_MATCH_FUSION: "fusion",
}


def filters_from_pb(filters: Sequence[pb.Filter]) -> tuple[FieldFilter, ...]:
    return tuple(
        FieldFilter(
            field=f.field,
            any_of=tuple(f.any_of),
            min=f.min if f.HasField("min") else None,
            max=f.max if f.HasField("max") else None,
        )
        for f in filters
    )


def hits_to_pb(hits: Sequence[Hit]) -> list[pb.Hit]:
    out = []
    for h in hits:
        msg = pb.Hit(product=product_to_pb(h.product), retrieval_score=h.retrieval_score)
        if h.rerank_score is not None:
            msg.rerank_score = h.rerank_score
        out.append(msg)
    return out


def timings_to_pb(timings: dict[str, float]) -> list[pb.StageTiming]:
    return [pb.StageTiming(stage=k, ms=v) for k, v in timings.items()]


class ProductSearchServicer(pb_grpc.ProductSearchServicer):
    def __init__(
        self,
        pipeline: Pipeline,
        metrics: GatewayMetrics,
        max_in_flight: int,
        default_timeout_s: float,
        upsert_batch: int,
        on_unavailable: Callable[[DependencyError], None],
        ingest: IngestRoots | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.default_timeout_s = default_timeout_s
        self.upsert_batch = upsert_batch
        self.on_unavailable = on_unavailable
        self.gate = CallGate(metrics, max_in_flight, on_unavailable)
        self.ingest = ingest or IngestRoots(())

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.default_timeout_s if remaining is None else min(remaining, self.default_timeout_s)

    @contextlib.asynccontextmanager
    async def _rpc(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        trailers: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> AsyncIterator[None]:
        """The shared call gate; its failure becomes this call's status, with ``trailers()`` as
        trailing metadata when given (what a failed call still wants its caller to know)."""
        try:
            async with self.gate.call(method):
                yield
        except Failure as exc:
            if trailers is not None:
                context.set_trailing_metadata(tuple(trailers()))
            await context.abort(exc.code, exc.message)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async with self._rpc("Search", context):
            query = search_query(
                text=request.text,
                image=request.image,
                image_weight=request.image_weight if request.HasField("image_weight") else None,
                top_k=request.top_k,
                filters=filters_from_pb(request.filters),
                rerank=request.rerank,
                rerank_depth=request.rerank_depth,
                text_match=_TEXT_MATCH.get(request.text_match, str(request.text_match)),
            )
            result = await self.pipeline.search(query, self._timeout(context))
            self.gate.observe(result.timings)
            return pb.SearchResponse(
                hits=hits_to_pb(result.hits),
                timings=timings_to_pb(result.timings),
                text_truncated=result.text_truncated,
                reranked=result.reranked,
            )
        raise AssertionError("unreachable")  # pragma: no cover - _rpc aborts on failure

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        async with self._rpc("SimilarItems", context):
            result = await self.pipeline.similar(
                request.id,
                top_k_or_default(request.top_k),
                filters_from_pb(request.filters),
                self._timeout(context),
            )
            self.gate.observe(result.timings)
            return pb.SimilarItemsResponse(
                by_image=hits_to_pb(result.by_image),
                by_title=hits_to_pb(result.by_title),
                timings=timings_to_pb(result.timings),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def GetProducts(
        self, request: pb.GetProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProductsResponse:
        async with self._rpc("GetProducts", context):
            products = await self.pipeline.get(list(request.ids), self._timeout(context))
            return pb.GetProductsResponse(products=[product_to_pb(p) for p in products])
        raise AssertionError("unreachable")  # pragma: no cover

    async def DeleteProducts(
        self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProductsResponse:
        async with self._rpc("DeleteProducts", context):
            deleted, missing = await self.pipeline.delete(list(request.ids), self._timeout(context))
            return pb.DeleteProductsResponse(deleted=deleted, not_found=missing)
        raise AssertionError("unreachable")  # pragma: no cover

    async def UpsertProducts(
        self, request_iterator: AsyncIterator[pb.UpsertProductsRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductsResponse:
        progress = UpsertProgress()
        async with self._rpc("UpsertProducts", context, lambda: upsert_trailers(progress)):

            async def items() -> AsyncIterator[UpsertItem]:
                async for msg in request_iterator:
                    if isinstance(msg, Undecodable):  # reported at its position like any bad item
                        yield UpsertItem(Product(id="", title=""), error=InvalidInput(msg.reason))
                        continue
                    kind = msg.WhichOneof("image")
                    yield UpsertItem(
                        product_from_pb(msg.product, msg.image_path),
                        image=msg.image_bytes if kind == "image_bytes" else b"",
                        image_path=msg.image_path if kind == "image_path" else "",
                    )

            upserted, errors = await upsert_products(
                self.pipeline,
                items(),
                self.upsert_batch,
                lambda: self._timeout(context),
                self.ingest,
                progress,
            )
            context.set_trailing_metadata(tuple(upsert_trailers(progress)))
            return pb.UpsertProductsResponse(
                upserted=upserted,
                errors=[
                    pb.ItemError(index=e.index, id=e.id, code=e.code.name, message=e.message) for e in errors
                ],
            )
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- events and recommendations (set by the server: ``gateway.server``) ------------------------------

    event_ingest: EventIngest | None = None
    recommender: Recommender | None = None

    async def RecordEvents(
        self, request_iterator: AsyncIterator[pb.RecordEventsRequest], context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        async with self._rpc("RecordEvents", context):
            assert self.event_ingest is not None, "the server sets event_ingest"

            async def events() -> AsyncIterator[Any]:
                async for msg in request_iterator:
                    if not hasattr(msg, "events"):  # a message that did not decode: one bad position
                        yield Rejected(0, "", "INVALID_ARGUMENT", "message does not decode")
                        continue
                    for e in msg.events:
                        yield parse_event(
                            event_id=e.event_id,
                            user_id=e.user_id,
                            session_id=e.session_id,
                            item_id=e.item_id,
                            type=e.type,
                            ts=e.ts,
                            device=e.device,
                            query=e.query,
                        )

            recorded, rejected = await self.event_ingest.record(events(), lambda: self._timeout(context))
            self.metrics.events_recorded.inc(recorded)
            return pb.RecordEventsResponse(
                recorded=recorded,
                errors=[
                    pb.EventError(index=r.index, event_id=r.event_id, code=r.code, message=r.message)
                    for r in rejected
                ],
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        async with self._rpc("Recommend", context):
            assert self.recommender is not None, "the server sets recommender"
            query = recommend_query(
                user_id=request.user_id,
                top_k=request.top_k,
                context_item=request.context_item_id,
                filters=filters_from_pb(request.filters),
                exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else None,
                diversity=request.diversity if request.HasField("diversity") else None,
                boosts=[Boost(b.field, tuple(b.any_of), b.weight) for b in request.boosts],
            )
            result = await self.recommender.recommend(query, self._timeout(context))
            self.gate.observe(result.timings)
            self.metrics.recommendations.labels(result.strategy).inc()
            return pb.RecommendResponse(
                items=[
                    pb.Recommendation(product=product_to_pb(r.product), score=r.score, reason=r.reason)
                    for r in result.items
                ],
                strategy=result.strategy,
                model_version=result.model_version,
                timings=timings_to_pb(result.timings),
            )
        raise AssertionError("unreachable")  # pragma: no cover
