"""One collection: named vector spaces over slot-numbered items, their attribute columns and records.

An item is one product with one vector in every non-optional space the collection declares and any of
its optional ones (spaces added to a live collection are optional: items gain vectors in them later).
Each space (``space.py``) holds its own vectors and FAISS index; the slots, liveness, ids, attributes
and records are the collection's and are shared by every space, so a filter selects the same items
whichever space is searched, among those with a vector in it.

Every write gives an item a fresh *slot* (an int64 FAISS id that is never reused, the same in every
space); replacing or deleting an item only marks its old slot dead. That keeps the durable log simple
(a slot above a snapshot's watermark was written after it) and suits HNSW, which cannot remove vectors
at all. The one exception to "a write takes a fresh slot": giving an item its first vector in an
optional space adds it at the item's current slot (so filling a new space does not re-add every item to
every other space); the write burns a slot number as its sequence, which tells a restart that the
vector came after a snapshot.

This module does no locking and no I/O; ``writes.py`` serialises writers and persists before applying.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from index_service import codec
from index_service.errors import InvalidArgument
from index_service.model import CollectionSpec, Item, LexicalSpec, VectorSpec
from index_service.space import Column, Space
from vitrine.errors import quoted

BRUTE_FORCE_MAX = 20_000
"""Default: filtered searches matching at most this many items scan those items exactly (cheaper, exact)."""


class Collection:
    """Slots, ids, records and attribute columns of one collection's items, and its spaces over them."""

    def __init__(self, spec: CollectionSpec, brute_force_max: int = BRUTE_FORCE_MAX) -> None:
        self.spec = spec
        self.brute_force_max = brute_force_max
        self.name = spec.name
        self.number_fields = frozenset(spec.schema.number_fields)
        self.non_negative = frozenset(spec.schema.non_negative_fields)
        self.keyword_fields = frozenset(spec.schema.keyword_fields)
        self.next_slot = 0
        self.alive = Column(np.bool_, False)
        self.slot_ids: list[str | None] = []
        self.records: list[bytes | None] = []
        """Each live slot's item record (``codec.encode_record``)."""
        self.slot_of: dict[str, int] = {}
        self.numbers = {f: Column(np.float64, np.nan) for f in self.number_fields}
        self.keywords = {f: Column(np.int32, -1) for f in self.keyword_fields}
        self.vocab: dict[str, dict[str, int]] = {f: {} for f in self.keyword_fields}
        self.tags: dict[str, Column] = {}
        self.tag_counts: dict[str, int] = {}
        self.writes_since_snapshot = 0
        self.spaces: dict[str, Space] = {v.name: Space(v, self) for v in spec.vectors}
        """In declared order. Replaced whole (never mutated) when a space is added or dropped, so a
        reader iterating it without the lock sees one version."""
        self.lexical: dict[str, LexicalSpec] = {lex.name: lex for lex in spec.lexical}
        """Lexical spaces: their text lives in storage's FTS5 tables (``lexical.py``), keyed by slot."""

    # ---- attribute view for filters.evaluate ----

    @property
    def size(self) -> int:
        return self.next_slot

    def number_column(self, field: str) -> np.ndarray:
        return self.numbers[field].data[: self.next_slot]

    def keyword_column(self, field: str) -> np.ndarray:
        return self.keywords[field].data[: self.next_slot]

    def keyword_codes(self, field: str, values: list[str]) -> np.ndarray:
        vocab = self.vocab[field]
        return np.array([vocab[v] for v in values if v in vocab], dtype=np.int32)

    def tag_slots(self, tag: str) -> np.ndarray:
        grow = self.tags.get(tag)
        if grow is None:
            return np.zeros(0, dtype=np.int64)
        return grow.data[: self.tag_counts[tag]]

    # ---- state ----

    @property
    def count(self) -> int:
        return len(self.slot_of)

    @property
    def required(self) -> list[str]:
        """The non-optional spaces, in declared order: the order their vectors are concatenated in storage."""
        return [name for name, space in self.spaces.items() if not space.spec.optional]

    def new_space(self, spec: VectorSpec) -> Space:
        """A space for this collection, sized for its slots but not yet part of it (see ``install``)."""
        space = Space(spec, self)
        space.vectors.ensure(len(self.slot_ids))
        space.has.ensure(len(self.slot_ids))
        return space

    def install(self, space: Space) -> None:
        spaces = dict(self.spaces)
        spaces[space.name] = space
        self.spaces = spaces
        self.spec = replace(self.spec, vectors=(*self.spec.vectors, space.spec))

    def install_lexical(self, spec: LexicalSpec) -> None:
        self.lexical = {**self.lexical, spec.name: spec}
        self.spec = replace(self.spec, lexical=(*self.spec.lexical, spec))

    def lexical_space(self, name: str) -> LexicalSpec:
        space = self.lexical.get(name)
        if space is None:
            raise InvalidArgument(
                f"collection {quoted(self.name)} has no lexical space {quoted(name)}; "
                f"its lexical spaces: {list(self.lexical)}"
            )
        return space

    def remove_space(self, name: str) -> None:
        self.spaces = {n: s for n, s in self.spaces.items() if n != name}
        self.spec = replace(self.spec, vectors=tuple(v for v in self.spec.vectors if v.name != name))

    def space(self, name: str) -> Space:
        """The space a search names; an empty name is allowed only when there is exactly one."""
        if not name:
            if len(self.spaces) == 1:
                return next(iter(self.spaces.values()))
            raise InvalidArgument(
                f"collection {quoted(self.name)} has {len(self.spaces)} vector spaces; name one of "
                f"{list(self.spaces)} in SearchRequest.vector"
            )
        space = self.spaces.get(name)
        if space is None and name in self.lexical:
            raise InvalidArgument(
                f"space {quoted(name)} of {quoted(self.name)} is lexical: search it with query texts, "
                "not vectors"
            )
        if space is None:
            raise InvalidArgument(
                f"collection {quoted(self.name)} has no vector space {quoted(name)}; "
                f"its spaces: {list(self.spaces)}"
            )
        return space

    def check_vectors(self, item: Item, position: int) -> None:
        """Every non-optional space, optional ones at will, no other: an item is written whole or not."""
        for name in item.vectors:
            if name not in self.spaces:
                raise InvalidArgument(
                    f"item {position} ({quoted(item.id)}): unknown vector space {quoted(name)}; "
                    f"collection {quoted(self.name)} declares {list(self.spaces)}"
                )
        for name in self.required:
            if name not in item.vectors:
                raise InvalidArgument(
                    f"item {position} ({quoted(item.id)}): no vector for space {quoted(name)}; "
                    f"every item needs one vector in each of {self.required}"
                )

    def check_attributes(self, item: Item, position: int) -> None:
        for f, v in item.numbers.items():
            if f not in self.number_fields:
                raise InvalidArgument(
                    f"item {position} ({quoted(item.id)}): unknown attribute {quoted(f)}; "
                    f"declared number fields: {sorted(self.number_fields)}"
                )
            if not math.isfinite(v):
                raise InvalidArgument(
                    f"item {position} ({quoted(item.id)}): number {quoted(f)} is not finite"
                )
            if v < 0 and f in self.non_negative:
                raise InvalidArgument(f"item {position} ({quoted(item.id)}): number {quoted(f)} is negative")
        for f in item.keywords:
            if f not in self.keyword_fields:
                raise InvalidArgument(
                    f"item {position} ({quoted(item.id)}): unknown attribute {quoted(f)}; "
                    f"declared keyword fields: {sorted(self.keyword_fields)}"
                )

    # ---- restart (before the collection serves; ``loading.py`` then restores each space's index) ----

    def reserve(self, next_slot: int) -> None:
        """Room for every slot given out before the restart."""
        self._ensure(next_slot)
        self.next_slot = next_slot

    def load_items(self, rows: list[tuple[str, int, bytes, bytes]]) -> None:
        """Stored items back into memory: (id, slot, non-optional vectors concatenated, record)."""
        required = [self.spaces[name] for name in self.required]
        slots = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        width = sum(space.dim for space in required)
        if width:
            packed = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(-1, width)
            offset = 0
            for space in required:
                space.vectors.data[slots] = packed[:, offset : offset + space.dim]
                offset += space.dim
        for space in required:
            space.has.data[slots] = True
            space.count += len(rows)
        self.alive.data[slots] = True
        for item_id, slot, _, record in rows:
            self.slot_ids[slot] = item_id
            self.records[slot] = record
            self.slot_of[item_id] = slot
            self._index_attributes(slot, record)

    def load_vector(self, item_id: str, space_name: str, vector: bytes) -> int | None:
        """A stored optional-space vector back into memory; its slot, or None when the item or the
        space is gone."""
        space, slot = self.spaces.get(space_name), self.slot_of.get(item_id)
        if space is None or slot is None:
            return None
        space.vectors.data[slot] = np.frombuffer(vector, dtype=np.float32)
        space.has.data[slot] = True
        space.count += 1
        return slot

    # ---- writes (called with the collection's write lock held, after the write is durable) ----

    def apply_upsert(
        self,
        ids: list[str],
        vectors: dict[str, tuple[np.ndarray, np.ndarray]],
        records: list[bytes],
        first_slot: int,
    ) -> None:
        """Give ``ids`` the slots from ``first_slot``. ``vectors`` maps a space to (positions in ``ids``,
        their vectors); an item given no vector in a space keeps the one its previous version had."""
        n = len(ids)
        slots = np.arange(first_slot, first_slot + n, dtype=np.int64)
        end = first_slot + n
        self._ensure(end)
        old = np.fromiter((self.slot_of.get(i, -1) for i in ids), dtype=np.int64, count=n)
        for name, space in self.spaces.items():
            has = np.zeros(n, dtype=np.bool_)
            given = vectors.get(name)
            if given is not None:
                positions, rows = given
                space.vectors.data[first_slot + positions] = rows
                has[positions] = True
            keep = np.flatnonzero(~has & (old >= 0))
            keep = keep[space.has.data[old[keep]]]
            if len(keep):
                space.vectors.data[first_slot + keep] = space.vectors.data[old[keep]]
                has[keep] = True
            space.has.data[first_slot:end] = has
            space.count += int(has.sum())
        for slot in old[old >= 0].tolist():
            self._kill(slot)
        self.alive.data[first_slot:end] = True
        for slot, item_id, record in zip(slots.tolist(), ids, records, strict=True):
            self.slot_ids[slot] = item_id
            self.records[slot] = record
            self.slot_of[item_id] = slot
            self._index_attributes(slot, record)
        self.next_slot = end
        self.writes_since_snapshot += n
        for space in self.spaces.values():
            space.version += 1
            space.add_to_index(first_slot, end)

    def apply_set_vectors(self, space: Space, slots: np.ndarray, rows: np.ndarray, next_slot: int) -> None:
        """First vectors in ``space`` for the live items at ``slots``, added where they are."""
        self._ensure(next_slot)
        self.next_slot = next_slot
        space.vectors.data[slots] = rows
        space.has.data[slots] = True
        space.count += len(slots)
        self.writes_since_snapshot += len(slots)
        space.version += 1
        if space.add_slots(slots):  # every slot below next_slot with a vector is in the index now, so a
            space.indexed_upto = max(space.indexed_upto, next_slot)  # later replacement counts as dead there

    def apply_delete(self, ids: list[str]) -> int:
        deleted = 0
        for item_id in ids:
            slot = self.slot_of.pop(item_id, None)
            if slot is not None:
                self._kill(slot)
                deleted += 1
        self.writes_since_snapshot += deleted
        for space in self.spaces.values():
            space.version += 1
        return deleted

    def _kill(self, slot: int) -> None:
        self.alive.data[slot] = False
        self.slot_ids[slot] = None
        self.records[slot] = None
        for space in self.spaces.values():
            if space.has.data[slot]:
                space.has.data[slot] = False
                space.count -= 1
                if slot < space.indexed_upto:
                    space.dead_in_index += 1

    def _ensure(self, n: int) -> None:
        self.alive.ensure(n)
        for space in self.spaces.values():
            space.vectors.ensure(n)
            space.has.ensure(n)
        for col in (*self.numbers.values(), *self.keywords.values()):
            col.ensure(n)
        grow = n - len(self.slot_ids)
        if grow > 0:
            self.slot_ids.extend([None] * grow)
            self.records.extend([None] * grow)

    def _index_attributes(self, slot: int, record: bytes) -> None:
        item = codec.decode_record(record, with_payload=False)
        for f, number in item.numbers.items():
            self.numbers[f].data[slot] = number
        for f, word in item.keywords.items():
            vocab = self.vocab[f]
            self.keywords[f].data[slot] = vocab.setdefault(word, len(vocab))
        for tag in set(item.tags):
            grow = self.tags.get(tag)
            if grow is None:
                grow = self.tags[tag] = Column(np.int64, 0)
                self.tag_counts[tag] = 0
            count = self.tag_counts[tag]
            grow.ensure(count + 1)
            grow.data[count] = slot
            self.tag_counts[tag] = count + 1
