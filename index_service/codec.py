"""How specs and item records are kept: in their protobuf wire form, the format every data directory holds.

A collection's spec is stored as a serialised ``CollectionSpec``; an item's *record* (everything it
stores besides its id and vectors: numbers, keywords, tags, payload) as a serialised ``Item`` holding
only those fields. The record is encoded once, when the item is written, and kept as those bytes in
memory too, so a search hands it to the transport without re-encoding (``parse_record``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from index_service.model import (
    CollectionSpec,
    IndexSpec,
    Item,
    LexicalField,
    LexicalSpec,
    Payload,
    Schema,
    VectorSpec,
)
from vitrine.index.v2 import index_pb2 as pb


def spec_message(spec: CollectionSpec) -> pb.CollectionSpec:
    """A spec's message; an index's numbers map field for field (``IndexSpec`` names ``pb.IndexSpec``'s)."""
    schema = spec.schema
    return pb.CollectionSpec(
        name=spec.name,
        vectors=[_vector_spec_message(v) for v in spec.vectors],
        schema=pb.AttributeSchema(
            number_fields=schema.number_fields,
            keyword_fields=schema.keyword_fields,
            non_negative_fields=schema.non_negative_fields,
        )
        if schema != Schema()
        else None,
        lexical=[lexical_spec_message(lex) for lex in spec.lexical],
    )


def lexical_spec_message(spec: LexicalSpec) -> pb.LexicalSpec:
    return pb.LexicalSpec(
        name=spec.name,
        tokenizer=spec.tokenizer,  # type: ignore[arg-type]
        fields=[pb.LexicalField(source=f.source, weight=f.weight) for f in spec.fields],
    )


def lexical_spec_of(message: pb.LexicalSpec) -> LexicalSpec:
    return LexicalSpec(
        name=message.name,
        tokenizer=message.tokenizer,
        fields=tuple(LexicalField(f.source, f.weight) for f in message.fields),
    )


def _vector_spec_message(vec: VectorSpec) -> pb.VectorSpec:
    return pb.VectorSpec(
        name=vec.name,
        dim=vec.dim,
        metric=vec.metric,  # type: ignore[arg-type]
        index=pb.IndexSpec(**dataclasses.asdict(vec.index)),
        optional=vec.optional,
    )


def spec_of(message: pb.CollectionSpec) -> CollectionSpec:
    schema = message.schema
    return CollectionSpec(
        name=message.name,
        vectors=tuple(vector_spec_of(v) for v in message.vectors),
        schema=Schema(
            number_fields=tuple(schema.number_fields),
            keyword_fields=tuple(schema.keyword_fields),
            non_negative_fields=tuple(schema.non_negative_fields),
        ),
        lexical=tuple(lexical_spec_of(lex) for lex in message.lexical),
    )


def vector_spec_of(message: pb.VectorSpec) -> VectorSpec:
    idx = message.index
    return VectorSpec(
        name=message.name,
        dim=message.dim,
        metric=message.metric,
        index=IndexSpec(**{f.name: getattr(idx, f.name) for f in dataclasses.fields(IndexSpec)}),
        optional=message.optional,
    )


def encode_spec(spec: CollectionSpec) -> bytes:
    return spec_message(spec).SerializeToString(deterministic=True)


def decode_spec(raw: bytes) -> CollectionSpec:
    """Raises ``google.protobuf.message.DecodeError`` for bytes that are no spec."""
    return spec_of(pb.CollectionSpec.FromString(raw))


def record_message(item: Item) -> pb.Item:
    """The item's record as an ``Item`` message: no id, no vectors, and a payload even when empty (as
    every stored record has)."""
    payload = item.payload
    return pb.Item(
        numbers=item.numbers,
        keywords=item.keywords,
        tags=item.tags,
        payload=pb.Payload(
            title=payload.title,
            description=payload.description,
            image_uri=payload.image_uri,
            url=payload.url,
            extra=payload.extra,
        ),
    )


def item_of(message: pb.Item, vectors: Mapping[str, np.ndarray], with_payload: bool = True) -> Item:
    """An item of an ``Item`` message, given its vectors (converted, or read from memory)."""
    payload = Payload()
    if with_payload:
        p = message.payload
        payload = Payload(p.title, p.description, p.image_uri, p.url, dict(p.extra))
    return Item(
        message.id, vectors, dict(message.numbers), dict(message.keywords), tuple(message.tags), payload
    )


def encode_record(item: Item) -> bytes:
    return record_message(item).SerializeToString(deterministic=True)


def decode_record(raw: bytes, with_payload: bool = True) -> Item:
    """A stored record as an item without id or vectors (``with_payload=False``: its attributes alone,
    as indexing them needs)."""
    return item_of(pb.Item.FromString(raw), {}, with_payload)


def parse_record(raw: bytes) -> pb.Item:
    """A stored record as the message it is, for a reply (no decoding into values and back)."""
    return pb.Item.FromString(raw)
