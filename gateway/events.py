"""Recording shopper events: from a transport's values to the events store, every bad event reported.

gRPC RecordEvents and HTTP POST /v1/events both go through here. ``parse_event`` turns a transport's
plain values into an ``Event``; ``store_batch`` checks a batch (fields, known items, duplicates) and writes
the rest through any ``EventStore`` (``gateway.event_store``); ``EventIngest`` reads a stream chunk by
chunk, each chunk durable before the next is read. A bad event never ends the stream: it comes back as a
``Rejected`` with its position, and the events around it are recorded.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.event_store import EventStore
from vitrine.events import MAX_QUERY_CHARS, MAX_USER_ID_CHARS, Event, parse_type

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
    texts = (event.event_id, event.user_id, event.session_id, event.item_id, event.device, event.query)
    if any("\x00" in text for text in texts):
        return "text fields must not contain NUL characters"  # PostgreSQL's text cannot hold them
    if not math.isfinite(event.ts) or event.ts <= 0:
        return "ts must be a positive Unix time in seconds"
    if event.ts > now + FUTURE_SLACK_S:
        return f"ts is {event.ts - now:.0f} s in the future"
    return None


def store_batch(
    store: EventStore,
    events: Sequence[Event],
    known_items: set[str],
    start_index: int = 0,
    now: float | None = None,
) -> tuple[int, list[Rejected]]:
    """Stores the valid events of ``events`` in one durable write (returns after it).

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
            rejected.append(Rejected(i, e.event_id, "ALREADY_EXISTS", "duplicate event_id in this request"))
        else:
            in_batch.add(e.event_id)
            valid.append((i, e))
    existing = store.record([e for _, e in valid], now) if valid else []
    for j in existing:
        i, e = valid[j]
        rejected.append(Rejected(i, e.event_id, "ALREADY_EXISTS", "event_id already recorded"))
    rejected.sort(key=lambda r: r.index)
    return len(valid) - len(existing), rejected


# ---- recording a stream (gRPC RecordEvents and HTTP POST /v1/events share this) --------------------------

KNOWN_ITEMS_CACHE = 100_000
"""Catalog ids remembered as existing, so a stream of events on the same products asks the index once."""

CHUNK = 256
"""Events committed per transaction while a stream is read."""


class EventIngest:
    """Validates events (items against the catalog in the index) and commits them chunk by chunk.

    ``index`` is anything with ``get(ids, timeout, spaces=())`` (``gateway.types.ItemSource``).
    The store is opened on first use, so a gateway that never records events creates no file."""

    def __init__(self, open_store: Callable[[], EventStore], index: Any) -> None:
        self._open_store = open_store
        self._store: EventStore | None = None
        self._lock = threading.Lock()
        self.index = index
        self._known: dict[str, None] = {}

    def close(self) -> None:
        """Closes the store if it was opened."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

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
            found = await self.index.get(unknown, timeout, spaces=())
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
                stored, bad = await asyncio.to_thread(store_batch, self.store, chunk, known, start)
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
    (its position is filled in by ``EventIngest``). The parameters are ``Event``'s fields
    (``tests/test_shapes.py`` holds them to it)."""
    try:
        kind = parse_type(type)
    except ValueError as exc:
        return Rejected(0, event_id[:MAX_ID_CHARS], "INVALID_ARGUMENT", str(exc))
    return Event(event_id, user_id, session_id, item_id, kind, ts or time.time(), device, query)
