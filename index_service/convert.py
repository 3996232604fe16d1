"""Protobuf to the index's values and back, at the servicer's edge.

Nothing here checks anything: a request converts whatever it holds (an unknown metric, an empty filter
clause), so that the domain refuses it, in the order it checks things, with its own status and message.
Specs and item records have their own module, ``codec.py``, because storage keeps them as protobuf too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index_service import codec, filters
from index_service.model import CollectionStats, Hit, Item, ItemVector, SearchParams, Stored
from vitrine.index.v2 import index_pb2 as pb


def vector_of(values: Sequence[float]) -> np.ndarray:
    """A repeated float field as a float32 vector (protobuf floats are float32: nothing is lost)."""
    return np.fromiter(values, dtype=np.float32, count=len(values))


def item_of(message: pb.Item) -> Item:
    return codec.item_of(message, {name: vector_of(v.values) for name, v in message.vectors.items()})


def item_vector_of(message: pb.ItemVector) -> ItemVector:
    return ItemVector(message.id, vector_of(message.vector.values))


def params_of(message: pb.SearchParams) -> SearchParams:
    return SearchParams(
        nprobe=message.nprobe, ef_search=message.ef_search, exact=message.exact, prefix=message.prefix
    )


def filter_of(message: pb.Filter) -> filters.Filter:
    kind = message.WhichOneof("clause")
    if kind == "all":
        return filters.AllOf(tuple(filter_of(f) for f in message.all.filters))
    if kind == "any":
        return filters.AnyOf(tuple(filter_of(f) for f in message.any.filters))
    if kind == "not":
        return filters.Not(filter_of(getattr(message, "not")))
    if kind == "keyword":
        return filters.KeywordIn(message.keyword.field, tuple(message.keyword.values))
    if kind == "tags":
        return filters.TagMatch(tuple(message.tags.any), tuple(message.tags.all))
    if kind == "range":
        rng = message.range
        bounds = {b: getattr(rng, b) for b in ("gte", "gt", "lte", "lt") if rng.HasField(b)}
        return filters.NumberRange(rng.field, **bounds)
    return filters.EmptyClause()


def stats_message(stats: CollectionStats) -> pb.CollectionStats:
    return pb.CollectionStats(
        spec=codec.spec_message(stats.spec),
        count=stats.count,
        vectors=[
            pb.VectorStats(
                name=s.name,
                dim=s.dim,
                index_total=s.index_total,
                trained=s.trained,
                nlist=s.nlist,
                snapshot_slot=s.snapshot_slot,
                count=s.count,
            )
            for s in stats.vectors
        ],
        device=stats.device,
        lexical=[pb.LexicalStats(name=s.name, count=s.count) for s in stats.lexical],
    )


def item_message(item: Stored) -> pb.Item:
    message = codec.parse_record(item.record)
    message.id = item.id
    for name, vector in item.vectors.items():
        message.vectors[name].values.extend(vector.tolist())
    return message


def hit_message(hit: Hit, payload: bool, attributes: bool) -> pb.Hit:
    """A hit with as much of its record as the caller asked for (never its vectors)."""
    message = pb.Hit(id=hit.id, score=hit.score)
    if payload or attributes:
        item = codec.parse_record(hit.record)
        if not payload:
            item.ClearField("payload")
        if not attributes:
            item.ClearField("numbers")
            item.ClearField("keywords")
            item.ClearField("tags")
        message.item.CopyFrom(item)
    return message
