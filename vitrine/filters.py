"""What a field filter means, declared once: which fields filter, how each is checked, what it selects.

Search, similar items and recommendations take the same filters. The index evaluates them on stored
items (``vitrine.items`` translates them into the index's filter language: category as tags, price as a
range, any other field as keywords); recommendations that are not found by vector (trending items, a
context item's neighbours after hydration) evaluate them here with ``matches``. A contract test holds
the two to the same selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitrine.catalog import CATEGORY_SEPARATOR, Product

CATEGORY = "category"
"""Matches any level's name or any path prefix: "Shoes" and "Fashion > Shoes" both select boots."""
BRAND = "brand"
PRICE = "price"
"""The one numeric field: a range (``min`` and/or ``max``, inclusive)."""
BUILTIN_FIELDS = (CATEGORY, BRAND, PRICE)
"""Fields every catalog can filter on; configured product attributes add to them."""


class FilterError(ValueError):
    """A filter that cannot select anything meaningful; the message says which rule it broke."""


@dataclass(frozen=True)
class FieldFilter:
    """One condition on a product field; a request's filters must all hold."""

    field: str
    any_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


def check_filters(filters: Sequence[FieldFilter], attributes: Sequence[str] = ()) -> None:
    """Refuses a filter on an unknown field or with the wrong kind of condition for its field.
    ``attributes`` are the product attributes the catalog indexes for filtering."""
    known = (*BUILTIN_FIELDS, *attributes)
    for f in filters:
        if f.field not in known:
            raise FilterError(f"unknown filter field {f.field!r}; filterable fields: {', '.join(known)}")
        if f.field == PRICE:
            if f.any_of:
                raise FilterError("filter on 'price' takes min/max, not any_of")
            if f.min is None and f.max is None:
                raise FilterError("filter on 'price' needs min and/or max")
            if f.min is not None and f.max is not None and f.min > f.max:
                raise FilterError(f"price filter min {f.min} is above max {f.max}")
        else:
            if f.min is not None or f.max is not None:
                raise FilterError(f"filter on {f.field!r} takes any_of, not min/max")
            if not f.any_of:
                raise FilterError(f"filter on {f.field!r} needs at least one value in any_of")


def category_names(category: Sequence[str]) -> set[str]:
    """What a category filter can name to select a product: any level's name and any path prefix."""
    return {*category, *(CATEGORY_SEPARATOR.join(category[: i + 1]) for i in range(len(category)))}


def field_values(product: Product, field: str) -> set[str]:
    """The values of ``product`` an ``any_of`` condition on ``field`` is compared with (empty: none
    matches). A product without a brand has no brand value, as the index stores none."""
    if field == CATEGORY:
        return category_names(product.category)
    if field == BRAND:
        return {product.brand} if product.brand else set()
    value = product.attributes.get(field)
    return set() if value is None else {value}


def matches(product: Product, filters: Sequence[FieldFilter]) -> bool:
    """Whether ``product`` passes every filter: the selection the index makes on stored items, for
    products in hand (trending items and a context item's neighbours are not searched by vector)."""
    for f in filters:
        if f.field == PRICE:
            if (f.min is not None and product.price < f.min) or (f.max is not None and product.price > f.max):
                return False
        elif not set(f.any_of) & field_values(product, f.field):
            return False
    return True
