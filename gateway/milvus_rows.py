"""How an index item (``vitrine.items``) becomes one Milvus row, and an index filter a Milvus expression.

The product <-> item layout stays ``vitrine.items``'s: this module only maps an ``Item`` (named vectors,
numbers, keywords, tags, payload) onto columns and back, so both backends store the same thing.

One row per product:

- ``id``: the primary key (VARCHAR);
- ``n_<field>``: one DOUBLE per number field (``price``);
- ``k_<field>``: one nullable VARCHAR per keyword field (brand and the catalog's filterable attributes);
- ``tags``: ARRAY<VARCHAR> (category tags);
- ``spaces``: ARRAY<VARCHAR>, the vector spaces the row has a vector in (an optional space's search
  selects on it, so a row without one is never a hit: neither milvus-lite nor every Milvus release
  handles nullable vectors);
- ``payload``: JSON (title, description, image_uri, url, extra);
- ``v_<space>``: one FLOAT_VECTOR per space (``.`` in a space name becomes ``__``), inner product over
  vectors normalised here, so scores are cosines as the FAISS service's are.

Filters become boolean expressions. Every value is a string literal written by ``literal`` (backslash,
quote and line breaks escaped) or a number written by ``repr`` of a finite float: a filter value never
becomes expression syntax. Field names come from the collection's declared schema, never from a caller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gateway.errors import InvalidInput
from vitrine.errors import quoted
from vitrine.index.v2 import index_pb2 as ipb

ID = "id"
TAGS = "tags"
SPACES = "spaces"
PAYLOAD = "payload"
NUMBER_PREFIX = "n_"
KEYWORD_PREFIX = "k_"
VECTOR_PREFIX = "v_"

MAX_ID_BYTES = 2048
"""VARCHAR limits count bytes; the gateway refuses ids over 512 characters (at most 4 bytes each)."""
MAX_STRING_BYTES = 65535
MAX_ARRAY = 4096
SPACE_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z0-9]+)*$")
"""Space names the Milvus backend can map to a field name and back (``image``, ``title.2``, ``rec.3``)."""
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'[\\"\n\r\t]')


def literal(value: str) -> str:
    """A double-quoted expression string literal meaning exactly ``value``."""
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value) + '"'


def number(value: float) -> str:
    if not math.isfinite(value):
        raise InvalidInput("index rejected the input: malformed filter: a range bound is not finite")
    return repr(float(value))


def vector_field(space: str) -> str:
    if not SPACE_NAME.match(space):
        raise InvalidInput(
            f"index rejected the input: space name {quoted(space)} must be lower-case letters and digits "
            "in dot-separated parts"
        )
    return VECTOR_PREFIX + space.replace(".", "__")


def space_of(field: str) -> str:
    return field[len(VECTOR_PREFIX) :].replace("__", ".")


def number_field(name: str) -> str:
    return NUMBER_PREFIX + name


def keyword_field(name: str) -> str:
    if not FIELD_NAME.match(name):
        raise InvalidInput(
            f"index rejected the input: attribute name {quoted(name)} must be letters, digits and underscores"
        )
    return KEYWORD_PREFIX + name


def unit_rows(rows: Sequence[np.ndarray] | np.ndarray, dim: int, what: str) -> np.ndarray:
    """Vectors checked and normalised as the FAISS service does for an inner-product space, with the
    same refusals (dimension, NaN or infinity, all zeros)."""
    dims = sorted({int(np.asarray(r).reshape(-1).shape[0]) for r in rows})
    if dims != [dim]:
        raise InvalidInput(
            f"index rejected the input: {what}: wrong dimension, space has dim={dim}, got {dims}"
        )
    arr = np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows])
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise InvalidInput(
            f"index rejected the input: {what}: vector {int(np.flatnonzero(~finite)[0])} contains NaN "
            "or infinity"
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInput(
            f"index rejected the input: {what}: vector {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all "
            "zeros and cannot be normalised"
        )
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def row_of(
    item: ipb.Item, dims: Mapping[str, int], keywords: Sequence[str], kept: Mapping[str, list[float]]
) -> dict[str, Any]:
    """One row for ``item``: every space of ``dims`` gets the item's vector, else the one ``kept`` from
    the stored row (an upsert that omits an optional space keeps it), else zeros outside ``spaces``."""
    row: dict[str, Any] = {
        ID: item.id,
        TAGS: list(item.tags),
        PAYLOAD: {
            "title": item.payload.title,
            "description": item.payload.description,
            "image_uri": item.payload.image_uri,
            "url": item.payload.url,
            "extra": dict(item.payload.extra),
        },
    }
    row.update({number_field(f): float(v) for f, v in item.numbers.items()})
    row.update({keyword_field(f): item.keywords.get(f) for f in keywords})
    present = []
    for space, dim in dims.items():
        if space in item.vectors:
            values = unit_rows([np.asarray(item.vectors[space].values)], dim, f"item {quoted(item.id)}")[0]
            row[vector_field(space)] = values.tolist()
            present.append(space)
        elif space in kept:
            row[vector_field(space)] = kept[space]
            present.append(space)
        else:
            row[vector_field(space)] = [0.0] * dim
    row[SPACES] = present
    return row


def item_of(
    row: Mapping[str, Any], number_fields: Iterable[str], keywords: Iterable[str], include_vectors: bool
) -> ipb.Item:
    """The index item a stored row holds (vectors only for the spaces it has, when asked)."""
    payload = row.get(PAYLOAD) or {}
    item = ipb.Item(
        id=str(row[ID]),
        numbers={
            f: float(row[number_field(f)]) for f in number_fields if row.get(number_field(f)) is not None
        },
        keywords={f: str(row[keyword_field(f)]) for f in keywords if row.get(keyword_field(f)) is not None},
        tags=list(row.get(TAGS) or ()),
        payload=ipb.Payload(
            title=payload.get("title", ""),
            description=payload.get("description", ""),
            image_uri=payload.get("image_uri", ""),
            url=payload.get("url", ""),
            extra=payload.get("extra", {}),
        ),
    )
    if include_vectors:
        for space in row.get(SPACES) or ():
            values = row.get(vector_field(space))
            if values is not None:
                item.vectors[space].values.extend(np.asarray(values, dtype=np.float32).tolist())
    return item


def expression(flt: ipb.Filter, number_fields: Sequence[str], keyword_fields: Sequence[str]) -> str:
    """An index filter as a Milvus boolean expression over ``row_of``'s columns."""
    kind = flt.WhichOneof("clause")
    if kind in ("all", "any"):
        children = getattr(flt, kind).filters
        if not children:
            raise InvalidInput(f"index rejected the input: malformed filter: '{kind}' has no clauses")
        joined = f" {'and' if kind == 'all' else 'or'} ".join(
            f"({expression(c, number_fields, keyword_fields)})" for c in children
        )
        return joined
    if kind == "not":
        return f"not ({expression(flt.__getattribute__('not'), number_fields, keyword_fields)})"
    if kind == "keyword":
        kw = flt.keyword
        if kw.field not in keyword_fields:
            raise InvalidInput(
                f"index rejected the input: malformed filter: unknown keyword field {quoted(kw.field)}; "
                f"declared keyword fields: {sorted(keyword_fields)}"
            )
        if not kw.values:
            raise InvalidInput(
                "index rejected the input: malformed filter: keyword filter on "
                f"{quoted(kw.field)} has no values"
            )
        return f"{keyword_field(kw.field)} in [{', '.join(literal(v) for v in kw.values)}]"
    if kind == "tags":
        clauses = []
        if flt.tags.any:
            clauses.append(f"array_contains_any({TAGS}, [{', '.join(literal(t) for t in flt.tags.any)}])")
        if flt.tags.all:
            clauses.append(f"array_contains_all({TAGS}, [{', '.join(literal(t) for t in flt.tags.all)}])")
        if not clauses:
            raise InvalidInput("index rejected the input: malformed filter: tag filter names no tags")
        return " and ".join(clauses)
    if kind == "range":
        return _range(flt.range, number_fields)
    raise InvalidInput("index rejected the input: malformed filter: empty clause")


def _range(rng: ipb.NumberRange, number_fields: Sequence[str]) -> str:
    if rng.field not in number_fields:
        raise InvalidInput(
            f"index rejected the input: malformed filter: unknown number field {quoted(rng.field)}; "
            f"declared number fields: {sorted(number_fields)}"
        )
    column = number_field(rng.field)
    bounds = [
        f"{column} {op} {number(getattr(rng, name))}"
        for name, op in (("gte", ">="), ("gt", ">"), ("lte", "<="), ("lt", "<"))
        if rng.HasField(name)
    ]
    if not bounds:
        raise InvalidInput(
            f"index rejected the input: malformed filter: range on {quoted(rng.field)} has no bounds"
        )
    return " and ".join(bounds)


def has_space(space: str) -> str:
    return f"array_contains({SPACES}, {literal(space)})"
