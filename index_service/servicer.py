"""gRPC transport for the engine: convert, run off the event loop, convert back. Errors are translated
here once; protobuf goes no further in than this module and ``convert.py``."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from index_service import codec, convert, filters
from index_service.coalescer import Coalescer
from index_service.engine import Engine
from index_service.errors import IndexServiceError
from index_service.model import Hit, SearchParams
from vitrine.errors import MAX_ECHO_CHARS, bounded
from vitrine.grpc_decode import Undecodable
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STREAM_ERRORS = 1000
"""Most per-item errors one UpsertStream reply lists (``refused`` counts them all)."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        self.requests = Counter(
            "vitrine_index_requests", "Index service calls by method and status code.",
            ["method", "code"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "vitrine_index_request_seconds", "Index service call latency.",
            ["method"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch = Histogram(
            "vitrine_index_search_batch_queries", "Queries per FAISS call after coalescing.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        )  # fmt: skip
        registry.register(_VectorsCollector(engine))


class _VectorsCollector(Collector):
    """Reads live counts at scrape time, so the gauge can never drift from the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vitrine_index_vectors",
            "Live items per collection (each holds one vector in every space of its collection).",
            labels=["collection"],
        )
        for name, count in self.engine.reads.counts().items():
            family.add_metric([name], count)
        yield family
        spaces = GaugeMetricFamily(
            "vitrine_index_space_vectors",
            "Vectors held by each space's FAISS index, deleted ones included until compaction.",
            labels=["collection", "space"],
        )
        for (name, space), total in self.engine.reads.index_totals().items():
            spaces.add_metric([name, space], total)
        yield spaces


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Record metrics and turn domain errors into statuses: the one place errors cross the boundary."""

    @functools.wraps(method)
    async def wrapper(self: IndexServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        name = method.__name__
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except IndexServiceError as exc:
            code = exc.code
            await context.abort(code, bounded(str(exc)))
            raise  # unreachable: abort raises
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("index call failed", extra={"method": name})
            await context.abort(code, f"internal error in {name}: {type(exc).__name__}")
            raise
        finally:
            self.metrics.requests.labels(method=name, code=code.name).inc()
            self.metrics.latency.labels(method=name).observe(time.perf_counter() - start)

    return wrapper


@dataclass(frozen=True)
class _SearchKey:
    """What concurrent single-query searches must share to ride in one FAISS call."""

    collection: str
    space: str
    k: int
    filter: filters.Filter | None
    params: SearchParams


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, engine: Engine, executor: Executor, metrics: Metrics, coalesce: bool) -> None:
        self.engine = engine
        self.executor = executor
        self.metrics = metrics
        self.coalesce = coalesce
        self._coalescer: Coalescer[_SearchKey, list[Hit]] = Coalescer(self._search_batch, max_batch=256)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @_rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        stats = await self._call(self.engine.registry.create, codec.spec_of(request.spec))
        return pb.CreateCollectionResponse(stats=convert.stats_message(stats))

    @_rpc
    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        await self._call(self.engine.registry.drop, request.name)
        return pb.DropCollectionResponse()

    @_rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        collections = await self._call(self.engine.reads.list_collections)
        return pb.ListCollectionsResponse(collections=[convert.stats_message(s) for s in collections])

    @_rpc
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        items = [convert.item_of(item) for item in request.items]
        upserted, count = await self._call(self.engine.writes.upsert, request.collection, items)
        return pb.UpsertResponse(upserted=upserted, count=count)

    @_rpc
    async def UpsertStream(
        self, request_iterator: AsyncIterator[pb.UpsertRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertResponse:
        total, count, position, message, refused = 0, 0, 0, 0, 0
        errors: list[pb.ItemError] = []

        def refuse(at: int, item_id: str, why: str) -> None:
            nonlocal refused
            refused += 1
            if len(errors) < MAX_STREAM_ERRORS:
                errors.append(pb.ItemError(position=at, id=item_id[:MAX_ECHO_CHARS], message=bounded(why)))

        try:
            async for request in request_iterator:
                if isinstance(request, Undecodable):  # its items cannot be counted: it takes no position
                    refuse(position, "", f"stream message {message}: {request.reason}")
                elif request.items:
                    items = [convert.item_of(item) for item in request.items]
                    upserted, count, bad = await self._call(
                        self.engine.writes.upsert_each, request.collection, items, position
                    )
                    total += upserted
                    for r in bad:
                        refuse(r.position, r.id, r.message)
                    position += len(request.items)
                message += 1
        except IndexServiceError as exc:
            context.set_trailing_metadata(
                (("vitrine-upserted", str(total)), ("vitrine-stream-position", str(position)))
            )
            raise type(exc)(
                f"stream message {message}: {bounded(str(exc), 600)} ({total} items committed; every item "
                f"before stream position {position} was committed or refused, none after)"
            ) from exc
        return pb.UpsertResponse(upserted=total, count=count, errors=errors, refused=refused)

    @_rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        deleted, count = await self._call(self.engine.writes.delete, request.collection, list(request.ids))
        return pb.DeleteResponse(deleted=deleted, count=count)

    @_rpc
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        items, missing = await self._call(
            self.engine.reads.get, request.collection, list(request.ids), request.include_vectors
        )
        return pb.GetResponse(items=[convert.item_message(item) for item in items], missing_ids=missing)

    @_rpc
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        return convert.stats_message(await self._call(self.engine.reads.stats, request.name))

    @_rpc
    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotResponse:
        collections = await self._call(self.engine.writes.snapshot, request.name)
        return pb.SnapshotResponse(collections=[convert.stats_message(s) for s in collections])

    @_rpc
    async def AddVectorSpace(
        self, request: pb.AddVectorSpaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        vector = codec.vector_spec_of(request.vector)
        return convert.stats_message(
            await self._call(self.engine.registry.add_space, request.collection, vector)
        )

    @_rpc
    async def DropVectorSpace(
        self, request: pb.DropVectorSpaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        stats = await self._call(self.engine.registry.drop_space, request.collection, request.vector)
        return convert.stats_message(stats)

    @_rpc
    async def UpsertVectors(
        self, request: pb.UpsertVectorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertVectorsResponse:
        items = [convert.item_vector_of(item) for item in request.items]
        upserted, missing = await self._call(
            self.engine.writes.upsert_vectors, request.collection, request.vector, items
        )
        return pb.UpsertVectorsResponse(upserted=upserted, missing_ids=missing)

    @_rpc
    async def SetAlias(
        self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAliasResponse:
        previous = await self._call(self.engine.registry.set_alias, request.alias, request.collection)
        return pb.SetAliasResponse(previous=previous)

    @_rpc
    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAliasResponse:
        await self._call(self.engine.registry.delete_alias, request.alias)
        return pb.DeleteAliasResponse()

    @_rpc
    async def ListAliases(
        self, request: pb.ListAliasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAliasesResponse:
        return pb.ListAliasesResponse(
            aliases=[pb.Alias(alias=a, collection=c) for a, c in self.engine.registry.list_aliases()]
        )

    @_rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        flt = convert.filter_of(request.filter) if request.HasField("filter") else None
        params = convert.params_of(request.params)
        # Resolved once: a search through an alias re-pointed meanwhile answers from one collection.
        name = self.engine.registry.resolve(request.collection)
        if self.engine.reads.is_lexical(name, request.vector):
            return await self._search_text(name, request, flt, params)
        queries = [convert.vector_of(q.vector) for q in request.queries]
        space, prepared = self.engine.reads.prepare_search(
            name, request.vector, queries, request.k, flt, params
        )
        key = _SearchKey(name, space, request.k, flt, params)
        if self.coalesce and len(prepared) == 1 and self.engine.reads.coalesces(name, space):
            rows, exact = await self._coalescer.submit(key, prepared)
        else:
            rows, exact = await self._search_batch(key, prepared)
        return _response(request, rows, exact)

    async def _search_text(
        self, name: str, request: pb.SearchRequest, flt: filters.Filter | None, params: SearchParams
    ) -> pb.SearchResponse:
        """A lexical space's search: one SQLite query per text, nothing to coalesce."""
        texts = [q.text for q in request.queries]
        vectors = sum(1 for q in request.queries if q.vector)
        self.engine.reads.prepare_text_search(name, request.vector, texts, vectors, request.k, flt)
        rows = await self._call(
            self.engine.reads.search_text, name, request.vector, texts, request.k, flt, params.prefix
        )
        return _response(request, rows, exact=True)

    @_rpc
    async def AddLexicalSpace(
        self, request: pb.AddLexicalSpaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        spec = codec.lexical_spec_of(request.lexical)
        return convert.stats_message(
            await self._call(self.engine.registry.add_lexical, request.collection, spec)
        )

    async def _search_batch(self, key: _SearchKey, queries: np.ndarray) -> tuple[list[list[Hit]], bool]:
        """One FAISS call: a request's queries, or concurrent single queries merged by the coalescer."""
        self.metrics.batch.observe(len(queries))
        return await self._call(
            self.engine.reads.search, key.collection, key.space, queries, key.k, key.filter, key.params
        )


def _response(request: pb.SearchRequest, rows: list[list[Hit]], exact: bool) -> pb.SearchResponse:
    return pb.SearchResponse(
        results=[
            pb.QueryResult(
                hits=[
                    convert.hit_message(h, request.include_payload, request.include_attributes) for h in row
                ]
            )
            for row in rows
        ],
        exact=exact,
    )
