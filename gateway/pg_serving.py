"""The serving pointer in PostgreSQL: one row, one NOTIFY per change, every gateway listening.

``update`` locks the row, writes the new document and NOTIFYs the pointer's channel (``vitrine_serving``
and the schema's name: deployments sharing a database in schemas of their own do not hear each other)
with the new versions in the same transaction, so a notification is delivered only for a committed change, and
never before it. ``follow`` keeps a connection of its own LISTENing: a gateway applies a switch as soon
as the notification arrives (milliseconds on one network). After connecting, and again after every
reconnection, it reads the row first, so a switch made while it was not listening is not missed. The
gateway also reads the row every health interval (``Gateway.probe_once``), which bounds the switch by
that interval even if notifications stopped arriving without the connection being seen to drop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from gateway.errors import Unavailable
from gateway.serving_pointer import Change, ServingVersions, initial_state
from gateway.state_pg import Connections, unavailable

log = logging.getLogger(__name__)

CHANNEL = "vitrine_serving"
SERVING_LOCK = 0x7669_7473
"""Advisory lock serialising writers of the pointer (two rollbacks at once apply one after the other)."""

RECONNECT_S = (0.5, 5.0)
"""First and longest wait before ``follow`` connects again."""


def channel_of(schema: str) -> str:
    """The NOTIFY channel of the pointer in ``schema`` (a channel name has at most 63 bytes)."""
    tail = schema if len(schema.encode()) <= 40 else hashlib.sha1(schema.encode()).hexdigest()[:16]
    return f"{CHANNEL}_{tail}"


def describe(dsn: str) -> str:
    """The database a DSN names, without user or password: safe in logs and messages."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql (unparsable DSN)"
    return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"


class PostgresServingPointer:
    """``dsn`` or a ``Connections`` shared with the events store."""

    def __init__(self, db: str | Connections) -> None:
        self.db = Connections(db) if isinstance(db, str) else db
        self._owns_db = isinstance(db, str)
        self.name = describe(self.db.dsn)

    def read(self) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = conn.execute("SELECT state FROM serving WHERE id = 1").fetchone()
        return dict(row[0]) if row else None

    def update(self, change: Change) -> dict[str, Any]:
        with self.db.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SERVING_LOCK,))
            row = conn.execute("SELECT state FROM serving WHERE id = 1 FOR UPDATE").fetchone()
            state = change(dict(row[0]) if row else initial_state())
            versions = ServingVersions.of(state)  # nothing that a gateway could not read is written
            conn.execute(
                "INSERT INTO serving (id, state) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                (Jsonb(state),),
            )
            schema = conn.execute("SELECT current_schema()").fetchone()
            channel = channel_of(schema[0] if schema else "")
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(versions.to_json())))
        return state

    async def follow(self, apply: Callable[[ServingVersions], None]) -> None:
        """LISTENs until cancelled, reconnecting with backoff while the database is away."""
        wait = RECONNECT_S[0]
        failing = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.dsn, **self.db.params) as conn:
                    schema = await (await conn.execute("SELECT current_schema()")).fetchone()
                    channel = channel_of(schema[0] if schema else "")
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    state = await asyncio.to_thread(self.read)  # what changed while not listening
                    if state is not None:
                        apply(ServingVersions.of(state))
                    if failing:
                        log.warning("serving pointer followed again", extra={"database": self.name})
                    wait, failing = RECONNECT_S[0], False
                    async for note in conn.notifies():
                        apply(ServingVersions.of(json.loads(note.payload)))
            except (psycopg.Error, Unavailable) as exc:
                if not failing:
                    detail = str(unavailable(exc) if isinstance(exc, psycopg.Error) else exc)
                    log.warning("serving pointer not followed", extra={"error": detail})
                failing = True
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("serving pointer unreadable; versions unchanged", extra={"error": str(exc)[:200]})
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])

    def close(self) -> None:
        if self._owns_db:
            self.db.close()
