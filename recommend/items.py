"""The item side of training: every product's content vectors and attributes, as arrays.

Content is what the catalog's collection already holds: the CLIP image and title vectors of each product,
read from the index service and rebuilt by the kernel's item layout (``vitrine.items``), so category,
brand, colour and price come from the same record. Attributes become vocabulary ids; the vocabularies
are saved in the trained model's manifest so the same ids are used at deploy time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vitrine.catalog import Product
from vitrine.contracts import EMBED_DIM
from vitrine.items import IMAGE, TITLE, product_of

CONTENT_DIM = 2 * EMBED_DIM
PRICE_BUCKETS = 12
"""Log-spaced price buckets between 1 and 5,000."""

UNKNOWN = "<unk>"


def price_bucket(price: float) -> int:
    p = min(max(price, 1.0), 5000.0)
    return min(PRICE_BUCKETS - 1, int(math.log(p) / math.log(5000.0) * PRICE_BUCKETS))


def vocabulary(values: Sequence[str]) -> list[str]:
    return [UNKNOWN, *sorted(set(values) - {UNKNOWN})]


@dataclass
class ItemTable:
    ids: list[str]
    content: np.ndarray  # [n, CONTENT_DIM] float32; rows of zeros where a product had no vectors
    category: np.ndarray  # [n] int64 vocabulary ids
    brand: np.ndarray
    color: np.ndarray
    price_bucket: np.ndarray
    leaves: list[str]  # category path per item (diversity metrics)
    titles: list[str]
    vocab: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.ids)}


def _encode(values: Sequence[str], vocab: list[str]) -> np.ndarray:
    pos = {v: i for i, v in enumerate(vocab)}
    return np.asarray([pos.get(v, 0) for v in values], dtype=np.int64)


def build_table(
    products: Sequence[Product],
    content: Mapping[str, np.ndarray] | None = None,
    vocab: dict[str, list[str]] | None = None,
) -> ItemTable:
    """``content[id]``: the product's image and title vectors concatenated (missing: zeros)."""
    leaves = [p.category_path() for p in products]
    brands = [p.brand for p in products]
    colors = [p.attributes.get("color", "") for p in products]
    vocab = vocab or {
        "category": vocabulary(leaves),
        "brand": vocabulary(brands),
        "color": vocabulary(colors),
    }
    matrix = np.zeros((len(products), CONTENT_DIM), dtype=np.float32)
    for i, p in enumerate(products):
        if content is not None and p.id in content:
            matrix[i] = np.asarray(content[p.id], dtype=np.float32).reshape(CONTENT_DIM)
    return ItemTable(
        ids=[p.id for p in products],
        content=matrix,
        category=_encode(leaves, vocab["category"]),
        brand=_encode(brands, vocab["brand"]),
        color=_encode(colors, vocab["color"]),
        price_bucket=np.asarray([price_bucket(p.price) for p in products], dtype=np.int64),
        leaves=leaves,
        titles=[p.title for p in products],
        vocab=vocab,
    )


def from_index(
    address: str,
    collection: str,
    ids: Sequence[str],
    batch: int = 256,
    vocab: dict[str, list[str]] | None = None,
) -> ItemTable:
    """Products and their image + title vectors from the index service (the catalog's collection)."""
    import grpc

    from vitrine.index.v2 import index_pb2 as ipb
    from vitrine.index.v2 import index_pb2_grpc as ipb_grpc

    products: list[Product] = []
    content: dict[str, np.ndarray] = {}
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        for start in range(0, len(ids), batch):
            resp = stub.Get(
                ipb.GetRequest(
                    collection=collection, ids=list(ids[start : start + batch]), include_vectors=True
                ),
                timeout=60,
            )
            for item in resp.items:
                products.append(product_of(item))
                vecs = item.vectors
                if IMAGE in vecs and TITLE in vecs:
                    content[item.id] = np.concatenate(
                        [
                            np.asarray(vecs[IMAGE].values, np.float32),
                            np.asarray(vecs[TITLE].values, np.float32),
                        ]
                    )
    if not products:
        raise ValueError(f"none of {len(ids)} catalog ids is in collection {collection!r} at {address}")
    return build_table(products, content, vocab)
