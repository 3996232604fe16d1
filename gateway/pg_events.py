"""The events store in PostgreSQL: what ``SqliteEventStore`` does, shared by every gateway.

Same protocol (``gateway.event_store.EventStore``), same contract suite
(``tests/recommend/test_event_store.py``), same columns (``gateway.state_pg.MIGRATIONS``). A batch is one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT (event_id) DO NOTHING`` in one transaction, acknowledged
after the commit, which with ``synchronous_commit=on`` (the server default, set again per connection
here) means after the WAL reached disk: ``kill -9`` of PostgreSQL loses no acknowledged event. Two
gateways recording the same event id store it once; the second reports it as already recorded.

What the backends cannot hide, written down:
- a connection failure is ``Unavailable(Dependency.STATE)`` (UNAVAILABLE to the caller) instead of an
  error on a local file; the store reconnects on the next call;
- PostgreSQL's text cannot hold NUL characters; the gateway refuses such events before any store sees
  them (``gateway.events.check_event``), for both backends;
- ties in ``co_visited`` are ordered by item id bytewise (``COLLATE "C"``), as SQLite does, whatever the
  database's collation;
- retention runs on every gateway at most once an hour; several running it at once is harmless;
- the offline trainers read an events file (JSONL, or the SQLite store's file): export the table to
  JSONL first (docs/PRODUCTION.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from gateway.errors import Unavailable
from gateway.event_store import (
    CO_VISITED_ITEMS,
    CO_VISITED_SESSIONS,
    MAX_SEEN,
    RETENTION_EVERY_S,
    TRENDING_HALF_LIFE_DAYS,
    TRENDING_ITEMS,
    trending_scores,
)
from gateway.state_pg import Connections
from vitrine.events import COLUMNS, MAX_HISTORY, Event, event_of_row, event_row

_ARRAY_TYPE = {"ts": "float8"}
"""Array type of each column in the batch insert; text unless named here."""

_ARRAYS = ", ".join(f"%s::{_ARRAY_TYPE.get(c, 'text')}[]" for c in COLUMNS)
_INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}, received) SELECT u.*, %s::float8 FROM unnest({_ARRAYS}) "
    "AS u ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


class PostgresEventStore:
    """``dsn`` or a ``Connections`` shared with the serving pointer; the schema is migrated on first use."""

    def __init__(
        self, db: str | Connections, retention_days: float = 180.0, trending_window_days: float = 14.0
    ) -> None:
        self.db = Connections(db) if isinstance(db, str) else db
        self._owns_db = isinstance(db, str)
        self.retention_days = retention_days
        self.trending_window_days = trending_window_days
        self._last_retention = 0.0
        self.apply_retention()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    # ---- writes ---------------------------------------------------------------------------------------

    def record(self, events: Sequence[Event], received: float) -> list[int]:
        """One transaction; returns after the commit reached disk."""
        if not events:
            return []
        columns = [list(column) for column in zip(*(event_row(e) for e in events), strict=True)]
        with self.db.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            stored = {row[0] for row in conn.execute(_INSERT, (received, *columns))}
        if received - self._last_retention > RETENTION_EVERY_S:
            with contextlib.suppress(Unavailable):  # the batch is committed: acknowledge it regardless
                self.apply_retention(received)
        return [i for i, e in enumerate(events) if e.event_id not in stored]

    def apply_retention(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        self._last_retention = now
        if self.retention_days <= 0:
            return 0
        with self.db.connection() as conn:
            cur = conn.execute("DELETE FROM events WHERE ts < %s", (now - self.retention_days * 86400,))
            return int(cur.rowcount)

    # ---- bounded reads -------------------------------------------------------------------------------

    def recent(self, user_id: str, limit: int = MAX_HISTORY) -> list[Event]:
        with self.db.connection() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM events WHERE user_id = %s "
                "ORDER BY ts DESC, seq DESC LIMIT %s",
                (user_id, min(limit, MAX_HISTORY)),
            ).fetchall()
        return [event_of_row(r) for r in rows]

    def seen(self, user_id: str, limit: int = MAX_SEEN) -> set[str]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT item_id, MAX(ts) AS last FROM events WHERE user_id = %s GROUP BY item_id "
                "ORDER BY last DESC LIMIT %s",
                (user_id, min(limit, MAX_SEEN)),
            ).fetchall()
        return {r[0] for r in rows}

    def trending(
        self,
        limit: int = TRENDING_ITEMS,
        now: float | None = None,
        half_life_days: float = TRENDING_HALF_LIFE_DAYS,
    ) -> list[tuple[str, float]]:
        now = time.time() if now is None else now
        # One row per (item, type, hour) as in SQLite; trunc() rounds toward zero as SQLite's CAST does.
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT item_id, type, trunc((%s - ts) / 3600)::bigint AS age_h, COUNT(*) FROM events "
                "WHERE ts >= %s GROUP BY item_id, type, age_h",
                (now, now - self.trending_window_days * 86400),
            ).fetchall()
        return trending_scores(rows, half_life_days, limit)

    def co_visited(
        self, item_id: str, limit: int = CO_VISITED_ITEMS, sessions: int = CO_VISITED_SESSIONS
    ) -> list[tuple[str, int]]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT e.item_id, COUNT(DISTINCT e.session_id) AS n FROM events e WHERE e.session_id IN "
                "(SELECT session_id FROM events WHERE item_id = %s AND session_id != '' "
                "ORDER BY ts DESC LIMIT %s) AND e.item_id != %s "
                'GROUP BY e.item_id ORDER BY n DESC, e.item_id COLLATE "C" LIMIT %s',
                (item_id, sessions, item_id, limit),
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def count(self) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0]) if row else 0
