"""Which model versions the gateways serve: one shared document, behind one protocol, in a file or a table.

The document is what ``vitrine adapt deploy`` and ``rollback`` write (``operations.rollout``)::

    {"encoder_version": 2, "reranker_version": 2, "pending_version": 3,
     "history": [{"encoder_version": 1, "reranker_version": 1}], "switched_at": ..., "reindex": {...}}

``encoder_version`` and ``reranker_version`` answer queries; ``pending_version``, present while a deploy
re-embeds the catalog, is the version whose vectors every product ingested meanwhile must also get, so
it lives in the same document as the others and every gateway reads it from there.

Backends:
- ``FileServingPointer``: a JSON file replaced atomically (by rename); gateways on one machine re-read
  it every health interval. The default.
- ``gateway.pg_serving.PostgresServingPointer``: one row of the ``serving`` table; a write updates it
  and NOTIFYs in one transaction, gateways LISTEN and switch at once, and re-read the row every health
  interval in case a notification was lost with a connection. Any number of gateways on any machines.

Either way a switch reaches every gateway within one health interval (``--health-interval-s``, 1 s by
default), and each gateway switches its encoder, spaces and cross-encoder in one assignment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vitrine.contracts import BASE_VERSION

Change = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ServingVersions:
    """What a gateway acts on: the versions answering queries and the one being rolled out."""

    encoder_version: int = BASE_VERSION
    reranker_version: int = BASE_VERSION
    pending_version: int = BASE_VERSION

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> ServingVersions:
        """From the document; a document without ``reranker_version`` (written before cross-encoders
        were versioned) means 1. ``ValueError``/``KeyError``/``TypeError`` when it makes no sense."""
        return cls(
            int(state["encoder_version"]),
            int(state.get("reranker_version", BASE_VERSION)),
            int(state.get("pending_version", BASE_VERSION)),
        )

    def to_json(self) -> dict[str, int]:
        return {
            "encoder_version": self.encoder_version,
            "reranker_version": self.reranker_version,
            "pending_version": self.pending_version,
        }


def initial_state() -> dict[str, Any]:
    """The document before any deploy: version 1 of everything, nothing to roll back to."""
    return {"encoder_version": BASE_VERSION, "reranker_version": BASE_VERSION, "history": []}


class ServingPointer(Protocol):
    name: str
    """Where the pointer lives, for messages (a path, or the database without credentials)."""

    def read(self) -> dict[str, Any] | None:
        """The document, or None when none was ever written; raises when it cannot be read."""
        ...

    def update(self, change: Change) -> dict[str, Any]:
        """Replaces the document with ``change(current)`` (``initial_state()`` when none) atomically,
        so every gateway reads the old document or the new, never half; returns the new one. An
        exception from ``change`` writes nothing."""
        ...

    async def follow(self, apply: Callable[[ServingVersions], None]) -> None:
        """Calls ``apply`` as soon as the document changes, until cancelled; returns at once where the
        backend cannot push changes (the file: gateways poll it)."""
        ...

    def close(self) -> None: ...


class FileServingPointer:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def update(self, change: Change) -> dict[str, Any]:
        """Read, change, rename into place. Writers are not locked against each other: one operator
        deploys at a time (PostgreSQL's pointer locks)."""
        state = change(self.read() or initial_state())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.path)
        return state

    async def follow(self, apply: Callable[[ServingVersions], None]) -> None:
        return None

    def close(self) -> None:
        return None
