"""The one place that knows how a product is stored in the index: one item per product, named vectors.

A catalog is one index collection. Each product is one item: one vector per space in ``SPACES``, the
attributes filters select on and a payload from which ``product_of`` rebuilds the product without a
second lookup. Where each of ``Product``'s fields lives:

- ``id``: the item's id; ``title``, ``description``, ``image_uri``: the payload's fields of those names;
- ``price``: the number ``price`` (what a price filter's range reads);
- ``category``: the payload's ``extra["category"]`` (the path), and tags for filters (``category_tags``);
- ``brand``: ``extra["brand"]``, and the keyword ``brand`` when there is one;
- ``attributes``: ``extra["attr.<name>"]``, and a keyword each for the attributes the catalog filters on.

``index_filter`` translates the gateway's filters into the index's filter language over that layout,
with the meaning ``vitrine.filters`` gives them (``matches`` is the same rule on a product in hand; a
contract test holds the two to the same selection). Adding a space is one line in ``SPACES`` (every item
must then carry a vector for it) or in ``OPTIONAL_SPACES`` (existing collections gain it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from vitrine.catalog import CATEGORY_SEPARATOR, Product
from vitrine.contracts import BASE_VERSION, EMBED_DIM, MINILM_DIM
from vitrine.filters import BRAND, CATEGORY, PRICE, FieldFilter, category_names
from vitrine.index.v2 import index_pb2 as ipb

IMAGE = "image"
"""CLIP image embedding of the product's photo."""
TITLE = "title"
"""CLIP text embedding of the product's title."""

LEXICAL = "lexical"
"""BM25 over the product's words (the index's lexical space, SQLite FTS5): title, description, brand,
category path and attribute values, read from the payload ``item_of`` writes, so ingest needs no model."""

REC = "rec"
"""Prefix of the recommendation spaces: ``rec.<version>`` holds one trained recommender's item vectors
(optional spaces, added while serving; see ``rec_space``)."""

MINILM = "minilm"
"""all-MiniLM-L6-v2 sentence embedding of the product's title and description (``sentence_text``).

Versioned with its own model, not with CLIP's: the CLIP adapters and their rollouts (``encoder_space``)
never touch it, and a different sentence encoder would be a new space beside it, filled and switched to
as an adapted CLIP version is."""

SPACES: dict[str, int] = {IMAGE: EMBED_DIM, TITLE: EMBED_DIM}
"""Every required vector space of a catalog collection and its dimension, in stored order."""

OPTIONAL_SPACES: dict[str, int] = {MINILM: MINILM_DIM}
"""Spaces a catalog collection declares optional: a collection created before they existed still loads
and serves (the gateway adds them to it), and an item written without one keeps serving the other
spaces; re-ingesting the catalog (an upsert by id) fills them."""


def sentence_text(product: Product) -> str:
    """What the sentence encoder reads of a product: its title, then its description (the encoder
    truncates past 256 tokens)."""
    return f"{product.title}. {product.description}" if product.description else product.title


def encoder_space(base: str, version: int) -> str:
    """Where encoder version ``version`` keeps the ``base`` space (``image`` or ``title``): version 1 is the
    space itself; an adapted version writes ``<base>.<version>`` (optional, added by ``vitrine adapt
    deploy``), so the old vectors stay searchable for rollback and a query always meets product vectors
    of its own encoder version."""
    return base if version == BASE_VERSION else f"{base}.{version}"


def rec_space(version: int) -> str:
    """The space of recommender version ``version``: each deployment writes a new space and the gateway
    switches to it with the user tower's matching Triton version, so a redeploy never mixes the two."""
    return f"{REC}.{version}"


ATTR_PREFIX = "attr."
LEXICAL_SOURCES = ("title", "description", f"extra.{BRAND}", f"extra.{CATEGORY}", f"extra.{ATTR_PREFIX}*")
"""The payload fields the lexical space indexes (``index.proto``'s ``LexicalField.source``)."""
CATEGORY_TAG = "category:"
INDEX_KINDS = {
    "flat": ipb.INDEX_KIND_FLAT,
    "hnsw": ipb.INDEX_KIND_HNSW,
    "ivf_flat": ipb.INDEX_KIND_IVF_FLAT,
}


def collection_spec(
    name: str, filter_attributes: Sequence[str], index_kind: str = "flat"
) -> ipb.CollectionSpec:
    """The collection the gateway creates for a catalog: every space cosine (inner product on
    normalised vectors), one index kind for all of them."""
    kind = INDEX_KINDS[index_kind]
    return ipb.CollectionSpec(
        name=name,
        vectors=[
            ipb.VectorSpec(
                name=space, dim=dim, metric=ipb.METRIC_INNER_PRODUCT, index=ipb.IndexSpec(kind=kind)
            )
            for space, dim in SPACES.items()
        ]
        + [
            ipb.VectorSpec(
                name=space,
                dim=dim,
                metric=ipb.METRIC_INNER_PRODUCT,
                index=ipb.IndexSpec(kind=kind),
                optional=True,
            )
            for space, dim in OPTIONAL_SPACES.items()
        ],
        schema=ipb.AttributeSchema(number_fields=[PRICE], keyword_fields=[BRAND, *filter_attributes]),
        lexical=[lexical_spec()],
    )


def lexical_spec(
    tokenizer: ipb.LexicalTokenizer = ipb.LEXICAL_TOKENIZER_UNSPECIFIED,
) -> ipb.LexicalSpec:
    """The catalog's lexical space; an unspecified tokenizer is the index's measured default. Every field
    weighs the same (docs/BENCHMARKS.md, lexical tokenizers, measured the alternatives)."""
    return ipb.LexicalSpec(
        name=LEXICAL,
        tokenizer=tokenizer,
        fields=[ipb.LexicalField(source=source) for source in LEXICAL_SOURCES],
    )


def category_tags(category: Sequence[str]) -> list[str]:
    """Every level's name and every path prefix, so a filter on "Shoes" or "Fashion > Shoes" matches."""
    return sorted(CATEGORY_TAG + name for name in category_names(category))


def item_of(
    product: Product, vectors: Mapping[str, np.ndarray], filter_attributes: Sequence[str] = ()
) -> ipb.Item:
    """One index item for a product: its vector in every space, its filterable attributes, its payload."""
    p = product
    extra = {CATEGORY: p.category_path(), BRAND: p.brand}
    extra.update({ATTR_PREFIX + k: v for k, v in p.attributes.items()})
    keywords = {BRAND: p.brand} if p.brand else {}
    keywords.update({k: v for k, v in p.attributes.items() if k in filter_attributes})
    return ipb.Item(
        id=p.id,
        vectors={
            space: ipb.Vector(values=np.asarray(vec, dtype=np.float32).reshape(-1).tolist())
            for space, vec in vectors.items()
        },
        numbers={PRICE: float(p.price)},
        keywords=keywords,
        tags=category_tags(p.category),
        payload=ipb.Payload(title=p.title, description=p.description, image_uri=p.image_uri, extra=extra),
    )


def product_of(item: ipb.Item, pid: str = "") -> Product:
    """Rebuild a product from the item stored with its vectors (no second lookup on the hot path); a
    search hit carries it when the search asks for the payload and the attributes.

    The price is the stored number. Items written before it was read from there also carry a text copy
    in ``extra["price"]``, which is ignored: every item since one item per product has the number."""
    p = item.payload
    extra = dict(p.extra)
    return Product(
        id=pid or item.id,
        title=p.title,
        description=p.description,
        category=tuple(c for c in extra.get(CATEGORY, "").split(CATEGORY_SEPARATOR) if c),
        brand=extra.get(BRAND, ""),
        price=item.numbers.get(PRICE, 0.0),
        image_uri=p.image_uri,
        attributes={k[len(ATTR_PREFIX) :]: v for k, v in extra.items() if k.startswith(ATTR_PREFIX)},
    )


def wants_vectors(spaces: Collection[str] | None) -> bool:
    """Whether a read asking for ``spaces`` (None: every space; empty: none) needs any vector at all."""
    return spaces is None or len(spaces) > 0


def vectors_of(item: ipb.Item, spaces: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The item's vectors by space; with ``spaces``, only those. Turning a repeated field into an array
    is most of what reading an item costs its caller (~15 us per 512 floats), and a caller that needs
    one space of an item's four should not pay for the other three."""
    return {
        space: np.asarray(vec.values, dtype=np.float32)
        for space, vec in item.vectors.items()
        if spaces is None or space in spaces
    }


def index_filter(filters: Sequence[FieldFilter]) -> ipb.Filter | None:
    """The gateway's filters as one index filter (all must hold), as ``item_of`` stores each field:
    category as tags, price as a range, brand and attributes as keywords. The same filter selects the
    same items in every space."""
    clauses = []
    for f in filters:
        if f.field == CATEGORY:
            clauses.append(ipb.Filter(tags=ipb.TagMatch(any=[CATEGORY_TAG + v for v in f.any_of])))
        elif f.field == PRICE:
            rng = ipb.NumberRange(field=PRICE)
            if f.min is not None:
                rng.gte = f.min
            if f.max is not None:
                rng.lte = f.max
            clauses.append(ipb.Filter(range=rng))
        else:
            clauses.append(ipb.Filter(keyword=ipb.KeywordIn(field=f.field, values=list(f.any_of))))
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else ipb.Filter(all=ipb.FilterList(filters=clauses))
