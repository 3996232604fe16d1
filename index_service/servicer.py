"""gRPC transport for the engine: decode, run off the event loop, encode. Errors are translated here once."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from index_service.engine import Engine, Found
from index_service.errors import IndexServiceError
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
        for name, count in self.engine.counts().items():
            family.add_metric([name], count)
        yield family
        spaces = GaugeMetricFamily(
            "vitrine_index_space_vectors",
            "Vectors held by each space's FAISS index, deleted ones included until compaction.",
            labels=["collection", "space"],
        )
        for (name, space), total in self.engine.index_totals().items():
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


class _Coalescer:
    """Merges concurrent single-query searches with identical options into one FAISS call.

    Nothing waits on a timer: the first request runs at once, and requests that arrive while a call is
    in flight ride together in the next one, so batching costs no latency when the service is idle.
    """

    def __init__(self, run: Callable[[tuple[Any, ...], np.ndarray], Awaitable[Any]], max_batch: int) -> None:
        self._run = run
        self._max = max_batch
        self._queues: dict[tuple[Any, ...], list[tuple[np.ndarray, asyncio.Future[Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: tuple[Any, ...], query: np.ndarray) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            task = asyncio.create_task(self._drain(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((query, fut))
        return await fut

    async def _drain(self, key: tuple[Any, ...], queue: list[tuple[np.ndarray, asyncio.Future[Any]]]) -> None:
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                try:
                    rows, exact = await self._run(key, np.concatenate([q for q, _ in batch]))
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for i, (_, fut) in enumerate(batch):
                    if not fut.done():
                        fut.set_result(([rows[i]], exact))
        finally:
            del self._queues[key]


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, engine: Engine, executor: Executor, metrics: Metrics, coalesce: bool) -> None:
        self.engine = engine
        self.executor = executor
        self.metrics = metrics
        self.coalesce = coalesce
        self._coalescer = _Coalescer(self._run_coalesced, max_batch=256)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @_rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        return pb.CreateCollectionResponse(stats=await self._call(self.engine.create, request.spec))

    @_rpc
    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        await self._call(self.engine.drop, request.name)
        return pb.DropCollectionResponse()

    @_rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(collections=await self._call(self.engine.list_collections))

    @_rpc
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        upserted, count = await self._call(self.engine.upsert, request.collection, list(request.items))
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
                    upserted, count, bad = await self._call(
                        self.engine.upsert_each, request.collection, list(request.items), position
                    )
                    total += upserted
                    for at, item_id, why in bad:
                        refuse(at, item_id, why)
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
        deleted, count = await self._call(self.engine.delete, request.collection, list(request.ids))
        return pb.DeleteResponse(deleted=deleted, count=count)

    @_rpc
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        items, missing = await self._call(
            self.engine.get, request.collection, list(request.ids), request.include_vectors
        )
        return pb.GetResponse(items=items, missing_ids=missing)

    @_rpc
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        return await self._call(self.engine.stats, request.name)

    @_rpc
    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotResponse:
        return pb.SnapshotResponse(collections=await self._call(self.engine.snapshot, request.name))

    @_rpc
    async def AddVectorSpace(
        self, request: pb.AddVectorSpaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        return await self._call(self.engine.add_space, request.collection, request.vector)

    @_rpc
    async def DropVectorSpace(
        self, request: pb.DropVectorSpaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionStats:
        return await self._call(self.engine.drop_space, request.collection, request.vector)

    @_rpc
    async def UpsertVectors(
        self, request: pb.UpsertVectorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertVectorsResponse:
        upserted, missing = await self._call(
            self.engine.upsert_vectors, request.collection, request.vector, list(request.items)
        )
        return pb.UpsertVectorsResponse(upserted=upserted, missing_ids=missing)

    @_rpc
    async def SetAlias(
        self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAliasResponse:
        previous = await self._call(self.engine.set_alias, request.alias, request.collection)
        return pb.SetAliasResponse(previous=previous)

    @_rpc
    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAliasResponse:
        await self._call(self.engine.delete_alias, request.alias)
        return pb.DeleteAliasResponse()

    @_rpc
    async def ListAliases(
        self, request: pb.ListAliasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAliasesResponse:
        return pb.ListAliasesResponse(
            aliases=[pb.Alias(alias=a, collection=c) for a, c in self.engine.list_aliases()]
        )

    @_rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        flt = request.filter if request.HasField("filter") else None
        # Resolved once: a search through an alias re-pointed meanwhile answers from one collection.
        name = self.engine.resolve(request.collection)
        space, queries = self.engine.prepare_search(
            name, request.vector, [q.vector for q in request.queries], request.k, flt, request.params
        )
        if self.coalesce and len(queries) == 1 and self.engine.coalesces(name, space):
            key = (
                name,
                space,
                request.k,
                flt.SerializeToString(deterministic=True) if flt is not None else None,
                request.params.SerializeToString(deterministic=True),
            )
            rows, exact = await self._coalescer.submit(key, queries)
        else:
            self.metrics.batch.observe(len(queries))
            rows, exact = await self._call(
                self.engine.search, name, space, queries, request.k, flt, request.params
            )
        return pb.SearchResponse(
            results=[
                pb.QueryResult(
                    hits=[_hit(f, request.include_payload, request.include_attributes) for f in row]
                )
                for row in rows
            ],
            exact=exact,
        )

    async def _run_coalesced(self, key: tuple[Any, ...], queries: np.ndarray) -> Any:
        name, space, k, raw_filter, raw_params = key
        flt = pb.Filter.FromString(raw_filter) if raw_filter is not None else None
        self.metrics.batch.observe(len(queries))
        return await self._call(
            self.engine.search, name, space, queries, k, flt, pb.SearchParams.FromString(raw_params)
        )


def _hit(found: Found, payload: bool, attributes: bool) -> pb.Hit:
    hit = pb.Hit(id=found.id, score=found.score)
    if payload or attributes:
        item = pb.Item.FromString(found.body)
        if not payload:
            item.ClearField("payload")
        if not attributes:
            item.ClearField("numbers")
            item.ClearField("keywords")
            item.ClearField("tags")
        hit.item.CopyFrom(item)
    return hit
