"""The restart path: one stored collection back into memory, from the database and its latest snapshots.

Items stream back in slot order; each space then adopts its snapshot and re-adds only what was written
after it (slots above its watermark, and vectors written at an item's existing slot after it). A
snapshot FAISS cannot read is no failure: that space's index is rebuilt from the stored vectors.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
from tqdm import tqdm

from index_service.collection import Collection
from index_service.space import Space
from index_service.storage import Snapshot, Storage, StoredCollection

log = logging.getLogger(__name__)


def load_collection(
    storage: Storage, stored: StoredCollection, brute_force_max: int, progress: bool
) -> Collection:
    """Raises ``ValueError`` for a stored collection that cannot be read (its spec, say)."""
    if stored.error:
        raise ValueError(stored.error)
    c = Collection(stored.spec, brute_force_max)
    c.reserve(stored.next_slot)
    bar = tqdm(desc=f"loading {c.name}", unit="item", disable=not progress)
    for rows in storage.items(c.name):
        c.load_items(rows)
        bar.update(len(rows))
    bar.close()
    late = _load_optional_vectors(storage, c, stored.snapshots)
    for space in c.spaces.values():
        _restore_index(space, stored.snapshots.get(space.name), late[space.name])
    return c


def _load_optional_vectors(
    storage: Storage, c: Collection, snapshots: dict[str, Snapshot]
) -> dict[str, np.ndarray]:
    """Optional-space vectors into memory; returns, per space, the slots below its snapshot's
    watermark whose vector was written after the snapshot (added where the item already was)."""
    late: dict[str, list[int]] = {name: [] for name in c.spaces}
    for rows in storage.item_vectors(c.name):
        for item_id, space_name, seq, vector in rows:
            slot = c.load_vector(item_id, space_name, vector)
            snap = snapshots.get(space_name)
            if slot is not None and snap is not None and slot < snap.slot <= seq:
                late[space_name].append(slot)
    return {name: np.array(sorted(slots), dtype=np.int64) for name, slots in late.items()}


def _restore_index(space: Space, snapshot: Snapshot | None, late: np.ndarray) -> None:
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
