"""What the gateway's layers share: the query and result values, their limits, and the client protocols.

Both transports (``gateway.servicer``, ``gateway.http``), the call layer (``gateway.calls``), the search
pipeline (``gateway.pipeline``) and recommendations (``gateway.recommend``) speak these plain values; the
clients the pipeline is given (Triton, the index service, or whatever a test supplies) implement the
protocols. Nothing here depends on a transport or a dependency's wire format.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

import numpy as np

from gateway.errors import InvalidInput
from vitrine import images
from vitrine.catalog import Product
from vitrine.filters import FieldFilter


class TextMatch(str, Enum):
    IMAGE = "image"  # text query vs product image vectors (CLIP's cross-modal space)
    TITLE = "title"  # text query vs product title vectors
    FUSION = "fusion"  # both, fused
    LEXICAL = "lexical"  # BM25 over the product's words (the index's lexical space); embeds nothing
    MINILM = "minilm"  # all-MiniLM-L6-v2 query vector vs product title-and-description vectors
    LEXICAL_MINILM = "lexical_minilm"  # lexical and MiniLM, fused
    ALL = "all"  # lexical, MiniLM and CLIP (image and title), fused (gateway.text_match)


class Fusion(str, Enum):
    RRF = "rrf"
    WEIGHTED = "weighted"


DEFAULT_IMAGE_WEIGHT = 0.5
"""A hybrid query's weight on the image side when the caller gives none."""
MAX_TOP_K = 100
MAX_RERANK_DEPTH = 200
DEFAULT_TOP_K = 10
DEFAULT_RERANK_DEPTH = 50
MAX_ID_CHARS = 512
"""Longest product id accepted; longer ones are refused before they reach the index."""
MAX_IDS = 1000
"""Most ids one get or delete may name."""


def check_ids(ids: Sequence[str]) -> None:
    """Ids a call names: at least one, none empty, each of bounded length. Messages say which position
    failed and never repeat an id, so a hostile id cannot inflate a status."""
    if not ids:
        raise InvalidInput("give at least one non-empty product id")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"{len(ids)} ids; at most {MAX_IDS} per call")
    for i, pid in enumerate(ids):
        if not pid:
            raise InvalidInput(f"id {i} is empty")
        if len(pid) > MAX_ID_CHARS:
            raise InvalidInput(f"id {i} is {len(pid)} characters; the limit is {MAX_ID_CHARS}")


def check_product(product: Product) -> None:
    """Everything about a product that can be decided before it costs a read, an embedding or an index
    write."""
    if not product.id:
        raise InvalidInput("missing product id")
    if len(product.id) > MAX_ID_CHARS:
        raise InvalidInput(f"product id is {len(product.id)} characters; the limit is {MAX_ID_CHARS}")
    if not product.title.strip():
        raise InvalidInput(f"product {product.id!r}: missing title")
    if not math.isfinite(product.price) or product.price < 0:
        raise InvalidInput(
            f"product {product.id!r}: price must be a finite non-negative number, got {product.price!r}"
        )


def require_photo(product: Product, image: bytes) -> None:
    """A product is stored with its photo (its image vector is required in every catalog)."""
    if not image:
        raise InvalidInput(f"product {product.id!r}: missing image")


def check_image_header(image: bytes) -> None:
    """Vitrine's image rules on the header (``vitrine.images``): what Triton would refuse is refused
    here, before it costs a round trip."""
    try:
        images.check_header(image)
    except images.ImageRejected as exc:
        raise InvalidInput(str(exc)) from None


@dataclass(frozen=True)
class Candidate:
    id: str
    score: float
    product: Product


@dataclass(frozen=True)
class Record:
    """One product as the index stores it: its vector in every space (``vitrine.items.SPACES``)."""

    product: Product
    vectors: dict[str, np.ndarray]


class Embedder(Protocol):
    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        """Unit-norm 512-d embedding and whether the text was truncated."""
        ...

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray: ...


@runtime_checkable
class SentenceEmbedder(Protocol):
    async def embed_minilm(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        """Unit-norm 384-d all-MiniLM-L6-v2 embedding (the ``minilm`` space) and whether it was cut."""
        ...


class Reranker(Protocol):
    async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray: ...


class ItemSource(Protocol):
    """One catalog, read: products with a vector in each named space (search and recommendations)."""

    async def search(
        self,
        space: str,
        vectors: Sequence[np.ndarray],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
    ) -> list[list[Candidate]]: ...

    async def get(
        self, ids: Sequence[str], timeout: float | None, *, spaces: Collection[str] | None = None
    ) -> dict[str, tuple[Product, dict[str, np.ndarray]]]:
        """The products found and their vectors: every space's, or with ``spaces`` only those (an empty
        ``spaces`` reads no vectors at all)."""
        ...


@runtime_checkable
class TextSource(Protocol):
    """A catalog searched by its words (the index's lexical space, ``vitrine.items.LEXICAL``). Scores
    are BM25 relevance, higher better, and not comparable with cosine: fuse them by rank."""

    async def search_text(
        self,
        space: str,
        texts: Sequence[str],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
        prefix: bool = False,
    ) -> list[list[Candidate]]: ...


class Retriever(ItemSource, Protocol):
    """One catalog, read and written."""

    async def upsert(self, records: Sequence[Record], timeout: float | None) -> None:
        """Every space of every record in one write."""
        ...

    async def delete(self, ids: Sequence[str], timeout: float | None) -> int: ...


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    image: bytes = b""
    image_weight: float = DEFAULT_IMAGE_WEIGHT
    top_k: int = DEFAULT_TOP_K
    filters: tuple[FieldFilter, ...] = ()
    rerank: bool = False
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    text_match: TextMatch | None = None


@dataclass
class Hit:
    product: Product
    retrieval_score: float
    rerank_score: float | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    text_truncated: bool = False
    reranked: bool = False


@dataclass
class SimilarResult:
    by_image: list[Hit]
    by_title: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
