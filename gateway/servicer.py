"""gRPC transport: protobuf in, plain values to ``gateway.calls``, protobuf out; nothing else.

Every check, default, admission decision and status translation lives in the call layer, shared with
the HTTP/JSON API. A failed call aborts with the code and message the call layer chose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from gateway.calls import Calls, RecommendArgs, SearchArgs
from gateway.errors import InvalidInput
from gateway.events import Rejected
from gateway.gate import Failure
from gateway.messages import event_from_pb, product_from_pb, product_to_pb
from gateway.recommend import Boost
from gateway.types import Hit
from gateway.upserts import UpsertItem, UpsertProgress
from vitrine.catalog import Product
from vitrine.events import Event
from vitrine.filters import FieldFilter
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.grpc_decode import Undecodable

T = TypeVar("T")

_TEXT_MATCH = {
    pb.TEXT_MATCH_UNSPECIFIED: "",
    pb.TEXT_MATCH_IMAGE: "image",
    pb.TEXT_MATCH_TITLE: "title",
    pb.TEXT_MATCH_FUSION: "fusion",
    pb.TEXT_MATCH_LEXICAL: "lexical",
    pb.TEXT_MATCH_MINILM: "minilm",
    pb.TEXT_MATCH_LEXICAL_MINILM: "lexical_minilm",
    pb.TEXT_MATCH_ALL: "all",
}

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


def search_args(request: pb.SearchRequest) -> SearchArgs:
    return SearchArgs(
        text=request.text,
        image=request.image,
        image_weight=request.image_weight if request.HasField("image_weight") else None,
        top_k=request.top_k,
        filters=filters_from_pb(request.filters),
        rerank=request.rerank,
        rerank_depth=request.rerank_depth,
        text_match=_TEXT_MATCH.get(request.text_match, str(request.text_match)),
    )


def recommend_args(request: pb.RecommendRequest) -> RecommendArgs:
    return RecommendArgs(
        user_id=request.user_id,
        top_k=request.top_k,
        context_item=request.context_item_id,
        filters=filters_from_pb(request.filters),
        exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else None,
        diversity=request.diversity if request.HasField("diversity") else None,
        boosts=tuple(Boost(b.field, tuple(b.any_of), b.weight) for b in request.boosts),
    )


async def upsert_items(requests: AsyncIterator[pb.UpsertProductsRequest]) -> AsyncIterator[UpsertItem]:
    async for msg in requests:
        if isinstance(msg, Undecodable):  # reported at its position like any bad item
            yield UpsertItem(Product(id="", title=""), error=InvalidInput(msg.reason))
            continue
        kind = msg.WhichOneof("image")
        yield UpsertItem(
            product_from_pb(msg.product, msg.image_path),
            image=msg.image_bytes if kind == "image_bytes" else b"",
            image_path=msg.image_path if kind == "image_path" else "",
        )


async def events_of(requests: AsyncIterator[pb.RecordEventsRequest]) -> AsyncIterator[Event | Rejected]:
    """The events of a stream in order; a message that did not decode takes one position of its own."""
    async for msg in requests:
        if isinstance(msg, Undecodable):
            yield Rejected(0, "", "INVALID_ARGUMENT", msg.reason)
            continue
        for e in msg.events:
            yield event_from_pb(e)


class ProductSearchServicer(pb_grpc.ProductSearchServicer):
    def __init__(self, calls: Calls, default_timeout_s: float) -> None:
        self.calls = calls
        self.default_timeout_s = default_timeout_s

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.default_timeout_s if remaining is None else min(remaining, self.default_timeout_s)

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        call: Awaitable[T],
        trailers: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> T:
        """The call's result, or an abort with its status; ``trailers()`` go out either way (set before
        the abort, which sends the status at once)."""
        try:
            result = await call
        except Failure as exc:
            if trailers is not None:
                context.set_trailing_metadata(tuple(trailers()))
            await context.abort(exc.code, exc.message)
        if trailers is not None:
            context.set_trailing_metadata(tuple(trailers()))
        return result

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        result = await self._answer(context, self.calls.search(search_args(request), self._timeout(context)))
        return pb.SearchResponse(
            hits=hits_to_pb(result.hits),
            timings=timings_to_pb(result.timings),
            text_truncated=result.text_truncated,
            reranked=result.reranked,
        )

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        call = self.calls.similar(
            request.id, request.top_k, filters_from_pb(request.filters), self._timeout(context)
        )
        result = await self._answer(context, call)
        return pb.SimilarItemsResponse(
            by_image=hits_to_pb(result.by_image),
            by_title=hits_to_pb(result.by_title),
            timings=timings_to_pb(result.timings),
        )

    async def GetProducts(
        self, request: pb.GetProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProductsResponse:
        products = await self._answer(
            context, self.calls.get_products(list(request.ids), self._timeout(context))
        )
        return pb.GetProductsResponse(products=[product_to_pb(p) for p in products])

    async def GetServing(
        self, request: pb.GetServingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServingResponse:
        info = await self._answer(context, self.calls.serving(self._timeout(context)))
        d = info.rerank_default
        return pb.GetServingResponse(
            encoder_version=info.encoder_version,
            reranker_version=info.reranker_version,
            reranker_weights=d.weights,
            rerank_by_default=d.on,
            reason=d.reason,
        )

    async def DeleteProducts(
        self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProductsResponse:
        call = self.calls.delete_products(list(request.ids), self._timeout(context))
        deleted, missing = await self._answer(context, call)
        return pb.DeleteProductsResponse(deleted=deleted, not_found=missing)

    async def UpsertProducts(
        self, request_iterator: AsyncIterator[pb.UpsertProductsRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductsResponse:
        progress = UpsertProgress()
        call = self.calls.upsert_products(
            upsert_items(request_iterator), lambda: self._timeout(context), progress
        )
        upserted, errors = await self._answer(context, call, lambda: upsert_trailers(progress))
        return pb.UpsertProductsResponse(
            upserted=upserted,
            errors=[
                pb.ItemError(index=e.index, id=e.id, code=e.code.name, message=e.message) for e in errors
            ],
        )

    async def RecordEvents(
        self, request_iterator: AsyncIterator[pb.RecordEventsRequest], context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        call = self.calls.record_events(events_of(request_iterator), lambda: self._timeout(context))
        recorded, rejected = await self._answer(context, call)
        return pb.RecordEventsResponse(
            recorded=recorded,
            errors=[
                pb.EventError(index=r.index, event_id=r.event_id, code=r.code, message=r.message)
                for r in rejected
            ],
        )

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        result = await self._answer(
            context, self.calls.recommend(recommend_args(request), self._timeout(context))
        )
        return pb.RecommendResponse(
            items=[
                pb.Recommendation(product=product_to_pb(r.product), score=r.score, reason=r.reason)
                for r in result.items
            ],
            strategy=result.strategy,
            model_version=result.model_version,
            timings=timings_to_pb(result.timings),
        )
