"""Builders shared by the index service tests: seeded items with known attributes."""

from __future__ import annotations

import numpy as np

from vitrine.index.v2 import index_pb2 as pb

SPACE = "v"
"""The one vector space of the collections ``spec`` builds (searches may leave it unnamed)."""

CATEGORIES = ("shoes", "bags", "hats", "coats")
TAGS = ("red", "blue", "leather", "sale", "new")


def spec(
    name: str,
    dim: int,
    *,
    metric: int = pb.METRIC_L2,
    kind: int = pb.INDEX_KIND_FLAT,
    **index: int,
) -> pb.CollectionSpec:
    return multi_spec(name, {SPACE: vector_spec(dim, metric=metric, kind=kind, **index)})


def vector_spec(
    dim: int, *, metric: int = pb.METRIC_L2, kind: int = pb.INDEX_KIND_FLAT, **index: int
) -> pb.VectorSpec:
    return pb.VectorSpec(
        dim=dim,
        metric=metric,  # type: ignore[arg-type]
        index=pb.IndexSpec(kind=kind, **index),  # type: ignore[arg-type]
    )


def multi_spec(name: str, spaces: dict[str, pb.VectorSpec]) -> pb.CollectionSpec:
    vectors = []
    for space, vs in spaces.items():
        named = pb.VectorSpec()
        named.CopyFrom(vs)
        named.name = space
        vectors.append(named)
    return pb.CollectionSpec(
        name=name,
        vectors=vectors,
        schema=pb.AttributeSchema(number_fields=["price"], keyword_fields=["category", "brand"]),
    )


def item(item_id: str, vector: object, **kwargs: object) -> pb.Item:
    """An item of a ``spec`` collection: its one vector in ``SPACE``."""
    values = vector.tolist() if isinstance(vector, np.ndarray) else list(vector)  # type: ignore[call-overload]
    return pb.Item(id=item_id, vectors={SPACE: pb.Vector(values=values)}, **kwargs)  # type: ignore[arg-type]


def vector_of(it: pb.Item, space: str = SPACE) -> list[float]:
    return list(it.vectors[space].values)


def attributes(i: int) -> tuple[float, str, str, list[str]]:
    """Deterministic attributes of item i: price, category, brand, tags."""
    price = float((i * 37) % 1000)
    category = CATEGORIES[i % len(CATEGORIES)]
    brand = f"brand{i % 50}"
    tags = [t for j, t in enumerate(TAGS) if (i >> j) & 1]
    return price, category, brand, tags


def items(vectors: np.ndarray, start: int = 0, prefix: str = "p") -> list[pb.Item]:
    out = []
    for offset, vec in enumerate(vectors):
        i = start + offset
        price, category, brand, tags = attributes(i)
        out.append(
            pb.Item(
                id=f"{prefix}{i}",
                vectors={SPACE: pb.Vector(values=vec.tolist())},
                numbers={"price": price},
                keywords={"category": category, "brand": brand},
                tags=tags,
                payload=pb.Payload(title=f"product {i}", image_uri=f"s3://images/{i}.jpg"),
            )
        )
    return out


def attribute_columns(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[set[str]]]:
    cols = [attributes(i) for i in range(n)]
    price = np.array([c[0] for c in cols])
    category = np.array([c[1] for c in cols])
    brand = np.array([c[2] for c in cols])
    return price, category, brand, [set(c[3]) for c in cols]


async def load(stub: object, name: str, vectors: np.ndarray, batch: int = 1000, offset: int = 0) -> None:
    """Upsert ``vectors`` as items ``p{offset}``, ``p{offset + 1}``, ..."""
    for start in range(0, len(vectors), batch):
        await stub.Upsert(  # type: ignore[attr-defined]
            pb.UpsertRequest(collection=name, items=items(vectors[start : start + batch], offset + start))
        )


def search_request(name: str, queries: np.ndarray, k: int, **kwargs: object) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=name,
        queries=[pb.Query(vector=q.tolist()) for q in queries],
        k=k,
        **kwargs,  # type: ignore[arg-type]
    )


def ids_of(reply: pb.SearchResponse) -> list[list[int]]:
    return [[int(h.id[1:]) for h in r.hits] for r in reply.results]
