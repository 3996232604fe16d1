"""Shopper events: the record, its types and weights, the JSONL interchange format and the store's schema.

One event is one thing a shopper did to one product: ``view``, ``click``, ``favorite``, ``cart``,
``contact`` (asked the seller) or ``purchase``. The gateway records them (``gateway.event_store``, SQLite),
the behaviour generator writes them (``demo.behaviour``) and the trainer reads them (``recommend``), all
through this module, so the three cannot disagree on a field or a weight.

JSONL import format (one object per line; ``vitrine events load`` and ``read_events`` read it)::

    {"event_id": "e1", "user_id": "u42", "session_id": "s9", "item_id": "p000017",
     "type": "click", "ts": 1733140800.0, "device": "mobile", "query": "red boots"}

``ts`` is Unix seconds (a number) or an ISO-8601 string with a zone; ``device`` and ``query`` may be
omitted; ``event_id`` makes loading idempotent (a line loaded twice is stored once).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, get_type_hints

from vitrine.contracts import REC_HISTORY


class EventType(str, Enum):
    VIEW = "view"
    CLICK = "click"
    FAVORITE = "favorite"
    CART = "cart"
    CONTACT = "contact"
    PURCHASE = "purchase"


EVENT_WEIGHT: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 2.0,
    EventType.FAVORITE: 4.0,
    EventType.CART: 4.0,
    EventType.CONTACT: 6.0,
    EventType.PURCHASE: 8.0,
}
"""How much an event says about a shopper's taste: purchase > contact > favourite/cart > click > view.
Training weights its targets by it; the user tower's type embedding starts from it."""

EVENT_CODE: dict[EventType, int] = {t: i + 1 for i, t in enumerate(EventType)}
"""Integer code of each type as the user tower reads it; 0 is padding."""

MAX_HISTORY = REC_HISTORY
"""Most recent events the user tower reads (and the gateway fetches per Recommend)."""

MAX_USER_ID_CHARS = 128
MAX_QUERY_CHARS = 512


@dataclass(frozen=True)
class Event:
    """A shopper event, declared once: the JSONL format, the store's columns and the gateway's protobuf
    and JSON messages are derived from these fields or checked against them (``tests/test_shapes.py``)."""

    event_id: str
    user_id: str
    session_id: str
    item_id: str
    type: EventType
    ts: float
    """Unix seconds."""
    device: str = ""
    query: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = self.type.value
        return out


COLUMNS = tuple(f.name for f in fields(Event))
"""The event's fields in declared order: the JSONL keys and the events table's columns."""


def parse_ts(value: Any) -> float:
    """Unix seconds from a number or an ISO-8601 string (a zone is required: naive times are ambiguous)."""
    if isinstance(value, bool):
        raise ValueError("ts must be a number or an ISO-8601 string")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"ts {value!r} has no time zone")
        return parsed.timestamp()
    raise ValueError("ts must be a number or an ISO-8601 string")


def parse_type(value: Any) -> EventType:
    """An event type from its name, in any case; ``ValueError`` lists the names there are."""
    try:
        return EventType(str(value).strip().lower())
    except ValueError:
        names = ", ".join(t.value for t in EventType)
        raise ValueError(f"unknown event type {str(value)[:40]!r}; one of {names}") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _reader(name: str, kind: Any) -> Callable[[Any], Any]:
    """How an imported value becomes field ``name``, by its type; an unknown type fails at import."""
    readers: dict[Any, Callable[[Any], Any]] = {str: _text, EventType: parse_type, float: parse_ts}
    if kind not in readers:
        raise TypeError(f"Event.{name}: no import reader for {kind}")
    return readers[kind]


_READERS = {f.name: _reader(f.name, get_type_hints(Event)[f.name]) for f in fields(Event)}


def event_from_json(row: dict[str, Any]) -> Event:
    """One event from a JSONL object; ``ValueError`` says what is wrong with it."""
    return Event(**{name: read(row.get(name)) for name, read in _READERS.items()})


def event_row(event: Event) -> tuple[Any, ...]:
    """The event as the store's columns (``COLUMNS``) hold it: the type by its name."""
    values = event.to_json()
    return tuple(values[name] for name in COLUMNS)


def event_of_row(row: Sequence[Any]) -> Event:
    """An event from the store's columns (``COLUMNS``, in order)."""
    values = dict(zip(COLUMNS, row, strict=True))
    return Event(**{**values, "type": EventType(values["type"])})


def read_events(path: str | Path) -> Iterator[Event]:
    """Events of a JSONL file (the import format above), or of an events store's SQLite file."""
    path = Path(path)
    if path.suffix in (".sqlite", ".sqlite3", ".db"):
        yield from read_store(path)
        return
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield event_from_json(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e.to_json()) + "\n")
            n += 1
    return n


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    ts         REAL NOT NULL,
    device     TEXT NOT NULL DEFAULT '',
    query      TEXT NOT NULL DEFAULT '',
    received   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts DESC);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_item ON events (item_id, ts DESC);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
"""
"""The events store's one table (``gateway.event_store`` writes it; trainers read it with ``read_store``)."""


def read_store(path: str | Path) -> Iterator[Event]:
    """Every stored event in time order, read-only (safe while the gateway writes: WAL readers do not
    block the writer)."""
    uri = f"file:{Path(path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY ts, seq"):
            yield event_of_row(row)
    finally:
        conn.close()
