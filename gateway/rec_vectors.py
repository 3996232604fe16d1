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
    """Vectors kept per rec space and item. Requests in flight across a version switch read the space of
    the version they started on, so each call names its space and the two newest spaces are kept (the one
    being left and the one being switched to); each space keeps at most ``kept`` items."""

    SPACES_KEPT = 2

    def __init__(self, index: ItemSource, kept: int = REC_VECTORS_KEPT) -> None:
        self.index = index
        self.kept = kept
        self._spaces: dict[str, dict[str, np.ndarray]] = {}  # oldest space first

    def __len__(self) -> int:
        return sum(len(table) for table in self._spaces.values())

    def _table(self, space: str) -> dict[str, np.ndarray]:
        if space not in self._spaces:
            self._spaces[space] = {}
            while len(self._spaces) > self.SPACES_KEPT:
                self._spaces.pop(next(iter(self._spaces)))
        return self._spaces[space]

    def _keep(
        self, space: str, stored: dict[str, tuple[Product, dict[str, np.ndarray]]]
    ) -> dict[str, np.ndarray]:
        """The vectors in ``space`` that ``stored`` brought, now kept too."""
        read = {pid: vectors[space] for pid, (_, vectors) in stored.items() if space in vectors}
        table = self._table(space)
        table.update(read)
        while len(table) > self.kept:
            table.pop(next(iter(table)))
        return read

    def _known(self, space: str, ids: Sequence[str], read: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        table = self._spaces.get(space, {})
        found = {pid: table.get(pid) for pid in ids}
        return {pid: v for pid, v in found.items() if v is not None} | read

    async def products(
        self, space: str, ids: Sequence[str], timeout: float | None
    ) -> tuple[dict[str, Product], dict[str, np.ndarray]]:
        """The products among ``ids`` that exist now (read live), and the vectors in ``space`` of those
        that have one. Vectors travel only when some item's vector was never read."""
        table = self._table(space)
        unread = any(pid not in table for pid in ids)
        stored = await self.index.get(ids, timeout, spaces=(space,) if unread else ())
        products = {pid: product for pid, (product, _) in stored.items()}
        return products, self._known(space, list(products), self._keep(space, stored))

    async def vectors(self, space: str, ids: Sequence[str], timeout: float | None) -> dict[str, np.ndarray]:
        """The vectors in ``space`` of items a search of that space has just returned; only the ones
        never read before are read."""
        table = self._table(space)
        unread = [pid for pid in dict.fromkeys(ids) if pid not in table]
        read = self._keep(space, await self.index.get(unread, timeout, spaces=(space,))) if unread else {}
        return self._known(space, ids, read)
