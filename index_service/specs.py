"""What a collection may be declared as: names, spaces, index parameters and schema, checked and filled in.

A spec is normalised before anything is built or stored: every bound is checked whatever the index kind
(a stored spec never holds a value FAISS cannot take) and every default is written out, so what is
stored is explicit and a restart builds the same indexes.
"""

from __future__ import annotations

from dataclasses import replace

from index_service.config import (
    MAX_DIM,
    MAX_EF_CONSTRUCTION,
    MAX_EF_SEARCH,
    MAX_HNSW_M,
    MAX_LEXICAL_FIELDS,
    MAX_LEXICAL_SPACES,
    MAX_LEXICAL_WEIGHT,
    MAX_NAME_CHARS,
    MAX_NLIST,
    MAX_NPROBE,
    MAX_PQ_NBITS,
    MAX_SPACE_NAME_CHARS,
    MAX_SPACES,
    MAX_TRAIN_MIN,
    MIN_HNSW_M,
)
from index_service.errors import AlreadyExists, InvalidArgument
from index_service.lexical import DEFAULT_TOKENIZER, DESCRIPTION, EXTRA, TITLE
from index_service.model import (
    CollectionSpec,
    IndexKind,
    IndexSpec,
    LexicalField,
    LexicalSpec,
    LexicalTokenizer,
    Metric,
    SearchParams,
    VectorSpec,
)
from vitrine.errors import quoted

NAME_HELP = "letters, digits, '-', '_' or '.'"
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_PQ_NBITS = 8


def _valid_name(name: str, limit: int) -> bool:
    return bool(name) and len(name) <= limit and all(c.isalnum() or c in "-_." for c in name)


def check_collection_name(name: str, what: str = "collection") -> None:
    if not _valid_name(name, MAX_NAME_CHARS):
        raise InvalidArgument(f"{what} name must be 1-{MAX_NAME_CHARS} characters of {NAME_HELP}")


def check_space_name(name: str) -> None:
    if not _valid_name(name, MAX_SPACE_NAME_CHARS):
        raise InvalidArgument(
            f"vector space name {quoted(name)} must be 1-{MAX_SPACE_NAME_CHARS} characters of {NAME_HELP}"
        )


def normalize_vector_spec(vec: VectorSpec) -> VectorSpec:
    """Validate one space added to a live collection and fill its defaults; it is always optional."""
    check_space_name(vec.name)
    return replace(_normalize_vector_spec(vec), optional=True)


def normalize_spec(spec: CollectionSpec) -> CollectionSpec:
    """Validate a new collection's spec and fill its defaults, so what is stored is explicit."""
    check_collection_name(spec.name)
    if not spec.vectors:
        raise InvalidArgument("a collection needs at least one vector space (CollectionSpec.vectors)")
    if len(spec.vectors) > MAX_SPACES:
        raise InvalidArgument(f"a collection has at most {MAX_SPACES} vector spaces, got {len(spec.vectors)}")
    if len(spec.lexical) > MAX_LEXICAL_SPACES:
        raise InvalidArgument(
            f"a collection has at most {MAX_LEXICAL_SPACES} lexical spaces, got {len(spec.lexical)}"
        )
    names = [v.name for v in spec.vectors] + [lex.name for lex in spec.lexical]
    for name in names:
        check_space_name(name)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        what = "vector space" if [v.name for v in spec.vectors].count(dup) > 1 else "space"
        raise InvalidArgument(f"{what} {quoted(dup)} is declared twice")
    vectors = tuple(_normalize_vector_spec(vec) for vec in spec.vectors)
    lexical = tuple(_normalize_lexical_spec(lex) for lex in spec.lexical)
    numbers, keywords = list(spec.schema.number_fields), list(spec.schema.keyword_fields)
    every = numbers + keywords
    if len(set(every)) != len(every) or any(not f for f in every):
        raise InvalidArgument("schema fields must be non-empty and unique across number and keyword fields")
    if not set(spec.schema.non_negative_fields) <= set(numbers):
        raise InvalidArgument("schema non_negative_fields must each be one of its number_fields")
    return replace(spec, vectors=vectors, lexical=lexical)


def normalize_lexical_spec(spec: LexicalSpec, collection: CollectionSpec) -> LexicalSpec:
    """Validate a lexical space added to a live collection and fill its defaults."""
    check_space_name(spec.name)
    if spec.name in {v.name for v in collection.vectors} | {lex.name for lex in collection.lexical}:
        raise AlreadyExists(f"collection {quoted(collection.name)} already has a space {quoted(spec.name)}")
    if len(collection.lexical) >= MAX_LEXICAL_SPACES:
        raise InvalidArgument(f"collection {quoted(collection.name)} has the most lexical spaces already")
    return _normalize_lexical_spec(spec)


def _normalize_lexical_spec(spec: LexicalSpec) -> LexicalSpec:
    where = f"lexical space {quoted(spec.name)}"
    tokenizer = spec.tokenizer or DEFAULT_TOKENIZER
    if tokenizer not in LexicalTokenizer.__members__.values():
        raise InvalidArgument(f"{where}: unknown tokenizer {tokenizer}")
    if not 1 <= len(spec.fields) <= MAX_LEXICAL_FIELDS:
        raise InvalidArgument(f"{where}: needs 1-{MAX_LEXICAL_FIELDS} fields, got {len(spec.fields)}")
    fields = []
    for f in spec.fields:
        source = f.source
        if source not in (TITLE, DESCRIPTION) and not (
            source.startswith(EXTRA) and len(source) > len(EXTRA) and len(source) <= MAX_SPACE_NAME_CHARS * 2
        ):
            raise InvalidArgument(
                f"{where}: field source {quoted(source)} must be 'title', 'description', 'extra.<key>' "
                "or 'extra.<prefix>*'"
            )
        if not 0.0 <= f.weight <= MAX_LEXICAL_WEIGHT:  # NaN fails this too
            raise InvalidArgument(f"{where}: field {quoted(source)} weight must be 0-{MAX_LEXICAL_WEIGHT}")
        fields.append(LexicalField(source, float(f.weight or 1.0)))
    if len({f.source for f in fields}) != len(fields):
        raise InvalidArgument(f"{where}: a field source is named twice")
    return LexicalSpec(spec.name, LexicalTokenizer(tokenizer), tuple(fields))


def _normalize_vector_spec(vec: VectorSpec) -> VectorSpec:
    where = f"vector space {quoted(vec.name)}"
    if not 1 <= vec.dim <= MAX_DIM:
        raise InvalidArgument(f"{where}: dim must be between 1 and {MAX_DIM}, got {vec.dim}")
    if vec.metric == Metric.UNSPECIFIED:
        raise InvalidArgument(f"{where}: metric must be METRIC_INNER_PRODUCT or METRIC_L2")
    if vec.metric not in (Metric.INNER_PRODUCT, Metric.L2):
        raise InvalidArgument(f"{where}: unknown metric {vec.metric}")
    kind = vec.index.kind or IndexKind.FLAT
    if kind not in (IndexKind.FLAT, IndexKind.IVF_FLAT, IndexKind.IVF_PQ, IndexKind.HNSW):
        raise InvalidArgument(f"{where}: unknown index kind {kind}")
    idx = replace(vec.index, kind=IndexKind(kind))
    _bound(where, "nlist", idx.nlist, 0, MAX_NLIST)
    _bound(where, "pq_nbits", idx.pq_nbits, 0, MAX_PQ_NBITS)
    _bound(where, "pq_m", idx.pq_m, 0, vec.dim)
    if idx.hnsw_m:
        _bound(where, "hnsw_m", idx.hnsw_m, MIN_HNSW_M, MAX_HNSW_M)
    _bound(where, "ef_construction", idx.ef_construction, 0, MAX_EF_CONSTRUCTION)
    _bound(where, "train_min", idx.train_min, 0, MAX_TRAIN_MIN)
    return replace(vec, metric=Metric(vec.metric), index=_fill_defaults(where, idx, vec.dim))


def _fill_defaults(where: str, idx: IndexSpec, dim: int) -> IndexSpec:
    if idx.kind == IndexKind.IVF_PQ:
        idx = replace(idx, pq_m=idx.pq_m or max(1, dim // 8), pq_nbits=idx.pq_nbits or DEFAULT_PQ_NBITS)
        if dim % idx.pq_m:
            raise InvalidArgument(f"{where}: pq_m={idx.pq_m} must divide dim={dim}")
    if idx.kind in (IndexKind.IVF_FLAT, IndexKind.IVF_PQ):
        floor = 39 * idx.nlist if idx.nlist else 1000
        if idx.kind == IndexKind.IVF_PQ:
            floor = max(floor, 39 * (1 << idx.pq_nbits))
        idx = replace(idx, train_min=max(idx.train_min, floor))
    if idx.kind == IndexKind.HNSW:
        idx = replace(
            idx,
            hnsw_m=idx.hnsw_m or DEFAULT_HNSW_M,
            ef_construction=idx.ef_construction or DEFAULT_EF_CONSTRUCTION,
        )
    return idx


def _bound(where: str, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{where}: {field} must be between {low} and {high}, got {value}")


def check_search_params(params: SearchParams) -> None:
    _bound("search params", "nprobe", params.nprobe, 0, MAX_NPROBE)
    _bound("search params", "ef_search", params.ef_search, 0, MAX_EF_SEARCH)
