"""Which index the gateway talks to, chosen by its address (``GatewayConfig.index_address``).

- ``host:port``: the FAISS index service (``gateway.index_client``), the default for one machine;
- ``milvus://host:port``: a Milvus server or cluster (``gateway.milvus_index``);
- ``milvus-lite:<path>.db``: milvus-lite embedded in this process, for local trials (one process per
  file: tools that must reach the same data while a gateway serves it use a ``milvus-lite server``
  process and ``milvus://``, as ``vitrine up --index milvus-lite`` does).

Both backends implement ``IndexBackend``; the contract suite (tests/contract) runs the same tests on both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from gateway.types import Retriever

MILVUS_SCHEMES = ("milvus://", "milvus-lite:")


class IndexBackend(Retriever, Protocol):
    """Everything the gateway and the operations tools ask of an index, beyond search and writes."""

    address: str
    collection: str

    async def close(self) -> None: ...

    async def ready(self, timeout: float = 2.0) -> bool: ...

    async def ensure_collection(self, timeout: float | None = 10.0) -> None: ...

    async def add_space(
        self, space: str, dim: int, kind: str = "flat", timeout: float | None = 10.0
    ) -> object: ...

    async def drop_space(self, space: str, timeout: float | None = 30.0) -> None: ...

    async def upsert_vectors(
        self, space: str, vectors: Mapping[str, np.ndarray], timeout: float | None
    ) -> list[str]: ...

    async def set_alias(self, alias: str, collection: str, timeout: float | None = 10.0) -> str: ...

    async def list_aliases(self, timeout: float | None = 10.0) -> dict[str, str]: ...

    async def spaces(self, timeout: float | None = 10.0) -> list[str]: ...


def is_milvus(address: str) -> bool:
    return address.startswith(MILVUS_SCHEMES)


def open_index(
    address: str,
    collection: str,
    filter_attributes: Sequence[str] = (),
    index_kind: str = "flat",
    api_key: str = "",
) -> IndexBackend:
    """The index client for ``address`` (nothing is contacted until the first call)."""
    if is_milvus(address):
        from gateway.milvus_index import MilvusIndex

        return MilvusIndex(address, collection, filter_attributes, index_kind, api_key)
    from gateway.index_client import IndexRetriever

    return IndexRetriever(address, collection, filter_attributes, index_kind, api_key)


async def count_items(address: str, collection: str, timeout: float = 10.0) -> int:
    """How many products the catalog holds (0 when it does not exist yet)."""
    from gateway.errors import GatewayError

    if is_milvus(address):
        from gateway.milvus_index import MilvusIndex

        index = MilvusIndex(address, collection, ())
        try:
            return await index.count(timeout)
        except GatewayError:
            return 0
        finally:
            await index.close()
    import grpc

    from vitrine.index.v2 import index_pb2, index_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            stats = await index_pb2_grpc.IndexServiceStub(channel).GetStats(
                index_pb2.GetStatsRequest(name=collection), timeout=timeout
            )
        except grpc.RpcError:
            return 0
        return int(stats.count)
