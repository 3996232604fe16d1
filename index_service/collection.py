"""One collection: named vector spaces over slot-numbered items, attribute columns and stored item bodies.

An item is one product with one vector in every non-optional space the collection declares and any of
its optional ones (spaces added to a live collection are optional: items gain vectors in them later).
Each ``Space`` holds its own vectors, which slots have one (``has``), and its own FAISS index (Flat, IVF
or HNSW, with its own training, tombstones, snapshot watermark and GPU copy); the slots, liveness, ids,
attributes and bodies are the collection's and are shared by every space, so a filter selects the same
items whichever space is searched, among those with a vector in it.

Every write gives an item a fresh *slot* (an int64 FAISS id that is never reused, the same in every
space); replacing or deleting an item only marks its old slot dead. That keeps the durable log simple
(a slot above a snapshot's watermark was written after it) and suits HNSW, which cannot remove vectors
at all. Dead slots are kept out of results by an ID selector and removed from Flat/IVF indexes, or HNSW
rebuilt, when a snapshot finds enough of them (each space counts its own). The one exception to "a
write takes a fresh slot": giving an item its first vector in an optional space adds it at the item's
current slot (so filling a new space does not re-add every item to every other space); the write burns
a slot number as its sequence, which tells a restart that the vector came after a snapshot.

This module does no locking and no I/O; ``engine.py`` serialises writers and persists before applying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from index_service.config import (
    MAX_DIM,
    MAX_EF_CONSTRUCTION,
    MAX_EF_SEARCH,
    MAX_HNSW_M,
    MAX_NAME_CHARS,
    MAX_NLIST,
    MAX_NPROBE,
    MAX_PQ_NBITS,
    MAX_SPACE_NAME_CHARS,
    MAX_SPACES,
    MAX_TRAIN_MIN,
    MIN_HNSW_M,
)
from index_service.errors import InvalidArgument
from index_service.gpu import GpuMirror
from vitrine.errors import quoted
from vitrine.index.v2 import index_pb2 as pb

NAME_HELP = "letters, digits, '-', '_' or '.'"
BRUTE_FORCE_MAX = 20_000
"""Default: filtered searches matching at most this many items scan those items exactly (cheaper, exact)."""

TOMBSTONE_REBUILD_FRACTION = 0.25
"""A snapshot compacts the index once this share of the vectors it holds are dead."""

RETRAIN_GROWTH = 8
"""An IVF index is retrained once the collection holds this many times the vectors it was trained on."""

TRAIN_SAMPLE_MAX = 200_000
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_NPROBE = 16
DEFAULT_PQ_NBITS = 8


class _Grow:
    """A numpy array that grows by amortised doubling, indexed by slot."""

    def __init__(self, dtype: type | np.dtype, fill: float | int | bool, width: int = 0) -> None:
        self.fill = fill
        self.width = width
        shape = (0, width) if width else (0,)
        self.data = np.full(shape, fill, dtype=dtype)

    def ensure(self, n: int) -> None:
        cap = self.data.shape[0]
        if n <= cap:
            return
        new_cap = max(n, int(cap * 1.5) + 16)
        shape = (new_cap, self.width) if self.width else (new_cap,)
        grown = np.full(shape, self.fill, dtype=self.data.dtype)
        grown[:cap] = self.data
        self.data = grown


@dataclass(frozen=True)
class Hit:
    slot: int
    score: float


def _valid_name(name: str, limit: int) -> bool:
    return bool(name) and len(name) <= limit and all(c.isalnum() or c in "-_." for c in name)


def check_collection_name(name: str, what: str = "collection") -> None:
    if not _valid_name(name, MAX_NAME_CHARS):
        raise InvalidArgument(f"{what} name must be 1-{MAX_NAME_CHARS} characters of {NAME_HELP}")


def check_space_name(name: str) -> None:
    if not _valid_name(name, MAX_SPACE_NAME_CHARS):
        raise InvalidArgument(
            f"vector space name {quoted(name)} must be 1-{MAX_SPACE_NAME_CHARS} characters of {NAME_HELP}"
        )


def normalize_vector_spec(vec: pb.VectorSpec) -> pb.VectorSpec:
    """Validate one space added to a live collection and fill its defaults; it is always optional."""
    out = pb.VectorSpec()
    out.CopyFrom(vec)
    check_space_name(out.name)
    _normalize_vector_spec(out)
    out.optional = True
    return out


def normalize_spec(spec: pb.CollectionSpec) -> pb.CollectionSpec:
    """Validate a new collection's spec and fill its defaults, so what is stored is explicit."""
    out = pb.CollectionSpec()
    out.CopyFrom(spec)
    check_collection_name(spec.name)
    if not spec.vectors:
        raise InvalidArgument("a collection needs at least one vector space (CollectionSpec.vectors)")
    if len(spec.vectors) > MAX_SPACES:
        raise InvalidArgument(f"a collection has at most {MAX_SPACES} vector spaces, got {len(spec.vectors)}")
    names = [v.name for v in spec.vectors]
    for name in names:
        check_space_name(name)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidArgument(f"vector space {quoted(dup)} is declared twice")
    for vec in out.vectors:
        _normalize_vector_spec(vec)
    numbers, keywords = list(spec.schema.number_fields), list(spec.schema.keyword_fields)
    every = numbers + keywords
    if len(set(every)) != len(every) or any(not f for f in every):
        raise InvalidArgument("schema fields must be non-empty and unique across number and keyword fields")
    if not set(spec.schema.non_negative_fields) <= set(numbers):
        raise InvalidArgument("schema non_negative_fields must each be one of its number_fields")
    return out


def _normalize_vector_spec(vec: pb.VectorSpec) -> None:
    where = f"vector space {quoted(vec.name)}"
    if not 1 <= vec.dim <= MAX_DIM:
        raise InvalidArgument(f"{where}: dim must be between 1 and {MAX_DIM}, got {vec.dim}")
    if vec.metric == pb.METRIC_UNSPECIFIED:
        raise InvalidArgument(f"{where}: metric must be METRIC_INNER_PRODUCT or METRIC_L2")
    if vec.metric not in (pb.METRIC_INNER_PRODUCT, pb.METRIC_L2):
        raise InvalidArgument(f"{where}: unknown metric {vec.metric}")
    kind = vec.index.kind or pb.INDEX_KIND_FLAT
    if kind not in (pb.INDEX_KIND_FLAT, pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_IVF_PQ, pb.INDEX_KIND_HNSW):
        raise InvalidArgument(f"{where}: unknown index kind {kind}")
    idx = vec.index
    idx.kind = kind
    # Every bound is checked whatever the kind, so a stored spec never holds a value FAISS cannot take.
    _bound(where, "nlist", idx.nlist, 0, MAX_NLIST)
    _bound(where, "pq_nbits", idx.pq_nbits, 0, MAX_PQ_NBITS)
    _bound(where, "pq_m", idx.pq_m, 0, vec.dim)
    if idx.hnsw_m:
        _bound(where, "hnsw_m", idx.hnsw_m, MIN_HNSW_M, MAX_HNSW_M)
    _bound(where, "ef_construction", idx.ef_construction, 0, MAX_EF_CONSTRUCTION)
    _bound(where, "train_min", idx.train_min, 0, MAX_TRAIN_MIN)
    if kind == pb.INDEX_KIND_IVF_PQ:
        idx.pq_m = idx.pq_m or max(1, vec.dim // 8)
        idx.pq_nbits = idx.pq_nbits or DEFAULT_PQ_NBITS
        if vec.dim % idx.pq_m:
            raise InvalidArgument(f"{where}: pq_m={idx.pq_m} must divide dim={vec.dim}")
    if kind in (pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_IVF_PQ):
        floor = 39 * idx.nlist if idx.nlist else 1000
        if kind == pb.INDEX_KIND_IVF_PQ:
            floor = max(floor, 39 * (1 << idx.pq_nbits))
        idx.train_min = max(idx.train_min, floor)
    if kind == pb.INDEX_KIND_HNSW:
        idx.hnsw_m = idx.hnsw_m or DEFAULT_HNSW_M
        idx.ef_construction = idx.ef_construction or DEFAULT_EF_CONSTRUCTION


def _bound(where: str, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{where}: {field} must be between {low} and {high}, got {value}")


def check_search_params(params: pb.SearchParams) -> None:
    _bound("search params", "nprobe", params.nprobe, 0, MAX_NPROBE)
    _bound("search params", "ef_search", params.ef_search, 0, MAX_EF_SEARCH)


class Collection:
    def __init__(self, spec: pb.CollectionSpec, brute_force_max: int = BRUTE_FORCE_MAX) -> None:
        self.spec = spec
        self.brute_force_max = brute_force_max
        self.name = spec.name
        self.number_fields = frozenset(spec.schema.number_fields)
        self.non_negative = frozenset(spec.schema.non_negative_fields)
        self.keyword_fields = frozenset(spec.schema.keyword_fields)
        self.next_slot = 0
        self.alive = _Grow(np.bool_, False)
        self.slot_ids: list[str | None] = []
        self.bodies: list[bytes | None] = []
        self.slot_of: dict[str, int] = {}
        self.numbers = {f: _Grow(np.float64, np.nan) for f in self.number_fields}
        self.keywords = {f: _Grow(np.int32, -1) for f in self.keyword_fields}
        self.vocab: dict[str, dict[str, int]] = {f: {} for f in self.keyword_fields}
        self.tags: dict[str, _Grow] = {}
        self.tag_counts: dict[str, int] = {}
        self.writes_since_snapshot = 0
        self.spaces: dict[str, Space] = {v.name: Space(v, self) for v in spec.vectors}
        """In declared order. Replaced whole (never mutated) when a space is added or dropped, so a
        reader iterating it without the lock sees one version."""

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

    def new_space(self, spec: pb.VectorSpec) -> Space:
        """A space for this collection, sized for its slots but not yet part of it (see ``install``)."""
        space = Space(spec, self)
        space.vectors.ensure(len(self.slot_ids))
        space.has.ensure(len(self.slot_ids))
        return space

    def install(self, space: Space) -> None:
        spaces = dict(self.spaces)
        spaces[space.name] = space
        self.spaces = spaces
        self.spec.vectors.append(space.spec)

    def remove_space(self, name: str) -> None:
        self.spaces = {n: s for n, s in self.spaces.items() if n != name}
        kept = [v for v in self.spec.vectors if v.name != name]
        del self.spec.vectors[:]
        self.spec.vectors.extend(kept)

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
        if space is None:
            raise InvalidArgument(
                f"collection {quoted(self.name)} has no vector space {quoted(name)}; "
                f"its spaces: {list(self.spaces)}"
            )
        return space

    def check_vectors(self, item: pb.Item, position: int) -> None:
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

    def check_attributes(self, item: pb.Item, position: int) -> None:
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

    def alive_slots(self, below: int | None = None) -> np.ndarray:
        end = self.next_slot if below is None else below
        return np.flatnonzero(self.alive.data[:end]).astype(np.int64)

    # ---- writes (called with the collection's write lock held, after the write is durable) ----

    def apply_upsert(
        self,
        ids: list[str],
        vectors: dict[str, tuple[np.ndarray, np.ndarray]],
        bodies: list[bytes],
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
        for slot, item_id, body in zip(slots.tolist(), ids, bodies, strict=True):
            self.slot_ids[slot] = item_id
            self.bodies[slot] = body
            self.slot_of[item_id] = slot
            self._index_attributes(slot, body)
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
        space.add_slots(slots)

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
        self.bodies[slot] = None
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
            self.bodies.extend([None] * grow)

    def _index_attributes(self, slot: int, body: bytes) -> None:
        item = pb.Item.FromString(body)
        for f, number in item.numbers.items():
            self.numbers[f].data[slot] = number
        for f, word in item.keywords.items():
            vocab = self.vocab[f]
            self.keywords[f].data[slot] = vocab.setdefault(word, len(vocab))
        for tag in set(item.tags):
            grow = self.tags.get(tag)
            if grow is None:
                grow = self.tags[tag] = _Grow(np.int64, 0)
                self.tag_counts[tag] = 0
            count = self.tag_counts[tag]
            grow.ensure(count + 1)
            grow.data[count] = slot
            self.tag_counts[tag] = count + 1


class Space:
    """One named vector space of a collection: a vector per slot and its own FAISS index over them."""

    def __init__(self, spec: pb.VectorSpec, owner: Collection) -> None:
        self.spec = spec
        self.owner = owner
        self.name = spec.name
        self.gpu: GpuMirror | None = None
        self.version = 0  # bumped by every change to the index, so a GPU copy knows it is stale
        self.dim = spec.dim
        self.kind = spec.index.kind
        self.metric = (
            faiss.METRIC_INNER_PRODUCT if spec.metric == pb.METRIC_INNER_PRODUCT else faiss.METRIC_L2
        )
        self.vectors = _Grow(np.float32, 0.0, self.dim)
        self.has = _Grow(np.bool_, False)
        """Slots holding a live item with a vector in this space (every live slot, unless optional)."""
        self.count = 0
        self.index: faiss.Index | None = None
        self.indexed_upto = 0  # slots below this are in `index` (dead ones too, until compaction)
        self.dead_in_index = 0
        self.trained_on = 0
        self.nlist = 0
        self.snapshot_slot = 0
        if self.kind in (pb.INDEX_KIND_FLAT, pb.INDEX_KIND_HNSW):
            self.index = self._new_index(0)

    @property
    def trained(self) -> bool:
        return self.index is not None

    def check_buildable(self) -> None:
        """Construct this space's FAISS index once, untrained, so a spec FAISS refuses fails its create
        rather than a later write or restart (Flat and HNSW already built theirs in ``__init__``)."""
        if self.index is None:
            self._new_index(self.spec.index.train_min)
            self.nlist = 0

    def live_slots(self, below: int | None = None) -> np.ndarray:
        end = self.owner.next_slot if below is None else below
        return np.flatnonzero(self.has.data[:end]).astype(np.int64)

    def prepare_vectors(self, rows: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
        """Check shape and finiteness (and normalise for inner product) before anything is written."""
        if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == self.dim:
            arr = rows.astype(np.float32, copy=False)
        else:
            dims = sorted({len(r) for r in rows})
            if dims != [self.dim]:
                raise InvalidArgument(
                    f"{what}: wrong dimension, space {quoted(self.name)} of collection "
                    f"{quoted(self.owner.name)} "
                    f"has dim={self.dim}, got {dims}"
                )
            flat = np.concatenate([np.fromiter(r, dtype=np.float32, count=self.dim) for r in rows])
            arr = flat.reshape(len(rows), self.dim)
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise InvalidArgument(f"{what}: vector {bad} contains NaN or infinity")
        if self.metric == faiss.METRIC_INNER_PRODUCT:
            norms = np.linalg.norm(arr, axis=1, keepdims=True)
            if (norms == 0).any():
                bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
                raise InvalidArgument(f"{what}: vector {bad} is all zeros and cannot be normalised")
            arr = arr / norms
        return np.ascontiguousarray(arr, dtype=np.float32)

    # ---- the FAISS index ----

    def _new_index(self, n_train: int) -> faiss.Index:
        idx = self.spec.index
        if self.kind == pb.INDEX_KIND_FLAT:
            return faiss.IndexIDMap(faiss.IndexFlat(self.dim, self.metric))
        if self.kind == pb.INDEX_KIND_HNSW:
            hnsw = faiss.IndexHNSWFlat(self.dim, idx.hnsw_m, self.metric)
            hnsw.hnsw.efConstruction = idx.ef_construction
            return faiss.IndexIDMap(hnsw)
        nlist = idx.nlist or max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))
        self.nlist = nlist
        quantizer = faiss.IndexFlat(self.dim, self.metric)
        if self.kind == pb.INDEX_KIND_IVF_PQ:
            ivf: faiss.Index = faiss.IndexIVFPQ(
                quantizer, self.dim, nlist, idx.pq_m, idx.pq_nbits, self.metric
            )
        else:
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self.metric)
        return ivf

    def add_to_index(self, start: int, end: int) -> None:
        slots = np.arange(start, end, dtype=np.int64)
        if self.add_slots(slots[self.has.data[start:end]]):
            self.indexed_upto = end

    def add_slots(self, slots: np.ndarray) -> bool:
        """Add these slots' vectors; False when the index was (re)built from scratch instead, or is not
        trained yet."""
        if self.index is None:
            if self.count >= self.spec.index.train_min:
                self.rebuild_index()
            return False
        if self.kind in (pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_IVF_PQ) and (
            self.count >= RETRAIN_GROWTH * self.trained_on
        ):
            self.rebuild_index()
            return False
        self.index.add_with_ids(self.vectors.data[slots], slots)
        return True

    def rebuild_index(self) -> None:
        """(Re)train where needed and re-add the live vectors: compaction and the retraining policy."""
        slots = self.live_slots()
        n = len(slots)
        index = self._new_index(n)
        if not index.is_trained:
            rng = np.random.default_rng(n)
            sample = slots if n <= TRAIN_SAMPLE_MAX else np.sort(rng.choice(slots, TRAIN_SAMPLE_MAX, False))
            index.train(self.vectors.data[sample])
            self.trained_on = n
        for start in range(0, n, 65_536):
            chunk = slots[start : start + 65_536]
            index.add_with_ids(self.vectors.data[chunk], chunk)
        self.index = index
        self.indexed_upto = self.owner.next_slot
        self.dead_in_index = 0
        self.version += 1

    def restore(self, index: faiss.Index, snapshot_slot: int, late: np.ndarray, trained_on: int = 0) -> None:
        """Adopt a snapshot covering the slots below ``snapshot_slot`` and add the live ones above it,
        plus ``late``: slots below it whose first vector in this space was written after it.

        ``trained_on`` is the size the snapshot's IVF index was trained on, recorded with it: the index's
        own vector count (tombstones and growth since training included) would push the next retraining
        (at ``RETRAIN_GROWTH`` times that size) far out. Snapshots from before it was recorded (0) fall
        back to that count."""
        c = self.owner
        self.index = index
        self.snapshot_slot = snapshot_slot
        self.indexed_upto = snapshot_slot
        live_below = len(self.live_slots(below=snapshot_slot))
        self.dead_in_index = int(index.ntotal) - (live_below - len(late))
        if isinstance(index, faiss.IndexIVF):
            self.nlist = int(index.nlist)
            self.trained_on = trained_on or int(index.ntotal)
        tail = self.live_slots()
        tail = np.concatenate([late, tail[tail >= snapshot_slot]]).astype(np.int64)
        if len(tail):
            index.add_with_ids(self.vectors.data[tail], tail)
        self.indexed_upto = c.next_slot

    def needs_compaction(self) -> bool:
        total = self.index.ntotal if self.index is not None else 0
        return total > 0 and self.dead_in_index >= TOMBSTONE_REBUILD_FRACTION * total

    def compact(self) -> None:
        """Drop dead vectors from the index: removal where FAISS supports it, a rebuild for HNSW."""
        if self.index is None or self.dead_in_index == 0:
            return
        if self.kind == pb.INDEX_KIND_HNSW:
            self.rebuild_index()
            return
        dead = np.flatnonzero(~self.owner.alive.data[: self.indexed_upto]).astype(np.int64)
        self.index.remove_ids(faiss.IDSelectorBatch(dead))
        self.dead_in_index = 0
        self.version += 1

    # ---- search ----

    def search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, params: pb.SearchParams
    ) -> tuple[list[list[Hit]], bool]:
        """Top k per query among live items matching ``mask``; returns (hits, every result exact)."""
        c = self.owner
        nq = queries.shape[0]
        if self.count == 0:
            return [[] for _ in range(nq)], True
        exact = self.kind == pb.INDEX_KIND_FLAT
        if mask is None and self.index is not None and not params.exact and self.dead_in_index == 0:
            if self.gpu is not None and self.kind != pb.INDEX_KIND_HNSW:  # GPU
                nprobe = params.nprobe or DEFAULT_NPROBE
                distances, labels = self.gpu.search(
                    self.index, self.version, queries, min(k, self.count), nprobe
                )
                hits = _rows(distances, labels)
            else:
                hits = self._index_search(queries, k, None, params, self.count)
            return self._fill_shortfall(queries, k, hits, None, self.count), exact
        candidates = self.has.data[: c.next_slot].copy()
        if mask is not None:
            candidates &= mask
        matching = int(candidates.sum())
        if matching == 0:
            return [[] for _ in range(nq)], True
        if self.index is None or params.exact or matching <= max(c.brute_force_max, k):
            return self._brute_force(queries, k, np.flatnonzero(candidates)), True
        bitmap = np.packbits(candidates, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        hits = self._index_search(queries, k, selector, params, matching)
        del selector, bitmap  # the selector points into the bitmap: neither outlives the search
        return self._fill_shortfall(queries, k, hits, candidates, matching), exact

    def _fill_shortfall(
        self,
        queries: np.ndarray,
        k: int,
        hits: list[list[Hit]],
        candidates: np.ndarray | None,
        available: int,
    ) -> list[list[Hit]]:
        """An approximate index may visit fewer than k eligible items (few IVF lists probed, a filtered
        HNSW walk): such rows are answered exactly instead, so no result silently falls short."""
        want = min(k, available)
        short = [i for i, row in enumerate(hits) if len(row) < want]
        if short:
            slots = self.live_slots() if candidates is None else np.flatnonzero(candidates)
            for i, row in zip(short, self._brute_force(queries[short], k, slots), strict=True):
                hits[i] = row
        return hits

    def _search_parameters(self, k: int, params: pb.SearchParams) -> faiss.SearchParameters:
        if self.kind == pb.INDEX_KIND_HNSW:
            sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            sp.efSearch = max(params.ef_search or 64, k)
            return sp
        if self.kind in (pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_IVF_PQ):
            sp = faiss.SearchParametersIVF()
            sp.nprobe = min(params.nprobe or DEFAULT_NPROBE, max(self.nlist, 1))
            return sp
        return faiss.SearchParameters()

    def _index_search(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None,
        params: pb.SearchParams,
        available: int,
    ) -> list[list[Hit]]:
        assert self.index is not None
        sp = self._search_parameters(k, params)
        if selector is not None:
            sp.sel = selector
        kk = min(k, max(available, 1))
        distances, labels = self.index.search(queries, kk, params=sp)
        return _rows(distances, labels)

    def _brute_force(self, queries: np.ndarray, k: int, slots: np.ndarray) -> list[list[Hit]]:
        sub = self.vectors.data[slots]
        kk = min(k, len(slots))
        distances, positions = faiss.knn(queries, sub, kk, metric=self.metric)
        labels = np.where(positions >= 0, slots[np.clip(positions, 0, None)], -1)
        return _rows(distances, labels)


def _rows(distances: np.ndarray, labels: np.ndarray) -> list[list[Hit]]:
    out = []
    for drow, lrow in zip(distances.tolist(), labels.tolist(), strict=True):
        out.append([Hit(int(slot), float(d)) for d, slot in zip(drow, lrow, strict=True) if slot >= 0])
    return out
