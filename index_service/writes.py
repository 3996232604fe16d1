"""Writes: upserts, per-space vectors, deletes, and the snapshots that spare a restart its rebuild.

Every write is checked whole before anything is stored, then committed to storage, then applied to
memory under the collection's exclusive lock, and only then acknowledged (see ``registry.py``).
"""

from __future__ import annotations

import numpy as np

from index_service import codec
from index_service.collection import Collection
from index_service.config import MAX_BATCH, MAX_ID_CHARS, MAX_PAYLOAD_BYTES
from index_service.errors import InvalidArgument
from index_service.model import CollectionStats, Item, ItemVector, Refused
from index_service.registry import Handle, Registry
from index_service.space import Space
from index_service.storage import Storage
from vitrine.errors import quoted

Prepared = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per space: (positions of the items carrying a vector in it, those vectors prepared)."""


class Writes:
    def __init__(self, registry: Registry, storage: Storage, snapshot_every: int) -> None:
        self.registry = registry
        self.storage = storage
        self.snapshot_every = snapshot_every

    def upsert(self, name: str, items: list[Item]) -> tuple[int, int]:
        """Write ``items`` whole or not at all; returns (written, live items afterwards)."""
        handle = self.registry.handle(name)
        c = handle.c
        if not items:
            raise InvalidArgument("upsert needs at least one item")
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(items)} items exceeds the limit of {MAX_BATCH}")
        seen: set[str] = set()
        records = []
        for i, item in enumerate(items):
            _check_id(item.id, f"item {i}")
            if item.id in seen:
                raise InvalidArgument(f"duplicate id {quoted(item.id)} in one batch (item {i})")
            seen.add(item.id)
            c.check_attributes(item, i)
            records.append(_record(item, f"item {i} ({quoted(item.id)})"))
        spaces, vectors = c.spaces, _prepare_vectors(c, items)
        ids = [item.id for item in items]
        with handle.writing(name):
            if c.spaces is not spaces:  # a space was added or dropped meanwhile: check against the new set
                vectors = _prepare_vectors(c, items)
            first = c.next_slot
            required = [vectors[n][1] for n in c.required]
            packed = np.hstack(required) if required else np.zeros((len(ids), 0), dtype=np.float32)
            rows = [(item_id, first + i, packed[i].tobytes(), records[i]) for i, item_id in enumerate(ids)]
            optional = [
                (ids[p], space, first + p, row.tobytes())
                for space, (positions, arr) in vectors.items()
                if c.spaces[space].spec.optional
                for p, row in zip(positions.tolist(), arr, strict=True)
            ]
            self.storage.upsert(c.name, rows, first + len(ids), optional)
            with handle.rw.write():
                c.apply_upsert(ids, vectors, records, first)
            self._maybe_snapshot(handle)
            return len(ids), c.count

    def upsert_each(self, name: str, items: list[Item], offset: int) -> tuple[int, int, list[Refused]]:
        """One UpsertStream message: each item checked on its own, the valid ones written in one
        transaction, the others returned by stream position. Of one id's valid items the last wins,
        as it would had they come in separate messages."""
        c = self.registry.handle(name).c
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"message of {len(items)} items exceeds the limit of {MAX_BATCH}")
        refused = []
        ok = []
        for i, item in enumerate(items):
            try:
                _check_item(c, item, offset + i, vectors=False)
                ok.append(i)
            except InvalidArgument as exc:
                refused.append(Refused(offset + i, item.id, str(exc)))
        if not ok:
            return 0, c.count, refused
        try:  # vectors are checked once, batched, by the write itself
            upserted, count = self.upsert(name, _last_of_each_id(items, ok))
            return upserted, count, refused
        except InvalidArgument:
            pass
        for i in ok[:]:  # some vector is bad: find which, item by item, and write the rest
            try:
                _check_item(c, items[i], offset + i)
            except InvalidArgument as exc:
                refused.append(Refused(offset + i, items[i].id, str(exc)))
                ok.remove(i)
        refused.sort(key=lambda r: (r.position, r.id, r.message))
        if not ok:
            return 0, c.count, refused
        upserted, count = self.upsert(name, _last_of_each_id(items, ok))
        return upserted, count, refused

    def upsert_vectors(self, name: str, space_name: str, items: list[ItemVector]) -> tuple[int, list[str]]:
        """Set one space's vector of existing items; returns (written, ids that do not exist).

        An item's first vector in the space is added at its current slot; one replacing a vector it had
        moves the item to a fresh slot, as an upsert does (an HNSW index cannot replace in place).
        """
        handle = self.registry.handle(name)
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
        rows_in = [item.vector for item in items]
        space = c.space(space_name)
        arr = space.prepare_vectors(rows_in, f"upsert vectors, space {quoted(space.name)}")
        with handle.writing(name):
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
            fresh_ids, moved_ids = [items[i].id for i in fresh], [items[i].id for i in moved]
            self._write_vectors(handle, space, fresh_ids, moved_ids, arr[fresh], arr[moved])
            return len(fresh) + len(moved), missing

    def _write_vectors(
        self,
        handle: Handle,
        space: Space,
        fresh: list[str],
        moved: list[str],
        fresh_rows: np.ndarray,
        moved_rows: np.ndarray,
    ) -> None:
        """Store then apply one space's vectors: ``fresh`` items gain their first vector in it where they
        are, ``moved`` ones replace theirs at a fresh slot. Called with the writer's turn held."""
        c = handle.c
        seq = first = c.next_slot
        if fresh:
            first += 1  # the burned slot: the sequence number of the vectors added in place
        required = [c.spaces[n] for n in c.required]
        rows = []
        for j, item_id in enumerate(moved):
            old = c.slot_of[item_id]
            packed = b"".join(s.vectors.data[old].tobytes() for s in required)
            record = c.records[old]
            assert record is not None
            rows.append((item_id, first + j, packed, record))
        vectors = [
            (item_id, space.name, seq, row.tobytes())
            for item_id, row in zip(fresh + moved, [*fresh_rows, *moved_rows], strict=True)
        ]
        self.storage.upsert(c.name, rows, first + len(moved), vectors)
        with handle.rw.write():
            if fresh:
                slots = np.array([c.slot_of[item_id] for item_id in fresh], dtype=np.int64)
                c.apply_set_vectors(space, slots, fresh_rows, first)
            if moved:
                positions = np.arange(len(moved), dtype=np.int64)
                c.apply_upsert(moved, {space.name: (positions, moved_rows)}, [r[3] for r in rows], first)
        self._maybe_snapshot(handle)

    def delete(self, name: str, ids: list[str]) -> tuple[int, int]:
        """Returns (ids that existed, live items afterwards)."""
        handle = self.registry.handle(name)
        if not ids:
            raise InvalidArgument("delete needs at least one id")
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(ids)} ids exceeds the limit of {MAX_BATCH}")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("duplicate ids in one delete batch")
        for i, item_id in enumerate(ids):
            _check_id(item_id, f"id {i}")
        with handle.writing(name) as c:
            self.storage.delete(c.name, ids)  # the collection's name: ``name`` may be an alias
            with handle.rw.write():
                deleted = c.apply_delete(ids)
            self._maybe_snapshot(handle)
            return deleted, c.count

    # ---- snapshots ----

    def snapshot(self, name: str) -> list[CollectionStats]:
        """Snapshot one collection, or every one when ``name`` is empty."""
        handles = [self.registry.handle(name)] if name else self.registry.handles()
        out = []
        for handle in handles:
            with handle.write_mutex:
                if handle.dropped:
                    continue
                self._snapshot_locked(handle)
            out.append(handle.stats())
        return out

    def _maybe_snapshot(self, handle: Handle) -> None:
        """Snapshot once the writes since the last one reach ``snapshot_every`` or half the collection.

        Each snapshot writes the whole index, so spacing them in proportion to its size keeps their cost
        constant per write during a bulk load, while a restart re-adds at most that many items.
        """
        c = handle.c
        if self.snapshot_every and c.writes_since_snapshot >= max(self.snapshot_every, c.count // 2):
            self._snapshot_locked(handle)

    def _snapshot_locked(self, handle: Handle) -> None:
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


def _check_id(item_id: str, where: str) -> None:
    if not item_id:
        raise InvalidArgument(f"{where}: id must not be empty")
    if len(item_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"{where}: id is longer than {MAX_ID_CHARS} characters")


def _record(item: Item, where: str) -> bytes:
    """The item's record, encoded; refused when larger than an item may store."""
    record = codec.encode_record(item)
    if len(record) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            f"{where}: attributes and payload take {len(record)} bytes, "
            f"more than the limit of {MAX_PAYLOAD_BYTES}"
        )
    return record


def _check_item(c: Collection, item: Item, position: int, vectors: bool = True) -> None:
    where = f"item {position} ({quoted(item.id)})"
    _check_id(item.id, f"item {position}")
    c.check_attributes(item, position)
    c.check_vectors(item, position)
    _record(item, where)
    for space_name, vector in item.vectors.items() if vectors else ():
        c.spaces[space_name].prepare_vectors([vector], f"{where}, space {quoted(space_name)}")


def _prepare_vectors(c: Collection, items: list[Item]) -> Prepared:
    for i, item in enumerate(items):
        c.check_vectors(item, i)
    out = {}
    for space in c.spaces.values():
        positions = [i for i, item in enumerate(items) if space.name in item.vectors]
        if positions:
            out[space.name] = (
                np.array(positions, dtype=np.int64),
                space.prepare_vectors(
                    [items[i].vectors[space.name] for i in positions], f"upsert, vector {quoted(space.name)}"
                ),
            )
    return out


def _last_of_each_id(items: list[Item], positions: list[int]) -> list[Item]:
    """The items at ``positions``, keeping only the last of each id (in stream order)."""
    last: dict[str, int] = {}
    for i in positions:
        last.pop(items[i].id, None)
        last[items[i].id] = i
    return [items[i] for i in sorted(last.values())]
