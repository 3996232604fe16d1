"""The events store's contract: every backend behind ``EventStore`` passes these tests.

``open_store`` is parametrized over the backends: the embedded SQLite store and PostgreSQL (a real server,
a fresh database per store; skipped, saying why, only where PostgreSQL is not installed). What only one
backend does (the trainers reading SQLite's file) is tested next to the contract, named for its backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.event_store import EventStore, SqliteEventStore
from gateway.events import FUTURE_SLACK_S, store_batch
from gateway.pg_events import PostgresEventStore
from vitrine.events import MAX_HISTORY, Event, EventType, read_store

BACKENDS = ["sqlite", "postgres"]

OpenStore = Callable[..., EventStore]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a fresh store of the backend (keyword arguments: retention and trending windows)."""
    opened: list[EventStore] = []
    new_database = request.getfixturevalue("postgres_database") if request.param == "postgres" else None

    def open_(**settings: float) -> EventStore:
        store: EventStore
        if new_database is not None:
            store = PostgresEventStore(new_database(), **settings)
        else:
            store = SqliteEventStore(tmp_path / f"events-{len(opened)}.sqlite3", **settings)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_store_is_idempotent_and_reports_each_bad_event(open_store: OpenStore) -> None:
    store = open_store(retention_days=0)
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
    stored, rejected = store_batch(store, batch, {"p1", "p2"}, start_index=10)
    assert stored == 2
    assert [(r.index, r.code) for r in rejected] == [
        (11, "INVALID_ARGUMENT"),
        (12, "NOT_FOUND"),
        (13, "INVALID_ARGUMENT"),
        (14, "ALREADY_EXISTS"),
    ]
    stored, rejected = store_batch(store, [good], {"p1"})  # a retried stream stores nothing twice
    assert stored == 0 and rejected[0].code == "ALREADY_EXISTS"
    assert [e.event_id for e in store.recent("u1")] == ["e5", "e1"]
    assert store.seen("u1") == {"p1", "p2"}
    assert store.count() == 2


def test_an_event_reads_back_field_for_field(open_store: OpenStore) -> None:
    store = open_store(retention_days=0)
    event = Event(
        "e-full", "u-full", "s-full", "p-full", EventType.CONTACT, 1.7e9 + 0.25, "mobile", "rød støvle"
    )
    assert store.record([event], received=1.7e9) == []
    assert store.record([event], received=1.7e9) == [0]  # stored before: reported, not written twice
    assert store.recent("u-full") == [event]
    nul = Event("e-nul", "u\x00x", "s", "p-full", EventType.VIEW, 1.7e9)  # PostgreSQL's text cannot hold it
    stored, rejected = store_batch(store, [nul], {"p-full"}, now=1.7e9)
    assert stored == 0 and [(r.index, r.code) for r in rejected] == [(0, "INVALID_ARGUMENT")]


def test_history_reads_are_bounded_and_retention_deletes_old_events(open_store: OpenStore) -> None:
    store = open_store(retention_days=30)
    now = time.time()
    many = [Event(f"e{i}", "u", "s", "p", EventType.VIEW, now - 1000 + i) for i in range(3 * MAX_HISTORY)]
    old = Event("old", "u", "s", "p", EventType.VIEW, now - 40 * 86400)
    store_batch(store, [*many, old], {"p"})
    assert len(store.recent("u", limit=10_000)) == MAX_HISTORY
    assert store.apply_retention() == 1 and store.count() == 3 * MAX_HISTORY


def test_trending_weighs_types_and_recency_within_the_window(open_store: OpenStore) -> None:
    store = open_store(retention_days=0, trending_window_days=14)
    now = 1.7e9
    store.record(
        [
            Event("a1", "u1", "s1", "a", EventType.VIEW, now - 3600),
            Event("a2", "u2", "s2", "a", EventType.VIEW, now - 3600),
            Event("b1", "u1", "s1", "b", EventType.PURCHASE, now - 3600),  # one purchase > two views
            Event("c1", "u3", "s3", "c", EventType.PURCHASE, now - 10 * 86400),  # old: decayed below a
            Event("d1", "u3", "s3", "d", EventType.PURCHASE, now - 20 * 86400),  # outside the window
        ],
        received=now,
    )
    ranked = store.trending(now=now)
    assert [item for item, _ in ranked] == ["b", "a", "c"]
    assert store.trending(limit=1, now=now) == ranked[:1]


def test_co_visited_counts_shared_sessions(open_store: OpenStore) -> None:
    store = open_store(retention_days=0)
    now = 1.7e9
    visits = [
        ("s1", "x"),
        ("s1", "y"),
        ("s1", "z"),
        ("s2", "x"),
        ("s2", "y"),
        ("s3", "z"),
        ("", "x"),
        ("", "w"),
    ]
    store.record(
        [Event(f"e{i}", "u", s, item, EventType.VIEW, now + i) for i, (s, item) in enumerate(visits)],
        received=now,
    )
    assert store.co_visited("x") == [("y", 2), ("z", 1)]  # no session: not a co-visit
    assert store.co_visited("x", limit=1) == [("y", 2)]


def test_trainers_read_the_sqlite_store(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "ev.sqlite3", retention_days=0)
    now = time.time()
    events = [
        Event("e5", "u1", "s1", "p2", EventType.PURCHASE, now - 5),
        Event("e1", "u1", "s1", "p1", EventType.VIEW, now - 10),
    ]
    store_batch(store, events, {"p1", "p2"})
    store.close()
    assert [e.event_id for e in read_store(tmp_path / "ev.sqlite3")] == ["e1", "e5"]
