"""The pipeline's index client (grpc.aio): one collection per catalog, one item per product.

How a product becomes an item (spaces, attributes, payload, filters) is ``vitrine.items``; this module
only moves items over gRPC. Every call hands ``grpc.RpcError`` to ``gateway.errors.from_dependency``,
the one translation point, and passes the caller's remaining time as the index's own deadline.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from gateway.errors import Dependency, from_dependency
from gateway.triton_client import CHANNEL_OPTIONS
from gateway.types import Candidate, Record
from vitrine import items
from vitrine.catalog import Product
from vitrine.filters import FieldFilter
from vitrine.index.v2 import index_pb2 as ipb
from vitrine.index.v2 import index_pb2_grpc as ipb_grpc

UPSERT_VECTORS_BATCH = 1000
"""Items per UpsertVectors call: the index service's batch limit."""


class IndexRetriever:
    """Retriever over the index service: the catalog is the collection ``collection``, searched per space."""

    def __init__(
        self,
        address: str,
        collection: str,
        filter_attributes: Sequence[str],
        index_kind: str = "flat",
        api_key: str = "",
    ) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self.collection = collection
        self.filter_attributes = tuple(filter_attributes)
        self.index_kind = index_kind
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = ipb_grpc.IndexServiceStub(self.channel)
        self._ensured = False

    async def close(self) -> None:
        await self.channel.close(None)

    async def ready(self, timeout: float = 2.0) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_dependency(Dependency.INDEX, exc) from exc

    async def ensure_collection(self, timeout: float | None = 10.0) -> None:
        """Create the catalog's collection when missing; an existing one is kept (ingestion is idempotent)."""
        if self._ensured:
            return
        spec = items.collection_spec(self.collection, self.filter_attributes, self.index_kind)
        try:
            await self.stub.CreateCollection(
                ipb.CreateCollectionRequest(spec=spec), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise from_dependency(Dependency.INDEX, exc) from exc
            await self._ensure_lexical(timeout)
            await self._ensure_optional_spaces(timeout)
        self._ensured = True

    async def _ensure_optional_spaces(self, timeout: float | None) -> None:
        """A catalog created before one of ``items.OPTIONAL_SPACES`` existed gains it, empty (products
        re-ingested fill it; searches on it see only products that have a vector there)."""
        have = set(await self.spaces(timeout))
        for space, dim in items.OPTIONAL_SPACES.items():
            if space in have:
                continue
            spec = ipb.VectorSpec(
                name=space,
                dim=dim,
                metric=ipb.METRIC_INNER_PRODUCT,
                index=ipb.IndexSpec(kind=items.INDEX_KINDS[self.index_kind]),
            )
            request = ipb.AddVectorSpaceRequest(collection=self.collection, vector=spec)
            try:
                await self.stub.AddVectorSpace(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise from_dependency(Dependency.INDEX, exc) from exc

    async def _ensure_lexical(self, timeout: float | None) -> None:
        """A catalog created before it had a lexical space gains one, filled from its stored products
        (one transaction in the index); one added meanwhile by another gateway is fine."""
        stats = await self._call(self.stub.GetStats, ipb.GetStatsRequest(name=self.collection), timeout)
        if any(lex.name == items.LEXICAL for lex in stats.spec.lexical):
            return
        request = ipb.AddLexicalSpaceRequest(collection=self.collection, lexical=items.lexical_spec())
        try:
            await self.stub.AddLexicalSpace(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise from_dependency(Dependency.INDEX, exc) from exc

    async def search(
        self,
        space: str,
        vectors: Sequence[np.ndarray],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
    ) -> list[list[Candidate]]:
        req = ipb.SearchRequest(
            collection=self.collection,
            vector=space,
            queries=[ipb.Query(vector=np.asarray(v, dtype=np.float32).tolist()) for v in vectors],
            k=k,
            include_payload=True,
            include_attributes=True,  # the price is a stored number (vitrine.items)
        )
        flt = items.index_filter(filters)
        if flt is not None:
            req.filter.CopyFrom(flt)
        resp = await self._call(self.stub.Search, req, timeout)
        return [
            [Candidate(h.id, h.score, items.product_of(h.item, h.id)) for h in r.hits] for r in resp.results
        ]

    async def search_text(
        self,
        space: str,
        texts: Sequence[str],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
        prefix: bool = False,
    ) -> list[list[Candidate]]:
        """BM25 over the lexical space ``space``: one ranked list per text (``gateway.types.TextSource``)."""
        req = ipb.SearchRequest(
            collection=self.collection,
            vector=space,
            queries=[ipb.Query(text=text) for text in texts],
            k=k,
            params=ipb.SearchParams(prefix=prefix),
            include_payload=True,
            include_attributes=True,
        )
        flt = items.index_filter(filters)
        if flt is not None:
            req.filter.CopyFrom(flt)
        resp = await self._call(self.stub.Search, req, timeout)
        return [
            [Candidate(h.id, h.score, items.product_of(h.item, h.id)) for h in r.hits] for r in resp.results
        ]

    async def get(
        self,
        ids: Sequence[str],
        timeout: float | None,
        *,
        spaces: Collection[str] | None = None,
    ) -> dict[str, tuple[Product, dict[str, np.ndarray]]]:
        """``spaces``: the vectors wanted (None: all; empty: none, and none are sent)."""
        include_vectors = items.wants_vectors(spaces)
        resp = await self._call(
            self.stub.Get,
            ipb.GetRequest(collection=self.collection, ids=list(ids), include_vectors=include_vectors),
            timeout,
        )
        return {it.id: (items.product_of(it), items.vectors_of(it, spaces)) for it in resp.items}

    async def upsert(self, records: Sequence[Record], timeout: float | None) -> None:
        """One Upsert call: every space of every product in one atomic write."""
        await self.ensure_collection(timeout)
        await self._call(
            self.stub.Upsert,
            ipb.UpsertRequest(
                collection=self.collection,
                items=[items.item_of(r.product, r.vectors, self.filter_attributes) for r in records],
            ),
            timeout,
        )

    async def delete(self, ids: Sequence[str], timeout: float | None) -> int:
        resp = await self._call(
            self.stub.Delete, ipb.DeleteRequest(collection=self.collection, ids=list(ids)), timeout
        )
        return int(resp.deleted)

    # ---- spaces filled after ingestion (recommendation and adapted vectors) and aliases ----

    async def add_space(
        self, space: str, dim: int, kind: str = "flat", timeout: float | None = 10.0
    ) -> ipb.CollectionStats:
        """Add an optional cosine space to the catalog's collection; items gain vectors in it through
        ``upsert_vectors`` and keep them across product upserts that do not name it."""
        spec = ipb.VectorSpec(
            name=space,
            dim=dim,
            metric=ipb.METRIC_INNER_PRODUCT,
            index=ipb.IndexSpec(kind=items.INDEX_KINDS[kind]),
        )
        return await self._call(
            self.stub.AddVectorSpace,
            ipb.AddVectorSpaceRequest(collection=self.collection, vector=spec),
            timeout,
        )

    async def upsert_vectors(
        self, space: str, vectors: Mapping[str, np.ndarray], timeout: float | None
    ) -> list[str]:
        """Set ``space``'s vector of existing products; returns the ids that are not in the catalog.

        Sent in calls of at most ``UPSERT_VECTORS_BATCH`` items, each one atomic transaction.
        """
        pairs = list(vectors.items())
        missing: list[str] = []
        for start in range(0, len(pairs), UPSERT_VECTORS_BATCH):
            request = ipb.UpsertVectorsRequest(
                collection=self.collection,
                vector=space,
                items=[
                    ipb.ItemVector(
                        id=pid, vector=ipb.Vector(values=np.asarray(v, dtype=np.float32).reshape(-1).tolist())
                    )
                    for pid, v in pairs[start : start + UPSERT_VECTORS_BATCH]
                ],
            )
            resp = await self._call(self.stub.UpsertVectors, request, timeout)
            missing.extend(resp.missing_ids)
        return missing

    async def set_alias(self, alias: str, collection: str, timeout: float | None = 10.0) -> str:
        """Point ``alias`` at ``collection`` atomically; returns the collection it pointed to before."""
        resp = await self._call(
            self.stub.SetAlias, ipb.SetAliasRequest(alias=alias, collection=collection), timeout
        )
        return str(resp.previous)

    async def list_aliases(self, timeout: float | None = 10.0) -> dict[str, str]:
        """alias -> collection."""
        resp = await self._call(self.stub.ListAliases, ipb.ListAliasesRequest(), timeout)
        return {a.alias: a.collection for a in resp.aliases}

    async def drop_space(self, space: str, timeout: float | None = 30.0) -> None:
        """Drop an optional space (a retired recommender version's vectors)."""
        await self._call(
            self.stub.DropVectorSpace,
            ipb.DropVectorSpaceRequest(collection=self.collection, vector=space),
            timeout,
        )

    async def spaces(self, timeout: float | None = 10.0) -> list[str]:
        """The collection's space names, in stored order."""
        stats = await self._call(self.stub.GetStats, ipb.GetStatsRequest(name=self.collection), timeout)
        return [v.name for v in stats.spec.vectors]
