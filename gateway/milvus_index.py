"""The gateway's index on Milvus: what ``IndexRetriever`` does over the FAISS service, on a Milvus server
(``milvus://host:19530``) or an embedded milvus-lite file (``milvus-lite:<path>.db``, local trials).

One product is one row (``gateway.milvus_rows``): every vector space a vector field, so a product's
multi-space write is atomic by construction. Items are built and read back by ``vitrine.items`` as for
the FAISS service, filters are translated from the same index filter, and the checks the FAISS service
makes on a write or a search are made here first, with the same status and the same bounded message
shape, so the contract suite (tests/contract) holds both backends to one behaviour.

pymilvus is synchronous: every call runs in this backend's own thread pool. Milvus's failures become
the gateway's typed errors in ``_translate``, the one translation point.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from gateway import milvus_rows as mr
from gateway.errors import (
    DeadlineExceeded,
    Dependency,
    DependencyError,
    GatewayError,
    InvalidInput,
    Overloaded,
    Unavailable,
)
from gateway.milvus_store import MilvusStore, Schema
from gateway.types import Candidate, Record
from vitrine import items
from vitrine.catalog import Product
from vitrine.errors import bounded, quoted
from vitrine.filters import BRAND, FieldFilter

T = TypeVar("T")

MAX_K = 1000
"""Largest k a search may ask for: the FAISS index service's limit, so both backends refuse alike."""
WORKERS = 8
UPSERT_VECTORS_BATCH = 1000
_UNAVAILABLE_CODES = {2, 4, 100, 101, 104}
"""Milvus status codes meaning the collection or the server cannot serve (not loaded, not found, not
ready): the FAISS path reports a missing collection as UNAVAILABLE too."""
_INPUT_CODES = {5, 6, 1100}
_OVERLOAD_CODES = {8, 9}


def _translate(exc: BaseException) -> GatewayError:
    """The one place Milvus's failures become typed gateway errors; never UNKNOWN or INTERNAL."""
    from pymilvus.exceptions import MilvusException, MilvusUnavailableException, ParamError

    if isinstance(exc, GatewayError):
        return exc
    detail = bounded(str(getattr(exc, "message", "") or exc), 300)
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
        return DeadlineExceeded("deadline exceeded waiting for index")
    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline exceeded waiting for index")
    if isinstance(exc, (ParamError, ValueError)):
        return InvalidInput(f"index rejected the input: {detail}")
    if isinstance(exc, (MilvusUnavailableException, ConnectionError, OSError)):
        return Unavailable(Dependency.INDEX, detail)
    if isinstance(exc, MilvusException):
        code = int(getattr(exc, "code", 1) or 1)
        if "deadline" in detail.lower() or "timeout" in detail.lower():
            return DeadlineExceeded("deadline exceeded waiting for index")
        if code in _INPUT_CODES:
            return InvalidInput(f"index rejected the input: {detail}")
        if code in _OVERLOAD_CODES:
            return Overloaded(f"index is overloaded, retry later: {detail}")
        return Unavailable(Dependency.INDEX, detail)
    return DependencyError(Dependency.INDEX, grpc.StatusCode.UNAVAILABLE, f"{type(exc).__name__}: {detail}")


class MilvusIndex:
    """Retriever over Milvus: the catalog is the alias ``collection``, one row per product."""

    def __init__(
        self,
        address: str,
        collection: str,
        filter_attributes: Sequence[str],
        index_kind: str = "flat",
        api_key: str = "",
    ) -> None:
        self.address = address
        self.collection = collection
        self.filter_attributes = tuple(filter_attributes)
        self.index_kind = index_kind
        self.store = MilvusStore(address, collection, index_kind, token=api_key)
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="milvus")
        self._ensured = False

    async def _run(self, timeout: float | None, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            # pymilvus gets the deadline too; this bound only covers a call stuck before its RPC.
            return await asyncio.wait_for(future, None if timeout is None else timeout + 1.0)
        except Exception as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.store.close)
        self._pool.shutdown(wait=False)

    async def ready(self, timeout: float = 2.0) -> bool:
        try:
            await self._run(timeout, self.store.ping, timeout)
        except GatewayError:
            return False
        return True

    async def ensure_collection(self, timeout: float | None = 10.0) -> None:
        """Create the catalog's first generation when missing (the required and optional spaces of
        ``vitrine.items``); an existing one is kept, and gains the optional spaces it lacks (empty)."""
        if self._ensured:
            return

        def ensure() -> None:
            with self.store.writes:
                if not self.store.exists():
                    self.store.create(
                        {**items.SPACES, **items.OPTIONAL_SPACES}, (BRAND, *self.filter_attributes)
                    )
                have = self.store.schema(fresh=True).dims
                missing = {s: d for s, d in items.OPTIONAL_SPACES.items() if s not in have}
                if missing:
                    self.store.change_spaces(add=missing)

        await self._run(timeout, ensure)
        self._ensured = True

    async def count(self, timeout: float | None = 10.0) -> int:
        return await self._run(timeout, self.store.count)

    # ---- reads ----

    def _fields(self, schema: Schema, include_vectors: bool) -> list[str]:
        fields = [
            mr.ID, mr.TAGS, mr.SPACES, mr.PAYLOAD,
            *map(mr.number_field, schema.numbers), *map(mr.keyword_field, schema.keywords),
        ]  # fmt: skip
        return fields + [mr.vector_field(s) for s in schema.dims] if include_vectors else fields

    async def search(
        self,
        space: str,
        vectors: Sequence[np.ndarray],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
    ) -> list[list[Candidate]]:
        if not vectors:
            raise InvalidInput("index rejected the input: search needs at least one query vector")
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"index rejected the input: k must be between 1 and {MAX_K}, got {k}")
        flt = items.index_filter(filters)

        def run() -> list[list[Candidate]]:
            schema = self.store.schema()
            if space not in schema.dims:
                raise InvalidInput(
                    f"index rejected the input: collection {quoted(self.collection)} has no vector space "
                    f"{quoted(space)}; its spaces: {list(schema.dims)}"
                )
            queries = mr.unit_rows(vectors, schema.dims[space], "query").tolist()
            clauses = [] if flt is None else [mr.expression(flt, schema.numbers, schema.keywords)]
            if space not in items.SPACES:
                clauses.append(mr.has_space(space))
            expr = " and ".join(f"({c})" for c in clauses)
            results = self.store.search(space, queries, k, expr, self._fields(schema, False), timeout)
            return [
                [
                    Candidate(
                        str(hit["id"]),
                        float(hit["distance"]),
                        items.product_of(
                            mr.item_of(
                                hit["entity"] | {mr.ID: hit["id"]}, schema.numbers, schema.keywords, False
                            )
                        ),
                    )
                    for hit in hits
                ]
                for hits in results
            ]

        return await self._run(timeout, run)

    async def get(
        self,
        ids: Sequence[str],
        timeout: float | None,
        *,
        spaces: Collection[str] | None = None,
    ) -> dict[str, tuple[Product, dict[str, np.ndarray]]]:
        """``spaces``: the vectors wanted (None: all; empty: none, and none are read)."""
        include_vectors = items.wants_vectors(spaces)

        def run() -> dict[str, tuple[Product, dict[str, np.ndarray]]]:
            schema = self.store.schema()
            rows = self.store.rows(list(dict.fromkeys(ids)), self._fields(schema, include_vectors), timeout)
            out = {}
            for row in rows:
                item = mr.item_of(row, schema.numbers, schema.keywords, include_vectors)
                out[item.id] = (items.product_of(item), items.vectors_of(item, spaces))
            return out

        return await self._run(timeout, run)

    # ---- writes ----

    def _check(self, item: Any, position: int, schema: Schema) -> None:
        """The FAISS service's checks of an upserted item, with its messages."""
        for name in item.vectors:
            if name not in schema.dims:
                raise InvalidInput(
                    f"index rejected the input: item {position} ({quoted(item.id)}): unknown vector space "
                    f"{quoted(name)}; collection {quoted(self.collection)} declares {list(schema.dims)}"
                )
        for name in items.SPACES:
            if name not in item.vectors:
                raise InvalidInput(
                    f"index rejected the input: item {position} ({quoted(item.id)}): no vector for space "
                    f"{quoted(name)}; every item needs one vector in each of {list(items.SPACES)}"
                )
        for f in item.keywords:
            if f not in schema.keywords:
                raise InvalidInput(
                    f"index rejected the input: item {position} ({quoted(item.id)}): unknown attribute "
                    f"{quoted(f)}; declared keyword fields: {sorted(schema.keywords)}"
                )

    async def upsert(self, records: Sequence[Record], timeout: float | None) -> None:
        """One upsert call: every space of every product in one row each; optional spaces the records do
        not name keep their stored vectors (read under this process's write lock)."""
        if not records:
            raise InvalidInput("index rejected the input: upsert needs at least one item")
        seen: set[str] = set()
        for i, r in enumerate(records):  # the pipeline keeps the last of an id; the index refuses two
            if r.product.id in seen:
                raise InvalidInput(
                    f"index rejected the input: duplicate id {quoted(r.product.id)} in one batch (item {i})"
                )
            seen.add(r.product.id)
        await self.ensure_collection(timeout)
        built = [items.item_of(r.product, r.vectors, self.filter_attributes) for r in records]

        def run() -> None:
            with self.store.writes:
                schema = self.store.schema(fresh=True)
                for position, item in enumerate(built):
                    self._check(item, position, schema)
                optional = schema.optional(list(items.SPACES))
                kept: dict[str, dict[str, list[float]]] = {}
                if optional:
                    fields = [mr.ID, mr.SPACES, *(mr.vector_field(s) for s in optional)]
                    for row in self.store.rows([it.id for it in built], fields, timeout):
                        has = set(row.get(mr.SPACES) or ())
                        kept[row[mr.ID]] = {s: list(row[mr.vector_field(s)]) for s in optional if s in has}
                rows = [mr.row_of(it, schema.dims, schema.keywords, kept.get(it.id, {})) for it in built]
                self.store.upsert(rows, timeout)

        await self._run(timeout, run)

    async def delete(self, ids: Sequence[str], timeout: float | None) -> int:
        if len(set(ids)) != len(ids):
            raise InvalidInput("index rejected the input: duplicate ids in one delete batch")

        def run() -> int:
            with self.store.writes:
                found = [r[mr.ID] for r in self.store.rows(list(ids), [mr.ID], timeout)]
                self.store.delete(found, timeout)
                return len(found)

        return await self._run(timeout, run)

    # ---- spaces filled after ingestion (recommendation and adapted vectors) and aliases ----

    async def add_space(self, space: str, dim: int, kind: str = "flat", timeout: float | None = 10.0) -> None:
        """Add an optional space: a new generation with the field, rows copied, the alias switched (see
        ``gateway.milvus_store``). Takes as long as the copy, whatever ``timeout`` says."""
        mr.vector_field(space)
        if not 1 <= dim <= 32768:
            raise InvalidInput(f"index rejected the input: dim must be 1-32768, got {dim}")

        def run() -> None:
            if space in self.store.schema(fresh=True).dims:
                raise _AlreadyExists(
                    f"collection {quoted(self.collection)} already has a space {quoted(space)}"
                )
            self.store.change_spaces(add={space: dim})

        await self._run(None, run)

    async def drop_space(self, space: str, timeout: float | None = 30.0) -> None:
        def run() -> None:
            if space in items.SPACES:
                raise Unavailable(
                    Dependency.INDEX, f"space {quoted(space)} is required; it cannot be dropped"
                )
            if space not in self.store.schema(fresh=True).dims:
                raise Unavailable(
                    Dependency.INDEX,
                    f"collection {quoted(self.collection)} has no vector space {quoted(space)}",
                )
            self.store.change_spaces(drop=space)

        await self._run(None, run)

    async def upsert_vectors(
        self, space: str, vectors: Mapping[str, np.ndarray], timeout: float | None
    ) -> list[str]:
        """Set ``space``'s vector of existing products; returns the ids that are not in the catalog."""
        pairs = list(vectors.items())

        def run() -> list[str]:
            missing: list[str] = []
            with self.store.writes:
                schema = self.store.schema(fresh=True)
                if space not in schema.dims:
                    raise InvalidInput(
                        f"index rejected the input: collection {quoted(self.collection)} has no vector space "
                        f"{quoted(space)}; its spaces: {list(schema.dims)}"
                    )
                for start in range(0, len(pairs), UPSERT_VECTORS_BATCH):
                    chunk = dict(pairs[start : start + UPSERT_VECTORS_BATCH])
                    unit = mr.unit_rows(list(chunk.values()), schema.dims[space], f"space {quoted(space)}")
                    new = dict(zip(chunk, unit.tolist(), strict=True))
                    rows = self.store.rows(list(chunk), ["*"], timeout)
                    for row in rows:
                        row[mr.vector_field(space)] = new[row[mr.ID]]
                        row[mr.SPACES] = [*(s for s in row.get(mr.SPACES) or () if s != space), space]
                    found = {row[mr.ID] for row in rows}
                    missing += [pid for pid in chunk if pid not in found]
                    self.store.upsert(rows, timeout)
            return missing

        return await self._run(timeout, run)

    async def set_alias(self, alias: str, collection: str, timeout: float | None = 10.0) -> str:
        return await self._run(timeout, self.store.set_alias, alias, collection)

    async def list_aliases(self, timeout: float | None = 10.0) -> dict[str, str]:
        return await self._run(timeout, self.store.aliases)

    async def spaces(self, timeout: float | None = 10.0) -> list[str]:
        return list((await self._run(timeout, self.store.schema, True)).dims)


class _AlreadyExists(GatewayError):
    code = grpc.StatusCode.ALREADY_EXISTS
