"""Filter expressions: validated against a collection's schema, then evaluated to a mask over slots.

Evaluating to a boolean mask *before* the vector search (a pre-filter) is what lets a filtered search
return the true top k among matching items: FAISS is handed an ID selector (or, for selective filters,
the matching vectors are searched exhaustively), so nothing is lost by filtering afterwards.

A filter is a tree of frozen, hashable nodes, so concurrent searches with equal filters can be merged
into one FAISS call keyed on the filter itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from index_service.config import MAX_FILTER_NODES
from index_service.errors import InvalidArgument
from vitrine.errors import quoted

MAX_DEPTH = 32


@dataclass(frozen=True)
class AllOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    filter: Filter


@dataclass(frozen=True)
class KeywordIn:
    """Equality (one value) or membership (several) on a keyword field."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class TagMatch:
    """Items carrying at least one of ``any_of`` (when given) and every one of ``all_of``."""

    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class NumberRange:
    """Unset bounds are open; items without the field never match."""

    field: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    def bounds(self) -> list[tuple[str, float]]:
        """The bounds given, by name, in a fixed order."""
        named = (("gte", self.gte), ("gt", self.gt), ("lte", self.lte), ("lt", self.lt))
        return [(name, value) for name, value in named if value is not None]


@dataclass(frozen=True)
class EmptyClause:
    """A node that names no clause: kept (not dropped) so validation can say where it is."""


Filter = AllOf | AnyOf | Not | KeywordIn | TagMatch | NumberRange | EmptyClause


def validate(flt: Filter, number_fields: frozenset[str], keyword_fields: frozenset[str]) -> None:
    """Reject a filter that is malformed or names an undeclared attribute, before anything runs."""
    count = 0

    def visit(node: Filter, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_FILTER_NODES:
            raise InvalidArgument(f"filter has more than {MAX_FILTER_NODES} clauses")
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"filter is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, AllOf | AnyOf):
            kind = "all" if isinstance(node, AllOf) else "any"
            if not node.filters:
                raise InvalidArgument(f"malformed filter: '{kind}' at {path} has no clauses")
            for i, child in enumerate(node.filters):
                visit(child, f"{path}.{kind}[{i}]", depth + 1)
        elif isinstance(node, Not):
            visit(node.filter, f"{path}.not", depth + 1)
        else:
            _check_leaf(node, path, number_fields, keyword_fields)

    visit(flt, "filter", 0)


def _check_leaf(
    node: KeywordIn | TagMatch | NumberRange | EmptyClause,
    path: str,
    number_fields: frozenset[str],
    keyword_fields: frozenset[str],
) -> None:
    if isinstance(node, EmptyClause):
        raise InvalidArgument(f"malformed filter: empty clause at {path}")
    if isinstance(node, KeywordIn):
        if node.field not in keyword_fields:
            raise InvalidArgument(
                f"unknown attribute {quoted(node.field)} in keyword filter at {path}; "
                f"declared keyword fields: {sorted(keyword_fields)}"
            )
        if not node.values:
            raise InvalidArgument(f"malformed filter: keyword filter on {quoted(node.field)} has no values")
    elif isinstance(node, TagMatch):
        if not node.any_of and not node.all_of:
            raise InvalidArgument(f"malformed filter: tag filter at {path} names no tags")
    else:
        if node.field not in number_fields:
            raise InvalidArgument(
                f"unknown attribute {quoted(node.field)} in range filter at {path}; "
                f"declared number fields: {sorted(number_fields)}"
            )
        bounds = node.bounds()
        if not bounds:
            raise InvalidArgument(f"malformed filter: range on {quoted(node.field)} has no bounds")
        if (node.gte is not None and node.gt is not None) or (node.lte is not None and node.lt is not None):
            raise InvalidArgument(f"malformed filter: range on {quoted(node.field)} repeats a bound")
        for name, value in bounds:
            if math.isnan(value):
                raise InvalidArgument(f"malformed filter: range bound {name} on {quoted(node.field)} is NaN")


class AttributeView(Protocol):
    """What evaluation needs from a collection's slot-indexed attribute columns."""

    @property
    def size(self) -> int: ...

    def number_column(self, field: str) -> np.ndarray: ...

    def keyword_column(self, field: str) -> np.ndarray: ...

    def keyword_codes(self, field: str, values: list[str]) -> np.ndarray: ...

    def tag_slots(self, tag: str) -> np.ndarray: ...


def evaluate(flt: Filter, view: AttributeView) -> np.ndarray:
    """A boolean mask over slots ``[0, view.size)``; liveness is applied by the caller."""
    n = view.size
    if isinstance(flt, AllOf):
        mask = np.ones(n, dtype=bool)
        for child in flt.filters:
            mask &= evaluate(child, view)
        return mask
    if isinstance(flt, AnyOf):
        mask = np.zeros(n, dtype=bool)
        for child in flt.filters:
            mask |= evaluate(child, view)
        return mask
    if isinstance(flt, Not):
        return ~evaluate(flt.filter, view)
    if isinstance(flt, KeywordIn):
        return np.isin(view.keyword_column(flt.field), view.keyword_codes(flt.field, list(flt.values)))
    if isinstance(flt, TagMatch):
        return _tag_mask(flt, view)
    if isinstance(flt, NumberRange):
        return _range_mask(flt, view)
    raise InvalidArgument("malformed filter: empty clause")


def _tag_mask(flt: TagMatch, view: AttributeView) -> np.ndarray:
    n = view.size
    mask = np.zeros(n, dtype=bool)
    if flt.any_of:
        for tag in flt.any_of:
            mask[view.tag_slots(tag)] = True
    else:
        mask[:] = True
    for tag in flt.all_of:
        has = np.zeros(n, dtype=bool)
        has[view.tag_slots(tag)] = True
        mask &= has
    return mask


def _range_mask(flt: NumberRange, view: AttributeView) -> np.ndarray:
    values = view.number_column(flt.field)
    mask = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        if flt.gte is not None:
            mask &= values >= flt.gte
        if flt.gt is not None:
            mask &= values > flt.gt
        if flt.lte is not None:
            mask &= values <= flt.lte
        if flt.lt is not None:
            mask &= values < flt.lt
    return mask
