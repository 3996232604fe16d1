"""The served rec space's item vectors, read from the index once per item and kept by the gateway.

A Recommend needs the rec-space vectors of the shopper's history items (the user tower's input) and of
its picks (each pick's reason is the nearest history item). Reading them with the items every time made
the index serialise every space of some thirty items per Recommend (about 180 kB) and the gateway parse
them, on the two cores the whole stack shares. A rec space's vectors are written once, when
``vitrine recommend deploy`` fills ``rec.V`` before any gateway serves version V, and never rewritten:
a new model is a new space (``operations/recommend.py`` never reuses a space's name). So a vector read
once is the vector for as long as its space is served, and only which items exist (and their payloads)
has to be read live.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.types import ItemSource
from vitrine.catalog import Product

REC_VECTORS_KEPT = 100_000
"""Items whose vector is kept (64 floats each: ~35 MB at most); the oldest read goes first."""


class RecVectors:
    """Vectors of one rec space, kept per item; serving another space starts afresh."""

    def __init__(self, index: ItemSource, kept: int = REC_VECTORS_KEPT) -> None:
        self.index = index
        self.kept = kept
        self.space = ""
        self._vectors: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def _serve(self, space: str) -> None:
        if space != self.space:
            self.space, self._vectors = space, {}

    def _keep(self, stored: dict[str, tuple[Product, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """The vectors ``stored`` brought, now kept too."""
        read = {pid: vectors[self.space] for pid, (_, vectors) in stored.items() if self.space in vectors}
        self._vectors.update(read)
        while len(self._vectors) > self.kept:
            self._vectors.pop(next(iter(self._vectors)))
        return read

    def _known(self, ids: Sequence[str], read: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = {pid: self._vectors.get(pid) for pid in ids}
        return {pid: v for pid, v in found.items() if v is not None} | read

    async def products(
        self, space: str, ids: Sequence[str], timeout: float | None
    ) -> tuple[dict[str, Product], dict[str, np.ndarray]]:
        """The products among ``ids`` that exist now (read live), and the vectors in ``space`` of those
        that have one. Vectors travel only when some item's vector was never read."""
        self._serve(space)
        unread = any(pid not in self._vectors for pid in ids)
        stored = await self.index.get(ids, timeout, spaces=(space,) if unread else ())
        products = {pid: product for pid, (product, _) in stored.items()}
        return products, self._known(list(products), self._keep(stored))

    async def vectors(self, space: str, ids: Sequence[str], timeout: float | None) -> dict[str, np.ndarray]:
        """The vectors in ``space`` of items a search of that space has just returned; only the ones
        never read before are read."""
        self._serve(space)
        unread = [pid for pid in dict.fromkeys(ids) if pid not in self._vectors]
        read = self._keep(await self.index.get(unread, timeout, spaces=(space,))) if unread else {}
        return self._known(ids, read)
