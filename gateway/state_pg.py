"""PostgreSQL under the gateway's shared state: connections, the versioned schema, failures as UNAVAILABLE.

Several gateways share one database for the events store (``gateway.pg_events``) and the serving
pointer (``gateway.pg_serving``). What both need lives here:

- ``MIGRATIONS``: the schema as numbered steps, applied in order at the first connection a process
  makes, each recorded in ``schema_migrations``. Gateways starting together take one transaction-scoped
  advisory lock first, so exactly one applies a step and the others find it recorded. Steps only add:
  a gateway of the previous version keeps working on a migrated database (rolling upgrades).
- ``Connections``: a few connections reused across the threads the gateway's blocking calls run on
  (``asyncio.to_thread``). An idle connection is pinged before reuse, so one that died with the server
  is replaced before a write starts on it, never during one.
- Every connection failure (server down, restarting, refusing connections) becomes the gateway's
  ``Unavailable(Dependency.STATE)``: callers see UNAVAILABLE with a bounded message and retry.

The database is opened lazily: a gateway whose database is down still starts and serves searches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gateway.errors import Dependency, Unavailable
from vitrine.errors import bounded

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2
"""Seconds a connection attempt may take; a call during an outage fails after at most this."""

MAX_IDLE = 8
"""Idle connections kept per process; more are opened under load and closed when returned."""

APPLICATION_NAME = "vitrine-gateway"

MIGRATION_LOCK = 0x7669_7472
"""The advisory lock gateways take while migrating (any constant no other application uses)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events",
        """
        CREATE TABLE events (
            seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id   text NOT NULL UNIQUE,
            user_id    text NOT NULL,
            session_id text NOT NULL,
            item_id    text NOT NULL,
            type       text NOT NULL,
            ts         double precision NOT NULL,
            device     text NOT NULL DEFAULT '',
            query      text NOT NULL DEFAULT '',
            received   double precision NOT NULL
        );
        CREATE INDEX events_user_ts ON events (user_id, ts DESC);
        CREATE INDEX events_ts ON events (ts);
        CREATE INDEX events_item ON events (item_id, ts DESC);
        CREATE INDEX events_session ON events (session_id);
        """,
    ),
    Migration(
        2,
        "serving pointer",
        """
        CREATE TABLE serving (
            id         smallint PRIMARY KEY CHECK (id = 1),
            state      jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
)
"""The schema, step by step. The events table holds the columns of ``vitrine.events.SCHEMA`` (SQLite's),
so both stores hold the same record; the serving table holds one row, the serving file's document."""

SCHEMA_VERSION = MIGRATIONS[-1].version


def unavailable(exc: BaseException) -> Unavailable:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unavailable(Dependency.STATE, bounded(f"PostgreSQL: {detail}", 300))


def migrate(conn: psycopg.Connection) -> list[int]:
    """Applies the steps this database lacks, in one transaction under the migration lock; returns the
    versions it applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for step in MIGRATIONS:
            if step.version not in done:
                conn.execute(step.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (step.version, step.name)
                )
                applied.append(step.version)
    newer = max(done, default=0)
    if newer > SCHEMA_VERSION:
        log.warning("database schema is newer than this gateway", extra={"schema": newer})
    if applied:
        log.warning("database schema migrated", extra={"applied": applied})
    return applied


class Connections:
    """Connections to one database, shared by the threads of one process; the schema is migrated by the
    first connection this object opens."""

    def __init__(self, dsn: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        try:
            info = conninfo_to_dict(dsn)
        except psycopg.Error:  # its message may quote the DSN, password included
            raise ValueError(
                "state_url is neither a PostgreSQL URL (postgresql://user@host:5432/db) nor a key=value DSN"
            ) from None
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        # How the gateway's sessions show in pg_stat_activity, unless the DSN names them itself.
        self.params: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout_s)),
            **({} if "application_name" in info else {"application_name": APPLICATION_NAME}),
        }
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._migrated = False
        self._closed = False

    def _open(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, **self.params)
        if not self._migrated:
            try:
                migrate(conn)
            except psycopg.Error as exc:  # e.g. a role without CREATE: the database cannot serve us yet
                conn.close()
                raise unavailable(exc) from None
            self._migrated = True
        return conn

    def _take(self) -> psycopg.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open()
            try:
                conn.execute("")  # the server may have died since this connection was last used
                return conn
            except psycopg.Error:
                conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A live connection (autocommit; open a transaction for writes); any connection failure
        inside raises ``Unavailable``."""
        try:
            conn = self._take()
        except psycopg.OperationalError as exc:
            raise unavailable(exc) from None
        try:
            yield conn
        except psycopg.OperationalError as exc:
            conn.close()
            raise unavailable(exc) from None
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for conn in idle:
            conn.close()
