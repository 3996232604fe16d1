"""Durable state: SQLite (WAL, synchronous=FULL) holds every item; FAISS snapshots spare a rebuild.

A write is acknowledged only after its transaction commits, and with ``synchronous=FULL`` a commit is
on disk, so an acknowledged write survives kill -9 or power loss. SQLite's write-ahead log is the log of
operations; the items table is the compacted state it checkpoints into. A FAISS snapshot records the
slot watermark it covers: on restart the snapshot is loaded and only items written above the watermark
are re-added (slots are never reused, so "above the watermark" means "written after the snapshot").
Snapshot files are written to a temporary name, fsynced, renamed and the directory fsynced, then
recorded in the database; a crash at any point leaves either the old or the new snapshot in force.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss

from index_service.errors import AlreadyExists, NotFound
from vitrine.index.v1 import index_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    next_slot INTEGER NOT NULL DEFAULT 0,
    snapshot_slot INTEGER NOT NULL DEFAULT 0,
    snapshot_file TEXT
);
CREATE TABLE IF NOT EXISTS items (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    vector BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class StoredCollection:
    spec: pb.CollectionSpec
    next_slot: int
    snapshot_slot: int
    snapshot_path: Path | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir)
        self.snapshots = self.dir / "snapshots"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "index.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._clean_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _clean_orphans(self) -> None:
        """Remove snapshot files a crash left unrecorded (written but never committed, or superseded)."""
        recorded = {row[0] for row in self._db.execute("SELECT snapshot_file FROM collections") if row[0]}
        for path in self.snapshots.glob("*"):
            if path.name not in recorded:
                path.unlink(missing_ok=True)

    # ---- collections ----

    def create_collection(self, spec: pb.CollectionSpec) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO collections (name, spec) VALUES (?, ?)",
                    (spec.name, spec.SerializeToString(deterministic=True)),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"collection {spec.name!r} already exists") from exc

    def drop_collection(self, name: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT snapshot_file FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"collection {name!r} does not exist")
            db.execute("DELETE FROM items WHERE collection = ?", (name,))
            db.execute("DELETE FROM collections WHERE name = ?", (name,))
        if row[0]:
            (self.snapshots / row[0]).unlink(missing_ok=True)

    def collections(self) -> list[StoredCollection]:
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, next_slot, snapshot_slot, snapshot_file FROM collections ORDER BY name"
            ).fetchall()
        return [
            StoredCollection(
                pb.CollectionSpec.FromString(spec), next_slot, snap_slot, self.snapshots / f if f else None
            )
            for spec, next_slot, snap_slot, f in rows
        ]

    def items(self, name: str, chunk: int = 8192) -> Iterator[list[tuple[str, int, bytes, bytes]]]:
        """Every stored item of a collection in slot order, in chunks (a restart streams these)."""
        cursor = self._db.cursor()
        cursor.execute("SELECT id, slot, vector, body FROM items WHERE collection = ? ORDER BY slot", (name,))
        while rows := cursor.fetchmany(chunk):
            yield rows

    # ---- writes ----

    def upsert(self, name: str, rows: list[tuple[str, int, bytes, bytes]], next_slot: int) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO items (collection, id, slot, vector, body) VALUES (?, ?, ?, ?, ?)",
                [(name, *row) for row in rows],
            )
            db.execute("UPDATE collections SET next_slot = ? WHERE name = ?", (next_slot, name))

    def delete(self, name: str, ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM items WHERE collection = ? AND id = ?", [(name, item_id) for item_id in ids]
            )

    # ---- snapshots ----

    def write_snapshot(self, name: str, index: faiss.Index, slot: int) -> None:
        """Write the index atomically, record it with the watermark it covers, then retire the old one."""
        filename = f"{name}.{slot}.faiss"
        final = self.snapshots / filename
        tmp = self.snapshots / f".{filename}.tmp"
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.snapshots)
        with self._tx() as db:
            row = db.execute("SELECT snapshot_file FROM collections WHERE name = ?", (name,)).fetchone()
            db.execute(
                "UPDATE collections SET snapshot_slot = ?, snapshot_file = ? WHERE name = ?",
                (slot, filename, name),
            )
        if row and row[0] and row[0] != filename:
            (self.snapshots / row[0]).unlink(missing_ok=True)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
