"""Transport only: protobuf in, pipeline call, protobuf out, one status mapping for every failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc

from gateway.clients import check_image_header
from gateway.errors import DependencyError, GatewayError, InvalidInput, Overloaded, status_of
from gateway.messages import product_from_pb, product_to_pb
from gateway.metrics import GatewayMetrics
from gateway.pipeline import (
    DEFAULT_RERANK_DEPTH,
    DEFAULT_TOP_K,
    FieldFilter,
    Hit,
    Pipeline,
    SearchQuery,
    TextMatch,
)
from vitrine.catalog import Product
from vitrine.contracts import MAX_TEXT_CHARS
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_TEXT_MATCH = {
    pb.TEXT_MATCH_UNSPECIFIED: None,
    pb.TEXT_MATCH_IMAGE: TextMatch.IMAGE,
    pb.TEXT_MATCH_TITLE: TextMatch.TITLE,
    pb.TEXT_MATCH_FUSION: TextMatch.FUSION,
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
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.default_timeout_s = default_timeout_s
        self.upsert_batch = upsert_batch
        self.on_unavailable = on_unavailable
        self.in_flight = 0

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.default_timeout_s if remaining is None else min(remaining, self.default_timeout_s)

    @contextlib.asynccontextmanager
    async def _rpc(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Admission (bounded in-flight), metrics, and the one translation of failures to statuses."""
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
        except Exception as exc:
            code, message = status_of(exc)
            if isinstance(exc, DependencyError) and code == grpc.StatusCode.UNAVAILABLE:
                self.on_unavailable(exc)
            if not isinstance(exc, GatewayError) and not isinstance(exc, TimeoutError):
                log.exception("unexpected failure", extra={"method": method})
            await context.abort(code, message)
        finally:
            if admitted:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - t0)

    def _observe(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.metrics.stage_latency.labels(stage).observe(ms / 1000.0)

    def _check_image(self, image: bytes) -> None:
        check_image_header(image)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async with self._rpc("Search", context):
            if len(request.text) > MAX_TEXT_CHARS:
                raise InvalidInput(f"text is {len(request.text)} characters; the limit is {MAX_TEXT_CHARS}")
            if request.text_match not in _TEXT_MATCH:
                raise InvalidInput(f"unknown text_match {request.text_match}")
            if request.image:
                self._check_image(request.image)
            query = SearchQuery(
                text=request.text,
                image=request.image,
                image_weight=request.image_weight if request.HasField("image_weight") else 0.5,
                top_k=request.top_k or DEFAULT_TOP_K,
                filters=filters_from_pb(request.filters),
                rerank=request.rerank,
                rerank_depth=request.rerank_depth or max(DEFAULT_RERANK_DEPTH, request.top_k),
                text_match=_TEXT_MATCH[request.text_match],
            )
            result = await self.pipeline.search(query, self._timeout(context))
            self._observe(result.timings)
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
                request.top_k or DEFAULT_TOP_K,
                filters_from_pb(request.filters),
                self._timeout(context),
            )
            self._observe(result.timings)
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

    async def _load_image(self, msg: pb.UpsertProductsRequest) -> bytes:
        kind = msg.WhichOneof("image")
        if kind == "image_bytes":
            return msg.image_bytes
        if kind == "image_path":
            path = Path(msg.image_path)
            try:
                return await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise InvalidInput(f"cannot read image {msg.image_path!r}: {exc.strerror}") from None
        return b""

    async def UpsertProducts(
        self, request_iterator: AsyncIterator[pb.UpsertProductsRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductsResponse:
        async with self._rpc("UpsertProducts", context):
            upserted = 0
            errors: list[pb.ItemError] = []
            batch: list[tuple[int, Product, bytes]] = []

            def item_error(index: int, pid: str, exc: BaseException) -> pb.ItemError:
                code, message = status_of(exc)
                return pb.ItemError(index=index, id=pid, code=code.name, message=message)

            async def flush() -> int:
                if not batch:
                    return 0
                results = await self.pipeline.upsert(
                    [(p, img) for _, p, img in batch], self._timeout(context)
                )
                ok = 0
                for (index, product, _), err in zip(batch, results, strict=True):
                    if err is None:
                        ok += 1
                    else:
                        errors.append(item_error(index, product.id, err))
                batch.clear()
                return ok

            index = 0
            async for msg in request_iterator:
                product = product_from_pb(msg.product, msg.image_path)
                try:
                    image = await self._load_image(msg)
                    if image:
                        self._check_image(image)
                    batch.append((index, product, image))
                except InvalidInput as exc:
                    errors.append(item_error(index, product.id, exc))
                index += 1
                if len(batch) >= self.upsert_batch:
                    upserted += await flush()
            upserted += await flush()
            return pb.UpsertProductsResponse(upserted=upserted, errors=errors)
        raise AssertionError("unreachable")  # pragma: no cover
