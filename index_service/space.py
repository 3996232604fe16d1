"""One vector space of a collection: a vector per slot, which slots have one, and its own FAISS index.

Each space keeps its own index (Flat, IVF or HNSW), its training, its tombstones (dead slots still in
the index), its snapshot watermark and its GPU copy. The slots themselves, their liveness and the item
attributes belong to the collection (``collection.py``), shared by every space: a space reads them
through ``Slots``.

Dead slots are kept out of results by an ID selector and removed from Flat/IVF indexes, or HNSW rebuilt,
when a snapshot finds enough of them. This module does no locking and no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from index_service.errors import InvalidArgument
from index_service.gpu import GpuMirror
from index_service.model import IndexKind, Metric, SearchParams, VectorSpec
from vitrine.errors import quoted

TOMBSTONE_REBUILD_FRACTION = 0.25
"""A snapshot compacts the index once this share of the vectors it holds are dead."""

RETRAIN_GROWTH = 8
"""An IVF index is retrained once the collection holds this many times the vectors it was trained on."""

TRAIN_SAMPLE_MAX = 200_000
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64


class Column:
    """A numpy array indexed by slot that grows by amortised doubling."""

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


class Slots(Protocol):
    """What a space reads of its collection."""

    name: str
    next_slot: int
    """Every slot below this has been given out."""
    alive: Column
    """Whether each slot holds a live item."""
    brute_force_max: int
    """Filtered searches matching at most this many items scan them exactly."""


@dataclass(frozen=True)
class SlotHit:
    slot: int
    score: float


class Space:
    """One named vector space of a collection: a vector per slot and its own FAISS index over them."""

    def __init__(self, spec: VectorSpec, owner: Slots) -> None:
        self.spec = spec
        self.owner = owner
        self.name = spec.name
        self.gpu: GpuMirror | None = None
        self.version = 0  # bumped by every change to the index, so a GPU copy knows it is stale
        self.dim = spec.dim
        self.kind = spec.index.kind
        self.metric = faiss.METRIC_INNER_PRODUCT if spec.metric == Metric.INNER_PRODUCT else faiss.METRIC_L2
        self.vectors = Column(np.float32, 0.0, self.dim)
        self.has = Column(np.bool_, False)
        """Slots holding a live item with a vector in this space (every live slot, unless optional)."""
        self.count = 0
        self.index: faiss.Index | None = None
        self.indexed_upto = 0  # slots below this are in `index` (dead ones too, until compaction)
        self.dead_in_index = 0
        self.trained_on = 0
        self.nlist = 0
        self.snapshot_slot = 0
        if self.kind in (IndexKind.FLAT, IndexKind.HNSW):
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

    def prepare_vectors(self, rows: Sequence[np.ndarray] | np.ndarray, what: str) -> np.ndarray:
        """Check shape and finiteness (and normalise for inner product) before anything is written.

        ``rows`` are float32 vectors of any length (a 2-d array is taken as it is when its width fits)."""
        if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == self.dim:
            arr = rows.astype(np.float32, copy=False)
        else:
            dims = sorted({len(r) for r in rows})
            if dims != [self.dim]:
                raise InvalidArgument(
                    f"{what}: wrong dimension, space {quoted(self.name)} of collection "
                    f"{quoted(self.owner.name)} has dim={self.dim}, got {dims}"
                )
            arr = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
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
        if self.kind == IndexKind.FLAT:
            return faiss.IndexIDMap(faiss.IndexFlat(self.dim, self.metric))
        if self.kind == IndexKind.HNSW:
            hnsw = faiss.IndexHNSWFlat(self.dim, idx.hnsw_m, self.metric)
            hnsw.hnsw.efConstruction = idx.ef_construction
            return faiss.IndexIDMap(hnsw)
        nlist = idx.nlist or max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))
        self.nlist = nlist
        quantizer = faiss.IndexFlat(self.dim, self.metric)
        if self.kind == IndexKind.IVF_PQ:
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
        if self.kind in (IndexKind.IVF_FLAT, IndexKind.IVF_PQ) and (
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
        if self.kind == IndexKind.HNSW:
            self.rebuild_index()
            return
        dead = np.flatnonzero(~self.owner.alive.data[: self.indexed_upto]).astype(np.int64)
        self.index.remove_ids(faiss.IDSelectorBatch(dead))
        self.dead_in_index = 0
        self.version += 1

    # ---- search ----

    def search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, params: SearchParams
    ) -> tuple[list[list[SlotHit]], bool]:
        """Top k per query among live items matching ``mask``; returns (hits, every result exact)."""
        c = self.owner
        nq = queries.shape[0]
        if self.count == 0:
            return [[] for _ in range(nq)], True
        exact = self.kind == IndexKind.FLAT
        if mask is None and self.index is not None and not params.exact and self.dead_in_index == 0:
            if self.gpu is not None and self.kind != IndexKind.HNSW:  # GPU
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
        hits: list[list[SlotHit]],
        candidates: np.ndarray | None,
        available: int,
    ) -> list[list[SlotHit]]:
        """An approximate index may visit fewer than k eligible items (few IVF lists probed, a filtered
        HNSW walk): such rows are answered exactly instead, so no result silently falls short."""
        want = min(k, available)
        short = [i for i, row in enumerate(hits) if len(row) < want]
        if short:
            slots = self.live_slots() if candidates is None else np.flatnonzero(candidates)
            for i, row in zip(short, self._brute_force(queries[short], k, slots), strict=True):
                hits[i] = row
        return hits

    def _search_parameters(self, k: int, params: SearchParams) -> faiss.SearchParameters:
        if self.kind == IndexKind.HNSW:
            sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            sp.efSearch = max(params.ef_search or DEFAULT_EF_SEARCH, k)
            return sp
        if self.kind in (IndexKind.IVF_FLAT, IndexKind.IVF_PQ):
            sp = faiss.SearchParametersIVF()
            sp.nprobe = min(params.nprobe or DEFAULT_NPROBE, max(self.nlist, 1))
            return sp
        return faiss.SearchParameters()

    def _index_search(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None,
        params: SearchParams,
        available: int,
    ) -> list[list[SlotHit]]:
        assert self.index is not None
        sp = self._search_parameters(k, params)
        if selector is not None:
            sp.sel = selector
        kk = min(k, max(available, 1))
        distances, labels = self.index.search(queries, kk, params=sp)
        return _rows(distances, labels)

    def _brute_force(self, queries: np.ndarray, k: int, slots: np.ndarray) -> list[list[SlotHit]]:
        sub = self.vectors.data[slots]
        kk = min(k, len(slots))
        distances, positions = faiss.knn(queries, sub, kk, metric=self.metric)
        labels = np.where(positions >= 0, slots[np.clip(positions, 0, None)], -1)
        return _rows(distances, labels)


def _rows(distances: np.ndarray, labels: np.ndarray) -> list[list[SlotHit]]:
    out = []
    for drow, lrow in zip(distances.tolist(), labels.tolist(), strict=True):
        out.append([SlotHit(int(slot), float(d)) for d, slot in zip(drow, lrow, strict=True) if slot >= 0])
    return out
