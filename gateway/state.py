"""Where a gateway keeps its state, chosen by its config: embedded, or shared in PostgreSQL.

- ``state_url`` empty (the default): events in the SQLite store at ``recommend.events_path``, the serving
  pointer in ``serving_file`` (if any). One gateway per events file.
- ``state_url`` = ``postgresql://...``: events and the serving pointer in that database, over one set of
  connections; any number of gateways share them. The schema is migrated by the first connection
  (``gateway.state_pg``), which the gateway opens while starting.

What stays per gateway whatever the backend: the trending list (re-read at most every
``recommend.TRENDING_TTL_S``, so a replica's trending answers lag the database by at most that), the
catalog ids known to exist, and the recommender version cache (``rec_version_ttl_s``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.errors import Unavailable
from gateway.event_store import EventStore, SqliteEventStore
from gateway.serving_pointer import FileServingPointer, ServingPointer, ServingVersions

log = logging.getLogger(__name__)


class GatewayState:
    """The gateway's events store (opened on first use) and serving pointer (None: no pointer, the
    gateway serves its configured versions)."""

    def __init__(self, config: GatewayConfig) -> None:
        rec = config.recommend
        self.pointer: ServingPointer | None
        self.open_events: Callable[[], EventStore]
        self._close: Callable[[], None] = lambda: None
        if config.state_url:
            from gateway.pg_events import PostgresEventStore
            from gateway.pg_serving import PostgresServingPointer
            from gateway.state_pg import Connections

            db = Connections(config.state_url)
            self.pointer = PostgresServingPointer(db)
            self.open_events = lambda: PostgresEventStore(
                db, rec.events_retention_days, rec.trending_window_days
            )
            self._close = db.close
        else:
            self.pointer = FileServingPointer(config.serving_file) if config.serving_file else None
            self.open_events = lambda: SqliteEventStore(
                rec.events_path, rec.events_retention_days, rec.trending_window_days
            )
        self._failing = False

    @property
    def reachable(self) -> bool:
        """Whether the last read of the serving pointer succeeded (with PostgreSQL: the database is up)."""
        return not self._failing

    def versions(self) -> ServingVersions | None:
        """The pointer's versions; None when there is no pointer, none was written, or it cannot be read
        (then the versions being served stay; logged once per spell of failures). Blocking."""
        if self.pointer is None:
            return None
        try:
            state = self.pointer.read()
            versions = None if state is None else ServingVersions.of(state)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, Unavailable) as exc:
            if not self._failing:
                log.warning("serving pointer unreadable; versions unchanged", extra={"error": str(exc)[:200]})
            self._failing = True
            return None
        self._failing = False
        return versions

    async def follow(self, apply: Callable[[ServingVersions], None]) -> None:
        """Pushes pointer changes to ``apply`` until cancelled, where the backend can (PostgreSQL)."""
        if self.pointer is not None:
            await self.pointer.follow(apply)

    def close(self) -> None:
        self._close()


def open_pointer(serving_file: str | os.PathLike[str], state_url: str = "") -> ServingPointer | None:
    """The pointer a gateway or a rollout follows: the database when ``state_url`` names one, else the
    file (None when neither is set: the gateway serves its configured versions)."""
    if state_url:
        from gateway.pg_serving import PostgresServingPointer

        return PostgresServingPointer(state_url)
    if serving_file:
        return FileServingPointer(serving_file)
    return None
