"""Query data drawn from the catalog the stack serves, so load looks like shoppers, not random strings.

Texts come from the catalog's own vocabulary (its labelled queries when present, title fragments, brand
plus category), images are the catalog's product photos, filters use its categories, brands and price
quantiles, and similar-item requests use its ids. Without a catalog file a small seeded catalog is
generated in memory with the same generator the demo stack ingests, so the vocabulary still matches.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from demo import catalog as demo
from vitrine import catalog as cat

MAX_IMAGES = 64
"""Product photos held in memory per process: varied enough for cache-free load, quick to load."""


@dataclass(frozen=True)
class FilterSpec:
    """A filter as plain data; the gateway user turns it into its proto message."""

    field: str
    any_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


class QueryData:
    def __init__(
        self,
        products: Sequence[cat.Product],
        images: Sequence[bytes],
        labelled: Sequence[str] = (),
    ) -> None:
        if not products:
            raise ValueError("the catalog has no products to draw queries from")
        if not images:
            raise ValueError("the catalog has no readable product images for image queries")
        self.products = list(products)
        self.images = list(images)
        self.labelled = [q for q in labelled if q.strip()]
        self.categories = sorted({p.category[-1] for p in self.products if p.category})
        self.brands = sorted({p.brand for p in self.products if p.brand})
        prices = sorted(p.price for p in self.products)
        self.price_quartiles = (prices[len(prices) // 4], prices[(3 * len(prices)) // 4])

    @classmethod
    def from_catalog(cls, path: str | Path, max_images: int = MAX_IMAGES, seed: int = 0) -> QueryData:
        """Products of a catalog file, its photos (a seeded sample) and its ``queries.jsonl`` if beside it."""
        path = Path(path)
        products = [p for p in cat.read_catalog(path) if isinstance(p, cat.Product)]
        rng = random.Random(seed)
        images: list[bytes] = []
        for product in rng.sample(products, len(products)):
            if len(images) >= max_images:
                break
            image = cat.resolve_image(product, path.parent)
            if image is not None and image.is_file():
                images.append(image.read_bytes())
        queries_file = path.parent / "queries.jsonl"
        labelled = [q.text for q in cat.read_queries(queries_file)] if queries_file.is_file() else []
        return cls(products, images, labelled)

    @classmethod
    def generated(cls, size: int = 200, seed: int = 0, max_images: int = 16) -> QueryData:
        """The demo catalog's vocabulary without files on disk: same generator, same seed, same words."""
        products = []
        images: list[bytes] = []
        for product, spec in demo.generate_catalog(size, seed):
            products.append(product)
            if len(images) < max_images:
                buf = io.BytesIO()
                demo.render_product_image(*spec).save(buf, format="JPEG", quality=90)
                images.append(buf.getvalue())
        labelled = [q.text for q in demo.generate_queries(products, 50, seed)]
        return cls(products, images, labelled)

    def text(self, rng: random.Random) -> str:
        """A shopper's query: a labelled query, a title fragment, or brand and category."""
        roll = rng.random()
        if self.labelled and roll < 0.4:
            return rng.choice(self.labelled)
        product = rng.choice(self.products)
        if roll < 0.85 or not product.brand or not product.category:
            words = product.title.split()
            length = rng.randint(min(2, len(words)), min(5, len(words)))
            start = rng.randint(0, len(words) - length)
            return " ".join(words[start : start + length])
        return f"{product.brand} {product.category[-1].lower()}"

    def image(self, rng: random.Random) -> bytes:
        return rng.choice(self.images)

    def product_id(self, rng: random.Random) -> str:
        return rng.choice(self.products).id

    def filters(self, rng: random.Random) -> list[FilterSpec]:
        """One or two filters a shop front would send: a category, a brand, a price band."""
        chosen = [FilterSpec("category", any_of=(rng.choice(self.categories),))] if self.categories else []
        roll = rng.random()
        if roll < 0.5:
            low, high = self.price_quartiles
            chosen.append(FilterSpec("price", min=float(low), max=float(high)))
        elif roll < 0.75 and self.brands:
            chosen.append(
                FilterSpec("brand", any_of=tuple(rng.sample(self.brands, min(3, len(self.brands)))))
            )
        return chosen or [FilterSpec("price", min=0.0, max=float(self.price_quartiles[1]))]

    def passages(self, rng: random.Random, n: int) -> list[str]:
        """Candidate texts for direct re-rank calls, shaped like the gateway's (title and description)."""
        return [p.passage() for p in rng.choices(self.products, k=n)]
