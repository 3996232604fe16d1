"""The index engine: collections, their locks and their durability. Synchronous; run off the event loop.

Concurrency: per collection, one writer at a time (``write_mutex``), and a readers-writer lock that
searches share and that a writer holds exclusively only while it applies an already-committed write to
memory. A write is applied before it is acknowledged, so a search issued after the acknowledgement sees
it; searches never wait for a disk commit.

Aliases: a name that resolves to a collection at call time. Each call resolves it once (a search through
an alias re-pointed mid-call answers wholly from one collection); the alias map is replaced whole under
the registry lock, so readers need no lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm import tqdm

from index_service import filters
from index_service.collection import (
    BRUTE_FORCE_MAX,
    Collection,
    Space,
    check_collection_name,
    check_search_params,
    normalize_spec,
    normalize_vector_spec,
)
from index_service.config import (
    MAX_BATCH,
    MAX_ID_CHARS,
    MAX_K,
    MAX_PAYLOAD_BYTES,
    MAX_QUERIES,
    MAX_SPACES,
)
from index_service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from index_service.storage import Snapshot, Storage, StoredCollection
from vitrine.errors import quoted
from vitrine.index.v2 import index_pb2 as pb

log = logging.getLogger(__name__)


class RWLock:
    """Many readers or one writer; writers are not starved because a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Handle:
    def __init__(self, collection: Collection, device: str) -> None:
        self.c = collection
        self.device = device
        for space in collection.spaces.values():
            self.attach(space)
        self.write_mutex = threading.Lock()
        self.rw = RWLock()
        self.dropped = False

    def attach(self, space: Space) -> None:
        if self.device == "gpu":  # GPU
            from index_service.gpu import GpuMirror

            space.gpu = GpuMirror()


@dataclass(frozen=True)
class Found:
    id: str
    score: float
    body: bytes


class Engine:
    def __init__(
        self,
        data_dir: str,
        snapshot_every: int = 100_000,
        device: str = "cpu",
        brute_force_max: int = BRUTE_FORCE_MAX,
    ) -> None:
        self.brute_force_max = brute_force_max
        self.storage = Storage(data_dir)
        self.snapshot_every = snapshot_every
        self.device = device
        self._handles: dict[str, _Handle] = {}
        self._aliases: dict[str, str] = {}
        self._broken: dict[str, str] = {}
        """Collections that could not be loaded at start: name -> why (an exception's class name)."""
        """alias -> collection; replaced whole under ``_registry_lock``."""
        self._registry_lock = threading.Lock()
        self.load_seconds = 0.0

    def close(self) -> None:
        self.storage.close()

    # ---- restart ----

    def load(self, progress: bool = False) -> None:
        """Rebuild memory from the database and the latest snapshots (the restart path).

        A collection that cannot be loaded is logged and skipped, so it cannot keep the others from
        serving; calls naming it are FAILED_PRECONDITION until it is dropped. An unreadable snapshot is
        not such a failure: the space's index is rebuilt from the stored vectors instead.
        """
        start = time.perf_counter()
        for stored in self.storage.collections():
            try:
                self._load_collection(stored, progress)
            except Exception as exc:
                name = stored.spec.name
                self._broken[name] = str(exc)[:200] if isinstance(exc, ValueError) else type(exc).__name__
                log.error(
                    "collection could not be loaded; skipped",
                    extra={"collection": name, "error": repr(exc)[:500]},
                )
        self._aliases = self.storage.aliases()
        self.load_seconds = time.perf_counter() - start
        log.info(
            "index loaded", extra={"seconds": round(self.load_seconds, 3), "collections": len(self._handles)}
        )

    def _load_collection(self, stored: StoredCollection, progress: bool) -> None:
        if stored.error:
            raise ValueError(stored.error)
        c = Collection(stored.spec, self.brute_force_max)
        c._ensure(stored.next_slot)
        bar = tqdm(desc=f"loading {c.name}", unit="item", disable=not progress)
        required = [c.spaces[name] for name in c.required]
        width = sum(space.dim for space in required)
        for rows in self.storage.items(c.name):
            slots = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            if width:
                packed = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
                packed = packed.reshape(-1, width)
                offset = 0
                for space in required:
                    space.vectors.data[slots] = packed[:, offset : offset + space.dim]
                    offset += space.dim
            for space in required:
                space.has.data[slots] = True
            c.alive.data[slots] = True
            for item_id, slot, _, body in rows:
                c.slot_ids[slot] = item_id
                c.bodies[slot] = body
                c.slot_of[item_id] = slot
                c._index_attributes(slot, body)
            bar.update(len(rows))
        bar.close()
        for space in required:
            space.count = c.count
        late = self._load_optional_vectors(c, stored.snapshots)
        c.next_slot = stored.next_slot
        for space in c.spaces.values():
            self._restore_index(space, stored.snapshots.get(space.name), late[space.name])
        self._handles[c.name] = _Handle(c, self.device)

    def _load_optional_vectors(self, c: Collection, snapshots: dict[str, Snapshot]) -> dict[str, np.ndarray]:
        """Optional-space vectors into memory; returns, per space, the slots below its snapshot's
        watermark whose vector was written after the snapshot (added where the item already was)."""
        late: dict[str, list[int]] = {name: [] for name in c.spaces}
        for rows in self.storage.item_vectors(c.name):
            for item_id, space_name, seq, blob in rows:
                space, slot = c.spaces.get(space_name), c.slot_of.get(item_id)
                if space is None or slot is None:
                    continue
                space.vectors.data[slot] = np.frombuffer(blob, dtype=np.float32)
                space.has.data[slot] = True
                space.count += 1
                snap = snapshots.get(space_name)
                if snap is not None and slot < snap.slot <= seq:
                    late[space_name].append(slot)
        return {name: np.array(sorted(slots), dtype=np.int64) for name, slots in late.items()}

    def _restore_index(self, space: Space, snapshot: Snapshot | None, late: np.ndarray) -> None:
        if snapshot is not None and snapshot.path.exists():
            try:
                index = faiss.read_index(str(snapshot.path))
            except RuntimeError as exc:
                log.warning(
                    "snapshot unreadable; rebuilding the index from stored vectors",
                    extra={"collection": space.owner.name, "space": space.name, "error": str(exc)[:300]},
                )
            else:
                space.restore(index, snapshot.slot, late, snapshot.trained_on)
                return
        if space.index is not None or space.count >= space.spec.index.train_min:
            space.rebuild_index()

    # ---- collections and aliases ----

    def resolve(self, name: str) -> str:
        """The collection a name means now: an alias's target, else the name itself."""
        return self._aliases.get(name, name)

    def _handle(self, name: str) -> _Handle:
        target = self._aliases.get(name, name)
        handle = self._handles.get(target)
        if handle is None:
            if target in self._broken:
                raise FailedPrecondition(
                    f"collection {quoted(target)} could not be loaded at start ({self._broken[target]}); "
                    "drop it and create it again"
                )
            raise NotFound(f"collection {quoted(name)} does not exist")
        return handle

    def create(self, spec: pb.CollectionSpec) -> pb.CollectionStats:
        """Validate, build in memory (every space's FAISS index), and only then persist: a stored spec
        is one this service has already built, so a restart can always load it."""
        spec = normalize_spec(spec)
        collection = Collection(spec, self.brute_force_max)
        for space in collection.spaces.values():
            space.check_buildable()
        with self._registry_lock:
            if spec.name in self._aliases:
                raise AlreadyExists(f"{quoted(spec.name)} is an alias; a collection cannot take its name")
            self.storage.create_collection(spec)
            handle = self._handles[spec.name] = _Handle(collection, self.device)
        return self._stats(handle)

    def drop(self, name: str) -> None:
        with self._registry_lock:
            if name in self._broken and not any(t == name for t in self._aliases.values()):
                self.storage.drop_collection(name)
                del self._broken[name]
                return
            handle = self._handle(name)
            name = handle.c.name
            pointing = sorted(a for a, target in self._aliases.items() if target == name)
            if pointing:
                raise FailedPrecondition(
                    f"collection {quoted(name)} is the target of alias {quoted(pointing[0])}"
                    + (f" and {len(pointing) - 1} more" if len(pointing) > 1 else "")
                    + "; re-point or delete its aliases first"
                )
            with handle.write_mutex:
                self.storage.drop_collection(name)
                handle.dropped = True
                del self._handles[name]

    def set_alias(self, alias: str, collection: str) -> str:
        """Create or re-point ``alias``; returns the collection it pointed to before ('' when new)."""
        check_collection_name(alias, "alias")
        with self._registry_lock:
            if alias in self._handles:
                raise AlreadyExists(f"{quoted(alias)} is a collection; an alias cannot take its name")
            if collection in self._aliases:
                raise InvalidArgument(f"{quoted(collection)} is an alias; an alias points to a collection")
            if collection not in self._handles:
                raise NotFound(f"collection {quoted(collection)} does not exist")
            previous = self._aliases.get(alias, "")
            if previous != collection:
                self.storage.set_alias(alias, collection)
                self._aliases = {**self._aliases, alias: collection}
            return previous

    def delete_alias(self, alias: str) -> None:
        with self._registry_lock:
            if alias not in self._aliases:
                raise NotFound(f"alias {quoted(alias)} does not exist")
            self.storage.delete_alias(alias)
            self._aliases = {a: c for a, c in self._aliases.items() if a != alias}

    def list_aliases(self) -> list[tuple[str, str]]:
        return sorted(self._aliases.items())

    # ---- vector spaces ----

    def add_space(self, name: str, vector: pb.VectorSpec) -> pb.CollectionStats:
        """Build the new space in memory (its FAISS index included), persist the spec, then publish it."""
        vector = normalize_vector_spec(vector)
        handle = self._handle(name)
        c = handle.c
        with handle.write_mutex:
            if handle.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            if vector.name in c.spaces:
                raise AlreadyExists(
                    f"collection {quoted(c.name)} already has a vector space {quoted(vector.name)}"
                )
            if len(c.spaces) >= MAX_SPACES:
                raise InvalidArgument(
                    f"collection {quoted(c.name)} already has the most spaces, {MAX_SPACES}"
                )
            space = c.new_space(vector)
            space.check_buildable()
            handle.attach(space)
            spec = pb.CollectionSpec()
            spec.CopyFrom(c.spec)
            spec.vectors.append(vector)
            self.storage.set_spec(spec)
            with handle.rw.write():
                c.install(space)
        return self._stats(handle)

    def drop_space(self, name: str, space_name: str) -> pb.CollectionStats:
        handle = self._handle(name)
        c = handle.c
        with handle.write_mutex:
            if handle.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            space = c.spaces.get(space_name)
            if space is None:
                raise NotFound(f"collection {quoted(c.name)} has no vector space {quoted(space_name)}")
            if not space.spec.optional:
                raise FailedPrecondition(
                    f"vector space {quoted(space_name)} of {quoted(c.name)} is not optional: every item has "
                    "a vector in it; only optional spaces can be dropped"
                )
            spec = pb.CollectionSpec()
            spec.CopyFrom(c.spec)
            del spec.vectors[:]
            spec.vectors.extend(v for v in c.spec.vectors if v.name != space_name)
            self.storage.set_spec(spec, dropped_space=space_name)
            with handle.rw.write():
                c.remove_space(space_name)
        return self._stats(handle)

    def list_collections(self) -> list[pb.CollectionStats]:
        return [self._stats(h) for h in sorted(self._handles.values(), key=lambda h: h.c.name)]

    def stats(self, name: str) -> pb.CollectionStats:
        return self._stats(self._handle(name))

    def _stats(self, handle: _Handle) -> pb.CollectionStats:
        c = handle.c
        with handle.rw.read():
            return pb.CollectionStats(
                spec=c.spec,
                count=c.count,
                vectors=[
                    pb.VectorStats(
                        name=space.name,
                        dim=space.dim,
                        index_total=int(space.index.ntotal) if space.index is not None else 0,
                        trained=space.trained,
                        nlist=space.nlist,
                        snapshot_slot=space.snapshot_slot,
                        count=space.count,
                    )
                    for space in c.spaces.values()
                ],
                device=self.device,
            )

    def counts(self) -> dict[str, int]:
        return {name: h.c.count for name, h in list(self._handles.items())}

    def index_totals(self) -> dict[tuple[str, str], int]:
        """Vectors held by each (collection, space) FAISS index, tombstones included (no lock: a gauge)."""
        out = {}
        for name, handle in list(self._handles.items()):
            for space in handle.c.spaces.values():
                index = space.index
                out[name, space.name] = int(index.ntotal) if index is not None else 0
        return out

    # ---- writes ----

    def upsert(self, name: str, items: list[pb.Item]) -> tuple[int, int]:
        handle = self._handle(name)
        c = handle.c
        if not items:
            raise InvalidArgument("upsert needs at least one item")
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(items)} items exceeds the limit of {MAX_BATCH}")
        seen: set[str] = set()
        bodies = []
        for i, item in enumerate(items):
            _check_id(item.id, f"item {i}")
            if item.id in seen:
                raise InvalidArgument(f"duplicate id {quoted(item.id)} in one batch (item {i})")
            seen.add(item.id)
            c.check_attributes(item, i)
            body = pb.Item(numbers=item.numbers, keywords=item.keywords, tags=item.tags, payload=item.payload)
            raw = body.SerializeToString(deterministic=True)
            if len(raw) > MAX_PAYLOAD_BYTES:
                raise InvalidArgument(
                    f"item {i} ({quoted(item.id)}): attributes and payload take {len(raw)} bytes, "
                    f"more than the limit of {MAX_PAYLOAD_BYTES}"
                )
            bodies.append(raw)
        spaces, vectors = c.spaces, self._upsert_vectors(c, items)
        ids = [item.id for item in items]
        with handle.write_mutex:
            if handle.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            if c.spaces is not spaces:  # a space was added or dropped meanwhile: check against the new set
                vectors = self._upsert_vectors(c, items)
            first = c.next_slot
            required = [vectors[n][1] for n in c.required]
            packed = np.hstack(required) if required else np.zeros((len(ids), 0), dtype=np.float32)
            rows = [(item_id, first + i, packed[i].tobytes(), bodies[i]) for i, item_id in enumerate(ids)]
            optional = [
                (ids[p], space, first + p, row.tobytes())
                for space, (positions, arr) in vectors.items()
                if c.spaces[space].spec.optional
                for p, row in zip(positions.tolist(), arr, strict=True)
            ]
            self.storage.upsert(c.name, rows, first + len(ids), optional)
            with handle.rw.write():
                c.apply_upsert(ids, vectors, bodies, first)
            self._maybe_snapshot(handle)
            return len(ids), c.count

    def upsert_each(
        self, name: str, items: list[pb.Item], offset: int
    ) -> tuple[int, int, list[tuple[int, str, str]]]:
        """One UpsertStream message: each item checked on its own, the valid ones written in one
        transaction, the others returned as (stream position, id, why). Of one id's valid items the
        last wins, as it would had they come in separate messages."""
        c = self._handle(name).c
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"message of {len(items)} items exceeds the limit of {MAX_BATCH}")
        errors = []
        ok = []
        for i, item in enumerate(items):
            try:
                self._check_item(c, item, offset + i, vectors=False)
                ok.append(i)
            except InvalidArgument as exc:
                errors.append((offset + i, item.id, str(exc)))
        if not ok:
            return 0, c.count, errors
        try:  # vectors are checked once, batched, by the write itself
            upserted, count = self.upsert(name, _last_of_each_id(items, ok))
            return upserted, count, errors
        except InvalidArgument:
            pass
        for i in ok[:]:  # some vector is bad: find which, item by item, and write the rest
            try:
                self._check_item(c, items[i], offset + i)
            except InvalidArgument as exc:
                errors.append((offset + i, items[i].id, str(exc)))
                ok.remove(i)
        errors.sort()
        if not ok:
            return 0, c.count, errors
        upserted, count = self.upsert(name, _last_of_each_id(items, ok))
        return upserted, count, errors

    @staticmethod
    def _check_item(c: Collection, item: pb.Item, position: int, vectors: bool = True) -> None:
        where = f"item {position} ({quoted(item.id)})"
        _check_id(item.id, f"item {position}")
        c.check_attributes(item, position)
        c.check_vectors(item, position)
        body = pb.Item(numbers=item.numbers, keywords=item.keywords, tags=item.tags, payload=item.payload)
        size = body.ByteSize()
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidArgument(
                f"{where}: attributes and payload take {size} bytes, "
                f"more than the limit of {MAX_PAYLOAD_BYTES}"
            )
        for space_name, vector in item.vectors.items() if vectors else ():
            c.spaces[space_name].prepare_vectors([vector.values], f"{where}, space {quoted(space_name)}")

    @staticmethod
    def _upsert_vectors(c: Collection, items: list[pb.Item]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per space: (positions of the items carrying a vector in it, those vectors prepared)."""
        for i, item in enumerate(items):
            c.check_vectors(item, i)
        out = {}
        for space in c.spaces.values():
            positions = [i for i, item in enumerate(items) if space.name in item.vectors]
            if positions:
                out[space.name] = (
                    np.array(positions, dtype=np.int64),
                    space.prepare_vectors(
                        [items[i].vectors[space.name].values for i in positions],
                        f"upsert, vector {quoted(space.name)}",
                    ),
                )
        return out

    def upsert_vectors(self, name: str, space_name: str, items: list[pb.ItemVector]) -> tuple[int, list[str]]:
        """Set one space's vector of existing items; returns (written, ids that do not exist).

        An item's first vector in the space is added at its current slot; one replacing a vector it had
        moves the item to a fresh slot, as an upsert does (an HNSW index cannot replace in place).
        """
        handle = self._handle(name)
        c = handle.c
        if not items:
            raise InvalidArgument("upsert vectors needs at least one item")
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(items)} items exceeds the limit of {MAX_BATCH}")
        seen: set[str] = set()
        for i, item in enumerate(items):
            _check_id(item.id, f"item {i}")
            if item.id in seen:
                raise InvalidArgument(f"duplicate id {quoted(item.id)} in one batch (item {i})")
            seen.add(item.id)
        rows_in = [item.vector.values for item in items]
        space = c.space(space_name)
        arr = space.prepare_vectors(rows_in, f"upsert vectors, space {quoted(space.name)}")
        with handle.write_mutex:
            if handle.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            if c.spaces.get(space.name) is not space:  # dropped (or dropped and re-added) meanwhile
                space = c.space(space.name)
                arr = space.prepare_vectors(rows_in, f"upsert vectors, space {quoted(space.name)}")
            missing: list[str] = []
            fresh: list[int] = []
            moved: list[int] = []
            for i, item in enumerate(items):
                slot = c.slot_of.get(item.id)
                if slot is None:
                    missing.append(item.id)
                else:
                    (moved if space.has.data[slot] else fresh).append(i)
            if not fresh and not moved:
                return 0, missing
            seq = first = c.next_slot
            if fresh:
                first += 1  # the burned slot: the sequence number of the vectors added in place
            required = c.required
            rows = []
            for j, i in enumerate(moved):
                old = c.slot_of[items[i].id]
                packed = b"".join(c.spaces[n].vectors.data[old].tobytes() for n in required)
                body = c.bodies[old]
                assert body is not None
                rows.append((items[i].id, first + j, packed, body))
            vectors = [(items[i].id, space.name, seq, arr[i].tobytes()) for i in fresh + moved]
            self.storage.upsert(c.name, rows, first + len(moved), vectors)
            with handle.rw.write():
                if fresh:
                    slots = np.array([c.slot_of[items[i].id] for i in fresh], dtype=np.int64)
                    c.apply_set_vectors(space, slots, arr[fresh], first)
                if moved:
                    c.apply_upsert(
                        [items[i].id for i in moved],
                        {space.name: (np.arange(len(moved), dtype=np.int64), arr[moved])},
                        [r[3] for r in rows],
                        first,
                    )
            self._maybe_snapshot(handle)
            return len(fresh) + len(moved), missing

    def delete(self, name: str, ids: list[str]) -> tuple[int, int]:
        handle = self._handle(name)
        if not ids:
            raise InvalidArgument("delete needs at least one id")
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(ids)} ids exceeds the limit of {MAX_BATCH}")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("duplicate ids in one delete batch")
        for i, item_id in enumerate(ids):
            _check_id(item_id, f"id {i}")
        with handle.write_mutex:
            if handle.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            self.storage.delete(name, ids)
            with handle.rw.write():
                deleted = handle.c.apply_delete(ids)
            self._maybe_snapshot(handle)
            return deleted, handle.c.count

    def _maybe_snapshot(self, handle: _Handle) -> None:
        """Snapshot once the writes since the last one reach ``snapshot_every`` or half the collection.

        Each snapshot writes the whole index, so spacing them in proportion to its size keeps their cost
        constant per write during a bulk load, while a restart re-adds at most that many items.
        """
        c = handle.c
        if self.snapshot_every and c.writes_since_snapshot >= max(self.snapshot_every, c.count // 2):
            self._snapshot_locked(handle)

    def snapshot(self, name: str) -> list[pb.CollectionStats]:
        handles = [self._handle(name)] if name else list(self._handles.values())
        out = []
        for handle in handles:
            with handle.write_mutex:
                if handle.dropped:
                    continue
                self._snapshot_locked(handle)
            out.append(self._stats(handle))
        return out

    def _snapshot_locked(self, handle: _Handle) -> None:
        c = handle.c
        for space in c.spaces.values():
            if space.needs_compaction():
                with handle.rw.write():
                    space.compact()
        with handle.rw.read():
            indexes = {s.name: s.index for s in c.spaces.values() if s.index is not None}
            if indexes:
                trained_on = {s.name: s.trained_on for s in c.spaces.values()}
                self.storage.write_snapshots(c.name, indexes, c.next_slot, trained_on)
                for space_name in indexes:
                    c.spaces[space_name].snapshot_slot = c.next_slot
            c.writes_since_snapshot = 0

    # ---- reads ----

    def get(self, name: str, ids: list[str], include_vectors: bool) -> tuple[list[pb.Item], list[str]]:
        handle = self._handle(name)
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(ids)} ids exceeds the limit of {MAX_BATCH}")
        c = handle.c
        found, missing = [], []
        with handle.rw.read():
            for item_id in ids:
                slot = c.slot_of.get(item_id)
                body = c.bodies[slot] if slot is not None else None
                if slot is None or body is None:
                    missing.append(item_id)
                    continue
                item = pb.Item.FromString(body)
                item.id = item_id
                if include_vectors:
                    for space in c.spaces.values():
                        if space.has.data[slot]:
                            item.vectors[space.name].values.extend(space.vectors.data[slot].tolist())
                found.append(item)
        return found, missing

    def prepare_search(
        self,
        name: str,
        space: str,
        queries: Sequence[Sequence[float]],
        k: int,
        flt: pb.Filter | None,
        params: pb.SearchParams | None = None,
    ) -> tuple[str, np.ndarray]:
        """Validate one search request completely, so a coalesced batch cannot fail for its neighbours.

        Returns the space's name (resolved when the request left it empty) and the prepared queries.
        """
        handle = self._handle(name)
        target = handle.c.space(space)
        if not queries:
            raise InvalidArgument("search needs at least one query vector")
        if len(queries) > MAX_QUERIES:
            raise InvalidArgument(f"{len(queries)} queries exceed the limit of {MAX_QUERIES}")
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        if params is not None:
            check_search_params(params)
        if flt is not None:
            filters.validate(flt, handle.c.number_fields, handle.c.keyword_fields)
        return target.name, target.prepare_vectors(queries, "query")

    def coalesces(self, name: str, space: str) -> bool:
        """Whether merging concurrent single queries pays off for this collection's index.

        Measured (docs/BENCHMARKS.md): merged HNSW queries gave 1.2-1.5x the QPS of separate calls, but
        a Flat scan costs FAISS the same per query batched or not on this CPU build, and one merged call
        runs on one executor thread where separate calls use them all (0.8x). So Flat is not merged.
        """
        return self._handle(name).c.space(space).kind != pb.INDEX_KIND_FLAT

    def search(
        self,
        name: str,
        space: str,
        queries: np.ndarray,
        k: int,
        flt: pb.Filter | None,
        params: pb.SearchParams,
    ) -> tuple[list[list[Found]], bool]:
        handle = self._handle(name)
        c = handle.c
        target = c.space(space)
        with handle.rw.read():
            mask = filters.evaluate(flt, c) if flt is not None else None
            hits, exact = target.search(queries, k, mask, params)
            out = []
            for row in hits:
                found = []
                for h in row:
                    item_id, body = c.slot_ids[h.slot], c.bodies[h.slot]
                    if item_id is None or body is None:  # an index answer for a dead slot: never expected
                        raise FailedPrecondition(f"index of {quoted(name)} returned a deleted item")
                    found.append(Found(item_id, h.score, body))
                out.append(found)
        return out, exact


def _last_of_each_id(items: list[pb.Item], positions: list[int]) -> list[pb.Item]:
    """The items at ``positions``, keeping only the last of each id (in stream order)."""
    last: dict[str, int] = {}
    for i in positions:
        last.pop(items[i].id, None)
        last[items[i].id] = i
    return [items[i] for i in sorted(last.values())]


def _check_id(item_id: str, where: str) -> None:
    if not item_id:
        raise InvalidArgument(f"{where}: id must not be empty")
    if len(item_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"{where}: id is longer than {MAX_ID_CHARS} characters")
