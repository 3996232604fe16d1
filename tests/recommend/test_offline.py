"""The recommender offline: generator, store rules, split, training determinism and export agreement."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from demo.behaviour import generate_behaviour
from demo.catalog import generate_catalog
from gateway.events import FUTURE_SLACK_S, EventStore
from recommend.data import split
from recommend.items import build_table
from recommend.train import TrainSpec, train
from vitrine.catalog import Product
from vitrine.events import MAX_HISTORY, Event, EventType, read_events, read_store, write_events

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


def test_store_is_idempotent_and_reports_each_bad_event(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "ev.sqlite3", retention_days=0)
    now = time.time()
    good = Event("e1", "u1", "s1", "p1", EventType.VIEW, now - 10)
    batch = [
        good,
        Event("e2", "", "s1", "p1", EventType.VIEW, now),  # empty user
        Event("e3", "u1", "s1", "nope", EventType.CLICK, now),  # unknown item
        Event("e4", "u1", "s1", "p1", EventType.CLICK, now + FUTURE_SLACK_S + 60),  # future
        Event("e1", "u1", "s1", "p1", EventType.VIEW, now),  # duplicate in the request
        Event("e5", "u1", "s1", "p2", EventType.PURCHASE, now - 5),
    ]
    stored, rejected = store.record(batch, {"p1", "p2"}, start_index=10)
    assert stored == 2
    assert [(r.index, r.code) for r in rejected] == [
        (11, "INVALID_ARGUMENT"),
        (12, "NOT_FOUND"),
        (13, "INVALID_ARGUMENT"),
        (14, "ALREADY_EXISTS"),
    ]
    stored, rejected = store.record([good], {"p1"})  # a retried stream stores nothing twice
    assert stored == 0 and rejected[0].code == "ALREADY_EXISTS"
    assert [e.event_id for e in store.recent("u1")] == ["e5", "e1"]
    assert store.seen("u1") == {"p1", "p2"}
    assert [e.event_id for e in read_store(tmp_path / "ev.sqlite3")] == ["e1", "e5"]


def test_history_reads_are_bounded_and_retention_deletes_old_events(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "ev.sqlite3", retention_days=30)
    now = time.time()
    many = [Event(f"e{i}", "u", "s", "p", EventType.VIEW, now - 1000 + i) for i in range(3 * MAX_HISTORY)]
    old = Event("old", "u", "s", "p", EventType.VIEW, now - 40 * 86400)
    store.record([*many, old], {"p"})
    assert len(store.recent("u", limit=10_000)) == MAX_HISTORY
    assert store.apply_retention() == 1 and store.count() == 3 * MAX_HISTORY


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
