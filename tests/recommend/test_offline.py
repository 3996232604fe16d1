"""The recommender offline: generator, events file, split, training determinism and export agreement.

The events store's rules are in ``test_event_store.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demo.behaviour import generate_behaviour
from demo.catalog import generate_catalog
from recommend.data import split
from recommend.items import build_table
from recommend.train import TrainSpec, train
from vitrine.catalog import Product
from vitrine.events import Event, EventType, read_events, write_events

NOW = 1.7e9


@pytest.fixture(scope="module")
def products() -> list[Product]:
    return [p for p, _ in generate_catalog(60, seed=3)]


@pytest.fixture(scope="module")
def events(products: list[Product]) -> list[Event]:
    return generate_behaviour(products, 40, seed=5, end=NOW)


def test_generator_is_seeded_and_follows_the_funnel(products: list[Product], events: list[Event]) -> None:
    assert generate_behaviour(products, 40, seed=5, end=NOW) == events
    assert generate_behaviour(products, 40, seed=6, end=NOW) != events
    assert all(e.ts <= NOW for e in events) and len({e.event_id for e in events}) == len(events)
    seen: dict[tuple[str, str], set[EventType]] = {}
    for e in events:  # a purchase follows a cart of the same item in the same session
        kinds = seen.setdefault((e.session_id, e.item_id), set())
        if e.type is EventType.PURCHASE:
            assert EventType.CART in kinds
        kinds.add(e.type)
    assert {EventType.VIEW, EventType.CLICK, EventType.PURCHASE} <= {e.type for e in events}


def test_jsonl_round_trip(events: list[Event], tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert write_events(path, events[:50]) == 50
    assert list(read_events(path)) == events[:50]
    path.write_text('{"event_id": "x", "user_id": "u", "item_id": "p", "type": "teleport", "ts": 1}\n')
    with pytest.raises(ValueError, match=r"events.jsonl:1: unknown event type 'teleport'"):
        list(read_events(path))


def test_split_holds_out_each_users_last_session(products: list[Product], events: list[Event]) -> None:
    table = build_table(products)
    data = split(events, table.index)
    assert data.test and data.validation and data.train
    last_start = {}
    for e in events:
        last_start.setdefault(e.user_id, {})[e.session_id] = min(
            last_start.get(e.user_id, {}).get(e.session_id, e.ts), e.ts
        )
    cutoff = {u: sorted(s.values())[-2] for u, s in last_start.items() if len(s) >= 3}
    assert all(e.ts < cutoff[e.user_id] for e in data.train_events if e.user_id in cutoff)
    for case in data.test:
        assert not set(case.targets) & case.seen


def test_training_is_deterministic_and_the_towers_export_within_tolerance(
    products: list[Product], events: list[Event], tmp_path: Path
) -> None:
    table = build_table(
        products, {p.id: np.full(1024, (i % 7) / 7, np.float32) for i, p in enumerate(products)}
    )
    data = split(events, table.index)
    spec = TrainSpec.tiny(seed=1)
    spec = TrainSpec(**{**spec.__dict__, "progress": False})
    a = train(table, data, spec, tmp_path / "a")
    b = train(table, data, spec, tmp_path / "b")
    assert a["version"] == b["version"]
    assert np.array_equal(
        np.load(tmp_path / "a" / "item_vectors.npy"), np.load(tmp_path / "b" / "item_vectors.npy")
    )
    for model in ("user_tower", "item_tower"):
        assert a["models"][model]["min_cosine"] >= 0.9999
        assert (tmp_path / "a" / a["models"][model]["path"]).is_file()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["weights"] == "trained here" and manifest["data"]["train_examples"] == len(data.train)
    assert set(manifest["metrics"]["test"]) == {"hitrate@10", "ndcg@10", "mrr"}
    other = train(table, data, TrainSpec(**{**spec.__dict__, "seed": 2}), tmp_path / "c")
    assert other["version"] != a["version"]
