"""Filter expressions: validated against a collection's schema, then evaluated to a mask over slots.

Evaluating to a boolean mask *before* the vector search (a pre-filter) is what lets a filtered search
return the true top k among matching items: FAISS is handed an ID selector (or, for selective filters,
the matching vectors are searched exhaustively), so nothing is lost by filtering afterwards.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from index_service.config import MAX_FILTER_NODES
from index_service.errors import InvalidArgument
from vitrine.errors import quoted
from vitrine.index.v2 import index_pb2 as pb

MAX_DEPTH = 32


def validate(flt: pb.Filter, number_fields: frozenset[str], keyword_fields: frozenset[str]) -> None:
    """Reject a filter that is malformed or names an undeclared attribute, before anything runs."""
    count = 0

    def visit(node: pb.Filter, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_FILTER_NODES:
            raise InvalidArgument(f"filter has more than {MAX_FILTER_NODES} clauses")
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"filter is nested deeper than {MAX_DEPTH} levels")
        kind = node.WhichOneof("clause")
        if kind is None:
            raise InvalidArgument(f"malformed filter: empty clause at {path}")
        if kind in ("all", "any"):
            children = getattr(node, kind).filters
            if not children:
                raise InvalidArgument(f"malformed filter: '{kind}' at {path} has no clauses")
            for i, child in enumerate(children):
                visit(child, f"{path}.{kind}[{i}]", depth + 1)
        elif kind == "not":
            visit(getattr(node, "not"), f"{path}.not", depth + 1)
        elif kind == "keyword":
            kw = node.keyword
            if kw.field not in keyword_fields:
                raise InvalidArgument(
                    f"unknown attribute {quoted(kw.field)} in keyword filter at {path}; "
                    f"declared keyword fields: {sorted(keyword_fields)}"
                )
            if not kw.values:
                raise InvalidArgument(f"malformed filter: keyword filter on {quoted(kw.field)} has no values")
        elif kind == "tags":
            if not node.tags.any and not node.tags.all:
                raise InvalidArgument(f"malformed filter: tag filter at {path} names no tags")
        elif kind == "range":
            rng = node.range
            if rng.field not in number_fields:
                raise InvalidArgument(
                    f"unknown attribute {quoted(rng.field)} in range filter at {path}; "
                    f"declared number fields: {sorted(number_fields)}"
                )
            bounds = [b for b in ("gte", "gt", "lte", "lt") if rng.HasField(b)]
            if not bounds:
                raise InvalidArgument(f"malformed filter: range on {quoted(rng.field)} has no bounds")
            if (rng.HasField("gte") and rng.HasField("gt")) or (rng.HasField("lte") and rng.HasField("lt")):
                raise InvalidArgument(f"malformed filter: range on {quoted(rng.field)} repeats a bound")
            for b in bounds:
                if math.isnan(getattr(rng, b)):
                    raise InvalidArgument(f"malformed filter: range bound {b} on {quoted(rng.field)} is NaN")

    visit(flt, "filter", 0)


class AttributeView(Protocol):
    """What evaluation needs from a collection's slot-indexed attribute columns."""

    @property
    def size(self) -> int: ...

    def number_column(self, field: str) -> np.ndarray: ...

    def keyword_column(self, field: str) -> np.ndarray: ...

    def keyword_codes(self, field: str, values: list[str]) -> np.ndarray: ...

    def tag_slots(self, tag: str) -> np.ndarray: ...


def evaluate(flt: pb.Filter, view: AttributeView) -> np.ndarray:
    """A boolean mask over slots ``[0, view.size)``; liveness is applied by the caller."""
    kind = flt.WhichOneof("clause")
    n = view.size
    if kind == "all":
        mask = np.ones(n, dtype=bool)
        for child in flt.all.filters:
            mask &= evaluate(child, view)
        return mask
    if kind == "any":
        mask = np.zeros(n, dtype=bool)
        for child in flt.any.filters:
            mask |= evaluate(child, view)
        return mask
    if kind == "not":
        return ~evaluate(getattr(flt, "not"), view)
    if kind == "keyword":
        field = flt.keyword.field
        return np.isin(view.keyword_column(field), view.keyword_codes(field, list(flt.keyword.values)))
    if kind == "tags":
        mask = np.zeros(n, dtype=bool)
        if flt.tags.any:
            for tag in flt.tags.any:
                mask[view.tag_slots(tag)] = True
        else:
            mask[:] = True
        for tag in flt.tags.all:
            has = np.zeros(n, dtype=bool)
            has[view.tag_slots(tag)] = True
            mask &= has
        return mask
    if kind == "range":
        rng = flt.range
        values = view.number_column(rng.field)
        mask = ~np.isnan(values)
        with np.errstate(invalid="ignore"):
            if rng.HasField("gte"):
                mask &= values >= rng.gte
            if rng.HasField("gt"):
                mask &= values > rng.gt
            if rng.HasField("lte"):
                mask &= values <= rng.lte
            if rng.HasField("lt"):
                mask &= values < rng.lt
        return mask
    raise InvalidArgument("malformed filter: empty clause")
