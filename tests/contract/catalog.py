"""Seeded products with vectors for the index contract: hostile strings in every filterable field."""

from __future__ import annotations

import numpy as np

from gateway.types import Record
from vitrine.catalog import Product
from vitrine.items import SPACES

HOSTILE = (
    '" or 1==1 or "',
    "' or ''='",
    "a\\b",
    'x"y',
    "\\",
    '\\"',
    "] or true or [",
    "ünïcødé 日本語 🥾",
    "new\nline",
    "tab\there",
    "brand=acme",
    "id in ['w0-0']",
)
"""Filter values that would change an expression's meaning if pasted into one unescaped."""
COLORS = ("red", "blue", *HOSTILE[:4])
CATEGORIES = (("Fashion", "Shoes", "Boots"), ("Fashion", "Bags"), ("Home",), ('Odd"Cat', "Sub\\Cat"))


def records(n: int, seed: int = 0, prefix: str = "p") -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        product = Product(
            id=f"{prefix}{i}",
            title=f"product {i}",
            description=f"description {i}",
            category=CATEGORIES[i % len(CATEGORIES)],
            brand="acme" if i % 3 == 0 else HOSTILE[(i // 3) % len(HOSTILE)],
            price=float(i % 17) * 2.5,
            image_uri=f"img/{i}.jpg",
            attributes={"color": COLORS[i % len(COLORS)], "size": str(36 + i % 5)},
        )
        vectors = {space: rng.standard_normal(dim).astype(np.float32) for space, dim in SPACES.items()}
        out.append(Record(product, vectors))
    return out
