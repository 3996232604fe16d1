"""Durable state: SQLite (WAL, synchronous=FULL) holds every item; FAISS snapshots spare a rebuild.

A write is acknowledged only after its transaction commits, and with ``synchronous=FULL`` a commit is
on disk, so an acknowledged write survives kill -9 or power loss. SQLite's write-ahead log is the log of
operations; the items table is the compacted state it checkpoints into. An item is one row: its id,
slot, record (attributes and payload, encoded by ``codec.py``, as the spec is) and every non-optional
space's vector concatenated in the spec's declared order; its vectors in optional spaces are rows of
``item_vectors`` keyed (collection, id, space), written in the same transaction, so a crash can never
leave an item's spaces at different versions. Each such row carries ``seq``, the slot watermark when it
was written: a vector written at an item's existing slot after a snapshot is told apart from one the
snapshot holds. Aliases are rows of ``aliases``. Each lexical space is an FTS5 table keyed by slot
(``lexical.py``), written and deleted in the transaction that writes or deletes the item.

Each space's FAISS index is its own snapshot file with the slot watermark it covers: on restart the
snapshot is loaded and only items written above the watermark are re-added (slots are never reused,
so "above the watermark" means "written after the snapshot"). Snapshot files are written to a temporary
name, fsynced, renamed and the directory fsynced, then a collection's files are recorded together in one
transaction; a crash at any point leaves either the old or the new set in force.
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
from google.protobuf.message import DecodeError

from index_service import codec, lexical
from index_service.errors import AlreadyExists, NotFound
from index_service.model import CollectionSpec, LexicalSpec
from vitrine.errors import quoted

SCHEMA_VERSION = 4
"""``PRAGMA user_version`` of a database this code writes. Version 1 (one vector per item) had no
version number and cannot be read: its collections held one space each under no name. Version 2 lacked
optional spaces, aliases and the trained size of snapshots; it is upgraded in place (tables added).
Version 3 had no lexical spaces: its tables are version 4's, so it opens as it is, and a collection gains
a lexical space (filled from its stored records) by ``add_lexical``. The number changed so that code of
version 3, which would write items without their FTS5 rows, refuses a database that may hold some."""

UPGRADABLE = (2, 3)

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    next_slot INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS items (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    vectors BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    collection TEXT NOT NULL,
    space TEXT NOT NULL,
    slot INTEGER NOT NULL,
    file TEXT NOT NULL,
    trained_on INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (collection, space)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_vectors (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    space TEXT NOT NULL,
    seq INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (collection, id, space)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    collection TEXT NOT NULL
) WITHOUT ROWID;
"""

UPGRADES = {2: "ALTER TABLE snapshots ADD COLUMN trained_on INTEGER NOT NULL DEFAULT 0;"}
"""Run on a database of that version before SCHEMA (which creates what is missing)."""


@dataclass(frozen=True)
class Snapshot:
    slot: int
    path: Path
    trained_on: int = 0
    """IVF: how many vectors the index was last trained on (0 = not recorded)."""


@dataclass(frozen=True)
class StoredCollection:
    spec: CollectionSpec
    next_slot: int
    snapshots: dict[str, Snapshot]
    """By space name; a space without an entry has never been snapshotted."""
    error: str = ""
    """Why the stored spec cannot be read (then ``spec`` holds only the name)."""


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
        version = self._check_version()
        if version in UPGRADES:
            self._db.executescript(UPGRADES[version])
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._clean_orphans()
        self._lexical: dict[str, tuple[LexicalSpec, ...]] = {}
        """Each collection's lexical spaces, which every item write keeps (set from stored specs)."""
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def close(self) -> None:
        with self._lock:
            self._db.close()
            for reader in self._readers:
                reader.close()

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (lexical searches): in WAL mode it reads the last commit
        without waiting for a writer's, and it never takes the writer's lock."""
        db = getattr(self._local, "db", None)
        if db is None:
            uri = f"{(self.dir / 'index.db').resolve().as_uri()}?mode=ro"
            db = self._local.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            with self._lock:
                self._readers.append(db)
        return db

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

    def _check_version(self) -> int:
        """Refuse a database of another layout instead of misreading it; returns its version."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables and version != SCHEMA_VERSION and version not in UPGRADABLE:
            self._db.close()
            raise RuntimeError(
                f"{self.dir / 'index.db'} has schema version {version}, this service reads version "
                f"{SCHEMA_VERSION} (items with named vectors); start on a new data directory and re-ingest"
            )
        return int(version)

    def _clean_orphans(self) -> None:
        """Remove snapshot files a crash left unrecorded (written but never committed, or superseded)."""
        recorded = {row[0] for row in self._db.execute("SELECT file FROM snapshots")}
        for path in self.snapshots.glob("*"):
            if path.name not in recorded:
                path.unlink(missing_ok=True)

    # ---- collections ----

    def create_collection(self, spec: CollectionSpec) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO collections (name, spec) VALUES (?, ?)", (spec.name, codec.encode_spec(spec))
                )
                for space in spec.lexical:
                    lexical.fill(db, spec.name, space)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"collection {quoted(spec.name)} already exists") from exc
        self._lexical[spec.name] = spec.lexical

    def drop_collection(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f"collection {quoted(name)} does not exist")
            files = [r[0] for r in db.execute("SELECT file FROM snapshots WHERE collection = ?", (name,))]
            db.execute("DELETE FROM items WHERE collection = ?", (name,))
            db.execute("DELETE FROM item_vectors WHERE collection = ?", (name,))
            db.execute("DELETE FROM snapshots WHERE collection = ?", (name,))
            db.execute("DELETE FROM collections WHERE name = ?", (name,))
            for space in self._lexical.pop(name, ()):
                db.execute(f"DROP TABLE IF EXISTS {lexical.table(name, space.name)}")
        for filename in files:
            (self.snapshots / filename).unlink(missing_ok=True)

    def collections(self) -> list[StoredCollection]:
        with self._lock:
            rows = self._db.execute("SELECT name, spec, next_slot FROM collections ORDER BY name").fetchall()
            snaps = self._db.execute(
                "SELECT collection, space, slot, file, trained_on FROM snapshots"
            ).fetchall()
        by_collection: dict[str, dict[str, Snapshot]] = {}
        for collection, space, slot, filename, trained_on in snaps:
            by_collection.setdefault(collection, {})[space] = Snapshot(
                slot, self.snapshots / filename, trained_on
            )
        out = []
        for name, raw, next_slot in rows:
            try:
                spec, error = codec.decode_spec(raw), ""
            except DecodeError:
                spec, error = CollectionSpec(name=name), "its stored spec cannot be decoded"
            out.append(StoredCollection(spec, next_slot, by_collection.get(name, {}), error))
            self._lexical[name] = spec.lexical
        return out

    def items(self, name: str, chunk: int = 8192) -> Iterator[list[tuple[str, int, bytes, bytes]]]:
        """Every stored item of a collection in slot order, in chunks (a restart streams these):
        (id, slot, every non-optional space's vector concatenated in declared order as float32, record)."""
        cursor = self._db.cursor()
        cursor.execute(
            "SELECT id, slot, vectors, body FROM items WHERE collection = ? ORDER BY slot", (name,)
        )
        while rows := cursor.fetchmany(chunk):
            yield rows

    def item_vectors(self, name: str, chunk: int = 8192) -> Iterator[list[tuple[str, str, int, bytes]]]:
        """Every stored vector in an optional space, in chunks: (id, space, seq, float32 vector)."""
        cursor = self._db.cursor()
        cursor.execute("SELECT id, space, seq, vector FROM item_vectors WHERE collection = ?", (name,))
        while rows := cursor.fetchmany(chunk):
            yield rows

    def lexical_count(self, name: str, space: str) -> int:
        """Rows in a lexical space's table, read from it (0 once the collection is dropped)."""
        try:
            row = self.reader().execute(f"SELECT count(*) FROM {lexical.table(name, space)}").fetchone()
        except sqlite3.OperationalError:  # no such table: dropped since the caller found the collection
            return 0
        return int(row[0])

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT alias, collection FROM aliases").fetchall())

    # ---- writes ----

    def upsert(
        self,
        name: str,
        rows: list[tuple[str, int, bytes, bytes]],
        next_slot: int,
        vectors: list[tuple[str, str, int, bytes]] = (),  # type: ignore[assignment]
    ) -> None:
        """One transaction for the whole batch: every space of every item, or nothing. ``rows`` are items
        (id, slot, non-optional vectors, record); ``vectors`` are optional-space vectors (id, space, seq,
        vector), replacing the item's previous one in that space; others the item had are kept."""
        with self._tx() as db:
            lexical.write_rows(db, name, self._lexical.get(name, ()), rows)
            db.executemany(
                "INSERT OR REPLACE INTO items (collection, id, slot, vectors, body) VALUES (?, ?, ?, ?, ?)",
                [(name, *row) for row in rows],
            )
            db.executemany(
                "INSERT OR REPLACE INTO item_vectors (collection, id, space, seq, vector) "
                "VALUES (?, ?, ?, ?, ?)",
                [(name, *row) for row in vectors],
            )
            db.execute("UPDATE collections SET next_slot = ? WHERE name = ?", (next_slot, name))

    def delete(self, name: str, ids: list[str]) -> None:
        with self._tx() as db:
            lexical.delete_rows(db, name, self._lexical.get(name, ()), ids)
            db.executemany(
                "DELETE FROM items WHERE collection = ? AND id = ?", [(name, item_id) for item_id in ids]
            )
            db.executemany(
                "DELETE FROM item_vectors WHERE collection = ? AND id = ?", [(name, i) for i in ids]
            )

    def set_spec(self, spec: CollectionSpec, dropped_space: str = "") -> None:
        """Record a collection's new spaces; a dropped space's vectors and snapshot go in the same
        transaction (its file after it)."""
        name = spec.name
        with self._tx() as db:
            db.execute(
                "UPDATE collections SET spec = ? WHERE name = ?",
                (codec.encode_spec(spec), name),
            )
            files = []
            if dropped_space:
                files = [
                    r[0]
                    for r in db.execute(
                        "SELECT file FROM snapshots WHERE collection = ? AND space = ?", (name, dropped_space)
                    )
                ]
                db.execute(
                    "DELETE FROM item_vectors WHERE collection = ? AND space = ?", (name, dropped_space)
                )
                db.execute("DELETE FROM snapshots WHERE collection = ? AND space = ?", (name, dropped_space))
        for filename in files:
            (self.snapshots / filename).unlink(missing_ok=True)

    def add_lexical(self, spec: CollectionSpec, space: LexicalSpec) -> int:
        """Record a collection's new spec with ``space`` in it, create the space's table and fill it from
        every stored item, in one transaction; returns the items indexed."""
        with self._tx() as db:
            db.execute("UPDATE collections SET spec = ? WHERE name = ?", (codec.encode_spec(spec), spec.name))
            n = lexical.fill(db, spec.name, space)
        self._lexical[spec.name] = spec.lexical
        return n

    def set_alias(self, alias: str, collection: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO aliases (alias, collection) VALUES (?, ?)", (alias, collection)
            )

    def delete_alias(self, alias: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))

    # ---- snapshots ----

    def write_snapshots(
        self, name: str, indexes: dict[str, faiss.Index], slot: int, trained_on: dict[str, int]
    ) -> None:
        """Write each space's index atomically, record them all with the watermark they cover (and, for
        IVF, the size they were trained on) in one transaction, then retire the files they replace."""
        written = {}
        for space, index in indexes.items():
            # '~' is in no collection or space name, so two (collection, space) pairs never share a file.
            filename = f"{name}~{space}~{slot}.faiss"
            final = self.snapshots / filename
            tmp = self.snapshots / f".{filename}.tmp"
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            written[space] = filename
        _fsync_dir(self.snapshots)
        with self._tx() as db:
            old = dict(
                db.execute("SELECT space, file FROM snapshots WHERE collection = ?", (name,)).fetchall()
            )
            db.executemany(
                "INSERT OR REPLACE INTO snapshots (collection, space, slot, file, trained_on) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (name, space, slot, filename, trained_on.get(space, 0))
                    for space, filename in written.items()
                ],
            )
        for space, filename in old.items():
            if space in written and filename != written[space]:
                (self.snapshots / filename).unlink(missing_ok=True)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
