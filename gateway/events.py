"""The events store: what shoppers did, durable in SQLite, owned by the gateway process.

Schema: one table, ``vitrine.events.SCHEMA`` (event id unique; indexes on (user, time), time, (item,
time) and session). SQLite in WAL mode with ``synchronous=FULL``: a batch is acknowledged only after its
transaction committed and the WAL was synced, so ``kill -9`` (or power loss) loses no acknowledged event.
Idempotent by event id: a stored id is reported as ALREADY_EXISTS and not written twice, so a client
that retries a stream after a failure cannot double-count.

Retention: events older than ``retention_days`` are deleted when the store opens and at most once an
hour after that (0 keeps everything). Reads are bounded: ``recent`` returns at most ``MAX_HISTORY``
events, ``seen`` at most ``MAX_SEEN`` items, ``trending`` looks at the last ``trending_window_days``.

Every method is blocking (sqlite3); the gateway calls them through ``asyncio.to_thread``. One
connection per thread (sqlite3 connections are not shared across threads); writes are serialised by a
lock, readers never block the writer (WAL).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrine.events import (
    EVENT_WEIGHT,
    MAX_HISTORY,
    MAX_QUERY_CHARS,
    MAX_USER_ID_CHARS,
    SCHEMA,
    Event,
    EventType,
)

MAX_SEEN = 1000
"""Most items ``seen`` returns (the exclusion set of one Recommend)."""

FUTURE_SLACK_S = 300.0
"""Timestamps more than this far ahead of the gateway's clock are refused (clock skew allowed)."""

MAX_ID_CHARS = 128


@dataclass(frozen=True)
class Rejected:
    """A refused event: its position in the request, the gRPC status name and why."""

    index: int
    event_id: str
    code: str
    message: str


def check_event(event: Event, now: float) -> str | None:
    """Why ``event`` cannot be stored (without looking at the store), or None."""
    if not event.event_id or len(event.event_id) > MAX_ID_CHARS:
        return f"event_id must be 1-{MAX_ID_CHARS} characters"
    if not event.user_id or len(event.user_id) > MAX_USER_ID_CHARS:
        return f"user_id must be 1-{MAX_USER_ID_CHARS} characters"
    if not event.item_id or len(event.item_id) > MAX_ID_CHARS:
        return f"item_id must be 1-{MAX_ID_CHARS} characters"
    if len(event.session_id) > MAX_ID_CHARS or len(event.device) > 32:
        return f"session_id must be at most {MAX_ID_CHARS} characters, device at most 32"
    if len(event.query) > MAX_QUERY_CHARS:
        return f"query must be at most {MAX_QUERY_CHARS} characters"
    if not math.isfinite(event.ts) or event.ts <= 0:
        return "ts must be a positive Unix time in seconds"
    if event.ts > now + FUTURE_SLACK_S:
        return f"ts is {event.ts - now:.0f} s in the future"
    return None


class EventStore:
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

    def record(
        self, events: Sequence[Event], known_items: set[str], start_index: int = 0, now: float | None = None
    ) -> tuple[int, list[Rejected]]:
        """Stores the valid events of ``events`` in one transaction (returns after the commit is synced).

        ``known_items`` are the catalog ids among the events' items (an event on any other item is refused
        NOT_FOUND). Positions in the rejections count from ``start_index``. Returns (stored, rejected)."""
        now = time.time() if now is None else now
        rejected: list[Rejected] = []
        valid: list[tuple[int, Event]] = []
        in_batch: set[str] = set()
        for i, e in enumerate(events, start_index):
            problem = check_event(e, now)
            if problem is not None:
                rejected.append(Rejected(i, e.event_id[:MAX_ID_CHARS], "INVALID_ARGUMENT", problem))
            elif e.item_id not in known_items:
                rejected.append(
                    Rejected(i, e.event_id, "NOT_FOUND", f"unknown item {e.item_id[:MAX_ID_CHARS]!r}")
                )
            elif e.event_id in in_batch:
                rejected.append(
                    Rejected(i, e.event_id, "ALREADY_EXISTS", "duplicate event_id in this request")
                )
            else:
                in_batch.add(e.event_id)
                valid.append((i, e))
        if not valid:
            return 0, rejected
        stored = 0
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, e in valid:
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO events (event_id, user_id, session_id, item_id, type, ts, "
                        "device, query, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.event_id,
                            e.user_id,
                            e.session_id,
                            e.item_id,
                            e.type.value,
                            e.ts,
                            e.device,
                            e.query,
                            now,
                        ),
                    )
                    if cur.rowcount == 1:
                        stored += 1
                    else:
                        rejected.append(
                            Rejected(i, e.event_id, "ALREADY_EXISTS", "event_id already recorded")
                        )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if now - self._last_retention > 3600:
            self.apply_retention(now)
        rejected.sort(key=lambda r: r.index)
        return stored, rejected

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
        """The user's last ``limit`` events (at most ``MAX_HISTORY``), newest first."""
        rows = self._conn().execute(
            "SELECT event_id, user_id, session_id, item_id, type, ts, device, query FROM events "
            "WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, min(limit, MAX_HISTORY)),
        )
        return [Event(r[0], r[1], r[2], r[3], EventType(r[4]), r[5], r[6], r[7]) for r in rows]

    def seen(self, user_id: str, limit: int = MAX_SEEN) -> set[str]:
        """Items the user interacted with, most recent first, at most ``MAX_SEEN``."""
        rows = self._conn().execute(
            "SELECT item_id, MAX(ts) AS last FROM events WHERE user_id = ? GROUP BY item_id "
            "ORDER BY last DESC LIMIT ?",
            (user_id, min(limit, MAX_SEEN)),
        )
        return {r[0] for r in rows}

    def trending(
        self, limit: int = 200, now: float | None = None, half_life_days: float = 3.0
    ) -> list[tuple[str, float]]:
        """Items by recency-weighted, type-weighted event counts over the trending window (best first)."""
        now = time.time() if now is None else now
        # Aggregated in SQLite by (item, type, hour): Python sees one row per group, not per event.
        rows = self._conn().execute(
            "SELECT item_id, type, CAST((? - ts) / 3600 AS INTEGER) AS age_h, COUNT(*) FROM events "
            "WHERE ts >= ? GROUP BY item_id, type, age_h",
            (now, now - self.trending_window_days * 86400),
        )
        scores: dict[str, float] = {}
        decay = math.log(2) / (half_life_days * 24)
        weight = {t.value: w for t, w in EVENT_WEIGHT.items()}
        for item, kind, age_h, n in rows:
            scores[item] = scores.get(item, 0.0) + weight[kind] * n * math.exp(-decay * max(0.0, age_h + 0.5))
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    def co_visited(self, item_id: str, limit: int = 50, sessions: int = 500) -> list[tuple[str, int]]:
        """Items seen in the same sessions as ``item_id`` (its last ``sessions`` sessions), most shared
        sessions first."""
        rows = self._conn().execute(
            "SELECT e.item_id, COUNT(DISTINCT e.session_id) AS n FROM events e WHERE e.session_id IN "
            "(SELECT session_id FROM events WHERE item_id = ? AND session_id != '' ORDER BY ts DESC LIMIT ?) "
            "AND e.item_id != ? GROUP BY e.item_id ORDER BY n DESC, e.item_id LIMIT ?",
            (item_id, sessions, item_id, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])


# ---- recording a stream (gRPC RecordEvents and HTTP POST /v1/events share this) --------------------------

KNOWN_ITEMS_CACHE = 100_000
"""Catalog ids remembered as existing, so a stream of events on the same products asks the index once."""

CHUNK = 256
"""Events committed per transaction while a stream is read."""


class EventIngest:
    """Validates events (items against the catalog in the index) and commits them chunk by chunk.

    ``index`` is anything with ``get(ids, timeout, include_vectors=False)`` (``gateway.index_client``).
    The store is opened on first use, so a gateway that never records events creates no file."""

    def __init__(self, open_store: Callable[[], EventStore], index: Any) -> None:
        self._open_store = open_store
        self._store: EventStore | None = None
        self._lock = threading.Lock()
        self.index = index
        self._known: dict[str, None] = {}

    @property
    def store(self) -> EventStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._open_store()
        return self._store

    async def _known_items(self, ids: set[str], timeout: float | None) -> set[str]:
        unknown = [i for i in ids if i not in self._known]
        if unknown:
            found = await self.index.get(unknown, timeout, include_vectors=False)
            for pid in found:
                self._known[pid] = None
            while len(self._known) > KNOWN_ITEMS_CACHE:
                self._known.pop(next(iter(self._known)))
        return {i for i in ids if i in self._known}

    async def record(
        self, events: AsyncIterable[Event | Rejected], timeout: Callable[[], float]
    ) -> tuple[int, list[Rejected]]:
        """Stores the stream's valid events (each chunk durable before the next is read). An item of the
        stream that could not even be decoded arrives as a ``Rejected`` and is reported as it is."""
        recorded = 0
        rejected: list[Rejected] = []
        chunk: list[Event] = []
        start = 0
        position = 0

        async def flush() -> None:
            nonlocal recorded, start, chunk
            if chunk:
                known = await self._known_items({e.item_id for e in chunk}, timeout())
                stored, bad = await asyncio.to_thread(self.store.record, chunk, known, start)
                recorded += stored
                rejected.extend(bad)
            chunk = []

        async for item in events:
            if isinstance(item, Rejected):
                await flush()
                rejected.append(Rejected(position, item.event_id, item.code, item.message))
                position += 1
                start = position
                continue
            chunk.append(item)
            position += 1
            if len(chunk) >= CHUNK:
                await flush()
                start = position
        await flush()
        rejected.sort(key=lambda r: r.index)
        return recorded, rejected


def parse_event(
    *,
    event_id: str,
    user_id: str,
    session_id: str = "",
    item_id: str,
    type: str,
    ts: float = 0.0,
    device: str = "",
    query: str = "",
) -> Event | Rejected:
    """One event from a transport's plain values (``ts`` 0 = now); an unknown type is a ``Rejected``
    (its position is filled in by ``EventIngest``)."""
    try:
        kind = EventType(type.strip().lower())
    except ValueError:
        names = ", ".join(t.value for t in EventType)
        return Rejected(
            0,
            event_id[:MAX_ID_CHARS],
            "INVALID_ARGUMENT",
            f"unknown event type {type[:40]!r}; one of {names}",
        )
    return Event(event_id, user_id, session_id, item_id, kind, ts or time.time(), device, query)
