"""The events store: what shoppers did, behind one protocol, and its SQLite implementation.

``EventStore`` is what the gateway needs from a store: idempotent writes, bounded reads for
recommendations, retention. What a valid event is and which item exists is decided before a store sees
the events (``gateway.events``), so every backend stores the same events and refuses the same ones;
``tests/recommend/test_event_store.py`` holds each backend to the same contract.

``SqliteEventStore``: one table, ``vitrine.events.SCHEMA`` (event id unique; indexes on (user, time),
time, (item, time) and session). WAL mode with ``synchronous=FULL``: a batch is acknowledged only after
its transaction committed and the WAL was synced, so ``kill -9`` (or power loss) loses no acknowledged
event. Idempotent by event id: a stored id is reported and not written twice, so a client that retries
a stream after a failure cannot double-count. It lives in the gateway's process: one gateway per store
file.

Retention: events older than ``retention_days`` are deleted when the store opens and at most once an
hour after that (0 keeps everything). Reads are bounded: ``recent`` returns at most ``MAX_HISTORY``
events, ``seen`` at most ``MAX_SEEN`` items, ``trending`` looks at the last ``trending_window_days``.

Every method is blocking; the gateway calls them through ``asyncio.to_thread``. One connection per
thread (sqlite3 connections are not shared across threads); writes are serialised by a lock, readers
never block the writer (WAL).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from vitrine.events import COLUMNS, EVENT_WEIGHT, MAX_HISTORY, SCHEMA, Event, event_of_row, event_row

MAX_SEEN = 1000
"""Most items ``seen`` returns (the exclusion set of one Recommend)."""

TRENDING_ITEMS = 200
TRENDING_HALF_LIFE_DAYS = 3.0
"""An event's weight in the trending score halves every this many days."""
CO_VISITED_ITEMS = 50
CO_VISITED_SESSIONS = 500
"""Most recent sessions of an item that ``co_visited`` looks into."""

RETENTION_EVERY_S = 3600.0
"""Retention runs when a store opens and then at most this often, on a write."""


class EventReader(Protocol):
    """The reads recommendations make: one user's history, the trending items, an item's neighbours."""

    def recent(self, user_id: str, limit: int = MAX_HISTORY) -> list[Event]:
        """The user's last ``limit`` events (at most ``MAX_HISTORY``), newest first."""
        ...

    def seen(self, user_id: str, limit: int = MAX_SEEN) -> set[str]:
        """Items the user interacted with, most recent first, at most ``MAX_SEEN``."""
        ...

    def trending(
        self,
        limit: int = TRENDING_ITEMS,
        now: float | None = None,
        half_life_days: float = TRENDING_HALF_LIFE_DAYS,
    ) -> list[tuple[str, float]]:
        """Items by recency-weighted, type-weighted event counts over the trending window, best first
        (ties by id)."""
        ...

    def co_visited(
        self, item_id: str, limit: int = CO_VISITED_ITEMS, sessions: int = CO_VISITED_SESSIONS
    ) -> list[tuple[str, int]]:
        """Items seen in the same sessions as ``item_id`` (its last ``sessions`` sessions) with the
        number of sessions shared, most shared first (ties by id)."""
        ...


class EventStore(EventReader, Protocol):
    """A durable events store: the reads above, idempotent writes and retention."""

    def record(self, events: Sequence[Event], received: float) -> list[int]:
        """Stores ``events`` (already checked, ids distinct) in one durable write; returns the positions
        of those whose id was stored before, which are not written again."""
        ...

    def count(self) -> int: ...

    def apply_retention(self, now: float | None = None) -> int:
        """Deletes the events older than the retention period; returns how many."""
        ...

    def close(self) -> None: ...


class SqliteEventStore:
    def __init__(self, path: str | Path, retention_days: float = 180.0, trending_window_days: float = 14.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self.trending_window_days = trending_window_days
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._last_retention = 0.0
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        self.apply_retention()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- writes ---------------------------------------------------------------------------------------

    def record(self, events: Sequence[Event], received: float) -> list[int]:
        """One transaction; returns after the commit is synced."""
        insert = (
            f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}, received) "
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
        )
        existing: list[int] = []
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, e in enumerate(events):
                    if conn.execute(insert, (*event_row(e), received)).rowcount != 1:
                        existing.append(i)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if received - self._last_retention > RETENTION_EVERY_S:
            self.apply_retention(received)
        return existing

    def apply_retention(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        self._last_retention = now
        if self.retention_days <= 0:
            return 0
        with self._write_lock:
            cur = self._conn().execute(
                "DELETE FROM events WHERE ts < ?", (now - self.retention_days * 86400,)
            )
        return int(cur.rowcount)

    # ---- bounded reads -------------------------------------------------------------------------------

    def recent(self, user_id: str, limit: int = MAX_HISTORY) -> list[Event]:
        rows = self._conn().execute(
            f"SELECT {', '.join(COLUMNS)} FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, min(limit, MAX_HISTORY)),
        )
        return [event_of_row(r) for r in rows]

    def seen(self, user_id: str, limit: int = MAX_SEEN) -> set[str]:
        rows = self._conn().execute(
            "SELECT item_id, MAX(ts) AS last FROM events WHERE user_id = ? GROUP BY item_id "
            "ORDER BY last DESC LIMIT ?",
            (user_id, min(limit, MAX_SEEN)),
        )
        return {r[0] for r in rows}

    def trending(
        self,
        limit: int = TRENDING_ITEMS,
        now: float | None = None,
        half_life_days: float = TRENDING_HALF_LIFE_DAYS,
    ) -> list[tuple[str, float]]:
        now = time.time() if now is None else now
        # Aggregated in SQLite by (item, type, hour): Python sees one row per group, not per event.
        rows = self._conn().execute(
            "SELECT item_id, type, CAST((? - ts) / 3600 AS INTEGER) AS age_h, COUNT(*) FROM events "
            "WHERE ts >= ? GROUP BY item_id, type, age_h",
            (now, now - self.trending_window_days * 86400),
        )
        return trending_scores(rows, half_life_days, limit)

    def co_visited(
        self, item_id: str, limit: int = CO_VISITED_ITEMS, sessions: int = CO_VISITED_SESSIONS
    ) -> list[tuple[str, int]]:
        rows = self._conn().execute(
            "SELECT e.item_id, COUNT(DISTINCT e.session_id) AS n FROM events e WHERE e.session_id IN "
            "(SELECT session_id FROM events WHERE item_id = ? AND session_id != '' ORDER BY ts DESC LIMIT ?) "
            "AND e.item_id != ? GROUP BY e.item_id ORDER BY n DESC, e.item_id LIMIT ?",
            (item_id, sessions, item_id, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])


def trending_scores(
    rows: Iterable[tuple[str, str, int, int]], half_life_days: float, limit: int
) -> list[tuple[str, float]]:
    """Items by decayed, type-weighted event counts from (item, type, age in hours, count) rows: each
    store groups its events so, and the scoring is this one function."""
    scores: dict[str, float] = {}
    decay = math.log(2) / (half_life_days * 24)
    weight = {t.value: w for t, w in EVENT_WEIGHT.items()}
    for item, kind, age_h, n in rows:
        scores[item] = scores.get(item, 0.0) + weight[kind] * n * math.exp(-decay * max(0.0, age_h + 0.5))
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
