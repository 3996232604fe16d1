"""The product and the event are declared once, in the kernel; every wire shape must follow them.

Each test fails when a field drifts: added to ``Product`` or ``Event`` without its mapping, renamed on
one wire, or lost in a round trip. ``FULL_PRODUCT`` and ``FULL_EVENT`` set every field to a value that is
not its default, so a round trip that drops a field cannot pass by accident.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.event_store import SqliteEventStore
from gateway.events import parse_event
from gateway.http.models import EventIn, ProductIn, ProductOut
from gateway.messages import event_from_pb, product_from_pb, product_to_pb
from vitrine import items
from vitrine.catalog import CATEGORY_SEPARATOR, Product, read_catalog, write_catalog
from vitrine.events import COLUMNS, SCHEMA, Event, EventType, event_from_json, read_events, write_events
from vitrine.filters import FieldFilter, matches
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.index.v2 import index_pb2 as ipb
from vitrine.index.v2 import index_pb2_grpc as ipb_grpc

FULL_PRODUCT = Product(
    id="p-full",
    title="Redfern suede ankle boots",
    description="Warm, lined.",
    category=("Fashion", "Shoes", "Boots"),
    brand="Redfern",
    price=129.5,
    image_uri="images/p-full.jpg",
    attributes={"color": "brown", "material": "suede"},
)
FULL_EVENT = Event(
    event_id="e-full",
    user_id="u42",
    session_id="s9",
    item_id="p-full",
    type=EventType.PURCHASE,
    ts=1_733_140_800.5,
    device="mobile",
    query="brown boots",
)


def _names(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("value", [FULL_PRODUCT, FULL_EVENT], ids=["product", "event"])
def test_the_full_values_set_every_field(value: Any) -> None:
    for f in dataclasses.fields(value):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(value, f.name) not in (default, "", 0, (), {}), (
            f"set {f.name} in {type(value).__name__}"
        )


# ---- the declared wire shapes ----------------------------------------------------------------------------


def test_protobuf_messages_name_the_kernels_fields() -> None:
    assert [f.name for f in pb.Product.DESCRIPTOR.fields] == _names(Product)
    assert [f.name for f in pb.Event.DESCRIPTOR.fields] == _names(Event)


def test_http_models_name_the_kernels_fields() -> None:
    assert list(ProductIn.model_fields) == _names(Product)
    assert list(ProductOut.model_fields) == [*_names(Product), "image_url"]
    assert list(EventIn.model_fields) == _names(Event)
    assert list(inspect.signature(parse_event).parameters) == _names(Event)


def test_the_events_table_has_a_column_per_field() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    assert [row[1] for row in conn.execute("PRAGMA table_info(events)")] == ["seq", *COLUMNS, "received"]
    assert list(COLUMNS) == _names(Event)


# ---- round trips ------------------------------------------------------------------------------------------


def test_protobuf_round_trips() -> None:
    assert (
        product_from_pb(pb.Product.FromString(product_to_pb(FULL_PRODUCT).SerializeToString()))
        == FULL_PRODUCT
    )
    assert event_from_pb(pb.Event(**FULL_EVENT.to_json())) == FULL_EVENT


def test_http_round_trips() -> None:
    out = ProductOut.of(FULL_PRODUCT).model_dump(mode="json")
    assert out["image_url"] == "/v1/products/p-full/image"
    del out["image_url"]
    assert ProductIn.model_validate_json(json.dumps(out)).plain() == FULL_PRODUCT
    assert parse_event(**EventIn.model_validate(FULL_EVENT.to_json()).model_dump()) == FULL_EVENT


def test_index_item_round_trip() -> None:
    item = items.item_of(FULL_PRODUCT, {}, filter_attributes=["color"])
    assert items.product_of(ipb.Item.FromString(item.SerializeToString())) == FULL_PRODUCT


def test_an_item_written_with_the_price_as_text_reads_the_stored_number() -> None:
    """Items written before the price was read from the number also carry it as payload text."""
    item = items.item_of(FULL_PRODUCT, {})
    item.payload.extra["price"] = repr(FULL_PRODUCT.price + 1)
    assert items.product_of(item) == FULL_PRODUCT


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_catalog_file_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"catalog{suffix}"
    write_catalog(path, [FULL_PRODUCT])
    assert list(read_catalog(path)) == [FULL_PRODUCT]


def test_events_import_format_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, [FULL_EVENT])
    assert set(json.loads(path.read_text())) == set(_names(Event))
    assert list(read_events(path)) == [FULL_EVENT]
    assert event_from_json(FULL_EVENT.to_json()) == FULL_EVENT


def test_events_store_round_trip(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.sqlite3", retention_days=0)
    try:
        assert store.record([FULL_EVENT], received=FULL_EVENT.ts) == []
        assert store.recent(FULL_EVENT.user_id) == [FULL_EVENT]
        assert list(read_events(tmp_path / "events.sqlite3")) == [FULL_EVENT]
    finally:
        store.close()


# ---- one filter semantics ---------------------------------------------------------------------------------


def _product(pid: str, category: str, brand: str, price: float, color: str = "") -> Product:
    return Product(
        pid,
        pid,
        category=tuple(category.split(CATEGORY_SEPARATOR)) if category else (),
        brand=brand,
        price=price,
        attributes={"color": color} if color else {},
    )


CATALOG = [
    _product("f1", "Fashion > Shoes > Boots", "Redfern", 129.5, "brown"),
    _product("f2", "Fashion > Shoes > Sneakers", "Stride", 89.0, "white"),
    _product("f3", "Fashion > Shoes > Boots", "Stride", 45.0, "yellow"),
    _product("f4", "Fashion > Coats", "Redfern", 250.0, "brown"),
    _product("f5", "Home > Kitchen", "", 12.0, "white"),
    _product("f6", "Home > Decor", "Boots", 30.0),
    _product("f7", "", "Lumen", 0.0, "brown"),
]
FILTERS = [
    (),
    (FieldFilter("category", ("Shoes",)),),
    (FieldFilter("category", ("Fashion > Shoes",)),),
    (FieldFilter("category", ("Fashion > Shoes > Boots", "Home")),),
    (FieldFilter("category", ("Boots",)),),
    (FieldFilter("category", ("Shoes > Boots",)),),  # not a path from the root: selects nothing
    (FieldFilter("brand", ("Stride",)),),
    (FieldFilter("brand", ("Redfern", "Boots")),),
    (FieldFilter("price", min=45.0),),
    (FieldFilter("price", max=45.0),),
    (FieldFilter("price", min=45.0, max=129.5),),
    (FieldFilter("color", ("brown",)),),
    (FieldFilter("color", ("white", "yellow")),),
    (FieldFilter("category", ("Fashion",)), FieldFilter("price", max=100.0)),
    (
        FieldFilter("brand", ("Redfern",)),
        FieldFilter("color", ("brown",)),
        FieldFilter("category", ("Coats",)),
    ),
    (FieldFilter("color", ("green",)),),
]


async def test_matches_selects_what_the_index_selects(index_stub: ipb_grpc.IndexServiceStub) -> None:
    """``vitrine.filters.matches`` on products in hand and the index service's filtered search over
    the items ``vitrine.items`` writes (its filter translated by ``index_filter``) select the same ids."""
    collection = "shapes"
    await index_stub.CreateCollection(
        ipb.CreateCollectionRequest(spec=items.collection_spec(collection, ["color"])), timeout=30
    )
    rng = np.random.default_rng(0)
    vectors = {
        space: rng.standard_normal((len(CATALOG), dim)).astype(np.float32)
        for space, dim in items.SPACES.items()
    }
    await index_stub.Upsert(
        ipb.UpsertRequest(
            collection=collection,
            items=[
                items.item_of(p, {space: v[i] for space, v in vectors.items()}, ["color"])
                for i, p in enumerate(CATALOG)
            ],
        ),
        timeout=30,
    )
    for filters in FILTERS:
        request = ipb.SearchRequest(
            collection=collection,
            vector=items.TITLE,
            queries=[ipb.Query(vector=vectors[items.TITLE][0].tolist())],
            k=len(CATALOG),
        )
        index_filter = items.index_filter(filters)
        if index_filter is not None:
            request.filter.CopyFrom(index_filter)
        (result,) = (await index_stub.Search(request, timeout=30)).results
        assert {h.id for h in result.hits} == {p.id for p in CATALOG if matches(p, filters)}, filters
    assert len({frozenset(p.id for p in CATALOG if matches(p, f)) for f in FILTERS}) >= 10  # they differ
