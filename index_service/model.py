"""The index's values: collection specs, items, search parameters, hits and statistics.

Plain frozen dataclasses: the registry, the writes, the reads and the collections work on these alone.
Protobuf becomes these, and these protobuf, at two edges only: the servicer's (``convert.py``) and
storage's, which keeps specs and item records in their protobuf wire form (``codec.py``). Filters have
their own module, ``filters.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


class Metric(enum.IntEnum):
    """Numbered as on the wire and in stored specs."""

    UNSPECIFIED = 0
    INNER_PRODUCT = 1
    L2 = 2


class IndexKind(enum.IntEnum):
    """Numbered as on the wire and in stored specs."""

    UNSPECIFIED = 0
    FLAT = 1
    IVF_FLAT = 2
    IVF_PQ = 3
    HNSW = 4


@dataclass(frozen=True)
class IndexSpec:
    """One space's FAISS index; 0 means "the default" for every number (``specs.py`` fills them in)."""

    kind: int = IndexKind.UNSPECIFIED
    """An ``IndexKind``; a request's may be any number until ``specs.py`` refuses it."""
    nlist: int = 0
    pq_m: int = 0
    pq_nbits: int = 0
    hnsw_m: int = 0
    ef_construction: int = 0
    train_min: int = 0


@dataclass(frozen=True)
class VectorSpec:
    name: str
    dim: int
    metric: int
    """A ``Metric``; a request's may be any number until ``specs.py`` refuses it."""
    index: IndexSpec = IndexSpec()
    optional: bool = False


class LexicalTokenizer(enum.IntEnum):
    """Numbered as on the wire and in stored specs (``lexical.py`` maps each to its FTS5 tokenizer)."""

    UNSPECIFIED = 0
    UNICODE61 = 1
    PORTER = 2
    TRIGRAM = 3


@dataclass(frozen=True)
class LexicalField:
    source: str
    """"title", "description", "extra.<key>" or "extra.<prefix>*" (every matching extra value)."""
    weight: float = 0.0
    """BM25 column weight; 0 means 1 (``specs.py`` fills it in)."""


@dataclass(frozen=True)
class LexicalSpec:
    """A lexical space: BM25 over text its fields take from each item's payload (``lexical.py``)."""

    name: str
    tokenizer: int = LexicalTokenizer.UNSPECIFIED
    """A ``LexicalTokenizer``; a request's may be any number until ``specs.py`` refuses it."""
    fields: tuple[LexicalField, ...] = ()


@dataclass(frozen=True)
class Schema:
    """Attributes items may carry and filters may name; tags need no declaration."""

    number_fields: tuple[str, ...] = ()
    keyword_fields: tuple[str, ...] = ()
    non_negative_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    vectors: tuple[VectorSpec, ...] = ()
    """In declared order: the order a collection's non-optional vectors are stored in."""
    schema: Schema = Schema()
    lexical: tuple[LexicalSpec, ...] = ()


@dataclass(frozen=True)
class Payload:
    title: str = ""
    description: str = ""
    image_uri: str = ""
    url: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One product: an id, a vector per space, attributes and a payload.

    What a collection keeps of it besides its vectors (numbers, keywords, tags, payload) is its
    *record*, stored encoded (``convert.encode_record``).
    """

    id: str
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Space name -> a float32 vector, as given (prepared per space before anything is written)."""
    numbers: Mapping[str, float] = field(default_factory=dict)
    keywords: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    payload: Payload = Payload()


@dataclass(frozen=True)
class ItemVector:
    """One space's vector of an existing item (UpsertVectors)."""

    id: str
    vector: np.ndarray


@dataclass(frozen=True)
class Refused:
    """An item of an UpsertStream message that was not written, by its position in the stream."""

    position: int
    id: str
    message: str


@dataclass(frozen=True)
class SearchParams:
    """Hashable, so concurrent searches with the same parameters can share one FAISS call."""

    nprobe: int = 0
    ef_search: int = 0
    exact: bool = False
    prefix: bool = False
    """Lexical: the last query term also matches as a prefix."""


@dataclass(frozen=True)
class Stored:
    """An item as a read finds it. Its record stays encoded (``codec.py``): the edge hands it on as the
    message it already is, where decoding it into an ``Item`` and encoding that again would double the
    cost of a Get."""

    id: str
    record: bytes
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    record: bytes
    """The item's stored record, decoded at the edge only when the caller asks for its contents."""


@dataclass(frozen=True)
class SpaceStats:
    name: str
    dim: int
    index_total: int
    """Vectors in the space's FAISS index, deleted ones included until compaction."""
    trained: bool
    nlist: int
    snapshot_slot: int
    count: int


@dataclass(frozen=True)
class LexicalStats:
    name: str
    count: int


@dataclass(frozen=True)
class CollectionStats:
    spec: CollectionSpec
    count: int
    vectors: tuple[SpaceStats, ...]
    device: str
    lexical: tuple[LexicalStats, ...] = ()
