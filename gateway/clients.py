"""The pipeline's real clients: Triton (tritonclient.grpc.aio) and the index service (grpc.aio).

Every call goes through ``_call``-style wrappers that hand dependency exceptions to
``gateway.errors.from_dependency``, the one translation point, and pass the caller's remaining time as
the dependency's own deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from gateway.errors import Dependency, GatewayError, InvalidInput, from_dependency
from gateway.pipeline import Candidate, FieldFilter, Record
from vitrine import images
from vitrine import triton as triton_request
from vitrine.catalog import CATEGORY_SEPARATOR, Product
from vitrine.contracts import EMBED_DIM, EMBED_IMAGE_IO, EMBED_TEXT_IO, RERANK_IO, EnsembleIO, Tensor
from vitrine.index.v1 import index_pb2 as ipb
from vitrine.index.v1 import index_pb2_grpc as ipb_grpc

ATTR_PREFIX = "attr."

# A dependency that restarts should be found again within a couple of seconds, not after gRPC's default
# reconnect backoff (which grows to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
CATEGORY_TAG = "category:"


class TritonModels:
    """Embedder and Reranker over one Triton endpoint."""

    def __init__(self, url: str) -> None:
        from tritonclient.grpc import aio as triton_aio

        self.url = url
        self.client = triton_aio.InferenceServerClient(url=url, channel_args=CHANNEL_OPTIONS)

    async def close(self) -> None:
        await self.client.close()

    async def ready(self, timeout: float = 2.0) -> bool:
        """Server live and every ensemble the gateway calls loaded."""
        try:
            async with asyncio.timeout(timeout):
                if not await self.client.is_server_ready():
                    return False
                for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO, RERANK_IO):
                    if not await self.client.is_model_ready(io.model.value):
                        return False
        except Exception:
            return False
        return True

    async def _infer(
        self, io: EnsembleIO, values: dict[Tensor, Sequence[Any]], timeout: float | None
    ) -> dict[Tensor, np.ndarray]:
        """One request built from the ensemble's contract (batch axis and dtypes are declared, not probed)."""
        try:
            result = await self.client.infer(
                io.model.value,
                triton_request.inputs(io, values),
                outputs=triton_request.outputs(io),
                client_timeout=timeout,
            )
        except GatewayError:
            raise
        except Exception as exc:
            raise from_dependency(Dependency.TRITON, exc) from exc
        out = {}
        for o in io.outputs:
            arr = triton_request.output(io, result, o)
            if arr is None:
                raise from_dependency(
                    Dependency.TRITON, RuntimeError(f"{io.model.value} returned no {o.value}")
                )
            out[o] = arr
        return out

    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        res = await self._infer(EMBED_TEXT_IO, {Tensor.TEXT: [text]}, timeout)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(EMBED_DIM), bool(res[Tensor.TRUNCATED].any())

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        res = await self._infer(EMBED_IMAGE_IO, {Tensor.IMAGE: [image]}, timeout)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(EMBED_DIM)

    async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray:
        res = await self._infer(RERANK_IO, {Tensor.QUERY: [query], Tensor.PASSAGES: list(passages)}, timeout)
        return res[Tensor.SCORES].astype(np.float32).reshape(len(passages))


def product_of(item: ipb.Item, pid: str = "") -> Product:
    """Rebuild a product from the payload stored next to its vector (no second lookup on the hot path)."""
    p = item.payload
    extra = dict(p.extra)
    category = tuple(c for c in extra.get("category", "").split(CATEGORY_SEPARATOR) if c)
    return Product(
        id=pid or item.id,
        title=p.title,
        description=p.description,
        category=category,
        brand=extra.get("brand", ""),
        price=float(extra.get("price", "0") or 0.0),
        image=p.image_uri,
        attributes={k[len(ATTR_PREFIX) :]: v for k, v in extra.items() if k.startswith(ATTR_PREFIX)},
    )


def category_tags(category: Sequence[str]) -> list[str]:
    """Every level's name and every path prefix, so a filter on "Shoes" or "Fashion > Shoes" matches."""
    tags = set()
    for i, name in enumerate(category):
        tags.add(CATEGORY_TAG + name)
        tags.add(CATEGORY_TAG + CATEGORY_SEPARATOR.join(category[: i + 1]))
    return sorted(tags)


class IndexRetriever:
    """Retriever over the index service: two collections per catalog, same attributes and payload."""

    def __init__(self, address: str, filter_attributes: Sequence[str], index_kind: str = "flat") -> None:
        self.address = address
        self.filter_attributes = tuple(filter_attributes)
        self.index_kind = index_kind
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = ipb_grpc.IndexServiceStub(self.channel)
        self._ensured: set[str] = set()

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
            return await method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_dependency(Dependency.INDEX, exc) from exc

    async def ensure_collection(self, name: str, timeout: float | None = 10.0) -> None:
        """Create the collection when missing; an existing one is kept (ingestion is idempotent)."""
        if name in self._ensured:
            return
        kind = {
            "flat": ipb.INDEX_KIND_FLAT,
            "hnsw": ipb.INDEX_KIND_HNSW,
            "ivf_flat": ipb.INDEX_KIND_IVF_FLAT,
        }[self.index_kind]
        spec = ipb.CollectionSpec(
            name=name,
            dim=EMBED_DIM,
            metric=ipb.METRIC_INNER_PRODUCT,
            index=ipb.IndexSpec(kind=kind),
            schema=ipb.AttributeSchema(
                number_fields=["price"], keyword_fields=["brand", *self.filter_attributes]
            ),
        )
        try:
            await self.stub.CreateCollection(ipb.CreateCollectionRequest(spec=spec), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise from_dependency(Dependency.INDEX, exc) from exc
        self._ensured.add(name)

    def _filter(self, filters: Sequence[FieldFilter]) -> ipb.Filter | None:
        clauses = []
        for f in filters:
            if f.field == "category":
                clauses.append(ipb.Filter(tags=ipb.TagMatch(any=[CATEGORY_TAG + v for v in f.any_of])))
            elif f.field == "price":
                rng = ipb.NumberRange(field="price")
                if f.min is not None:
                    rng.gte = f.min
                if f.max is not None:
                    rng.lte = f.max
                clauses.append(ipb.Filter(range=rng))
            else:
                clauses.append(ipb.Filter(keyword=ipb.KeywordIn(field=f.field, values=list(f.any_of))))
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else ipb.Filter(all=ipb.FilterList(filters=clauses))

    async def search(
        self,
        collection: str,
        vectors: Sequence[np.ndarray],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
    ) -> list[list[Candidate]]:
        req = ipb.SearchRequest(
            collection=collection,
            queries=[ipb.Query(vector=np.asarray(v, dtype=np.float32).tolist()) for v in vectors],
            k=k,
            include_payload=True,
        )
        flt = self._filter(filters)
        if flt is not None:
            req.filter.CopyFrom(flt)
        resp = await self._call(self.stub.Search, req, timeout)
        return [[Candidate(h.id, h.score, product_of(h.item, h.id)) for h in r.hits] for r in resp.results]

    async def get(
        self, collection: str, ids: Sequence[str], timeout: float | None
    ) -> dict[str, tuple[Product, np.ndarray]]:
        resp = await self._call(
            self.stub.Get, ipb.GetRequest(collection=collection, ids=list(ids), include_vectors=True), timeout
        )
        return {it.id: (product_of(it), np.asarray(it.vector, dtype=np.float32)) for it in resp.items}

    def _item(self, record: Record) -> ipb.Item:
        p = record.product
        extra = {"category": p.category_path(), "brand": p.brand, "price": repr(float(p.price))}
        extra.update({ATTR_PREFIX + k: v for k, v in p.attributes.items()})
        keywords = {"brand": p.brand} if p.brand else {}
        keywords.update({k: v for k, v in p.attributes.items() if k in self.filter_attributes})
        return ipb.Item(
            id=p.id,
            vector=np.asarray(record.vector, dtype=np.float32).tolist(),
            numbers={"price": float(p.price)},
            keywords=keywords,
            tags=category_tags(p.category),
            payload=ipb.Payload(title=p.title, description=p.description, image_uri=p.image, extra=extra),
        )

    async def upsert(self, collection: str, records: Sequence[Record], timeout: float | None) -> None:
        await self.ensure_collection(collection, timeout)
        await self._call(
            self.stub.Upsert,
            ipb.UpsertRequest(collection=collection, items=[self._item(r) for r in records]),
            timeout,
        )

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None) -> int:
        resp = await self._call(
            self.stub.Delete, ipb.DeleteRequest(collection=collection, ids=list(ids)), timeout
        )
        return int(resp.deleted)


def check_image_header(image: bytes) -> None:
    """Vitrine's image rules on the header (``vitrine.images``): what Triton would refuse is refused
    here, before it costs a round trip."""
    try:
        images.check_header(image)
    except images.ImageRejected as exc:
        raise InvalidInput(str(exc)) from None
