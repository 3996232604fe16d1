"""Reads: get by id, search (checked whole first, so merged searches cannot fail each other), statistics.

Reads share each collection's readers lock; none waits for a disk commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from index_service import filters, lexical
from index_service.config import MAX_BATCH, MAX_K, MAX_QUERIES, MAX_QUERY_TEXT_CHARS
from index_service.errors import FailedPrecondition, InvalidArgument, NotFound
from index_service.model import CollectionStats, Hit, IndexKind, SearchParams, Stored
from index_service.registry import Registry
from index_service.specs import check_search_params
from vitrine.errors import quoted


class Reads:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def get(self, name: str, ids: list[str], include_vectors: bool) -> tuple[list[Stored], list[str]]:
        """The items found, in request order, and the ids not found."""
        handle = self.registry.handle(name)
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"batch of {len(ids)} ids exceeds the limit of {MAX_BATCH}")
        c = handle.c
        found, missing = [], []
        with handle.rw.read():
            for item_id in ids:
                slot = c.slot_of.get(item_id)
                record = c.records[slot] if slot is not None else None
                if slot is None or record is None:
                    missing.append(item_id)
                    continue
                vectors = {}
                if include_vectors:
                    vectors = {
                        space.name: space.vectors.data[slot].copy()
                        for space in c.spaces.values()
                        if space.has.data[slot]
                    }
                found.append(Stored(item_id, record, vectors))
        return found, missing

    def prepare_search(
        self,
        name: str,
        space: str,
        queries: Sequence[np.ndarray],
        k: int,
        flt: filters.Filter | None,
        params: SearchParams,
    ) -> tuple[str, np.ndarray]:
        """Validate one search request completely, so a coalesced batch cannot fail for its neighbours.

        Returns the space's name (resolved when the request left it empty) and the prepared queries.
        """
        handle = self.registry.handle(name)
        target = handle.c.space(space)
        if not queries:
            raise InvalidArgument("search needs at least one query vector")
        if len(queries) > MAX_QUERIES:
            raise InvalidArgument(f"{len(queries)} queries exceed the limit of {MAX_QUERIES}")
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        check_search_params(params)
        if flt is not None:
            filters.validate(flt, handle.c.number_fields, handle.c.keyword_fields)
        return target.name, target.prepare_vectors(queries, "query")

    def is_lexical(self, name: str, space: str) -> bool:
        return space in self.registry.handle(name).c.lexical

    def prepare_text_search(
        self, name: str, space: str, texts: Sequence[str], vectors: int, k: int, flt: filters.Filter | None
    ) -> None:
        """Validate one lexical search completely (``vectors``: how many queries also carry a vector)."""
        handle = self.registry.handle(name)
        handle.c.lexical_space(space)
        if not texts:
            raise InvalidArgument("search needs at least one query")
        if len(texts) > MAX_QUERIES:
            raise InvalidArgument(f"{len(texts)} queries exceed the limit of {MAX_QUERIES}")
        if vectors:
            raise InvalidArgument(f"space {quoted(space)} is lexical: its queries carry text, not vectors")
        for i, text in enumerate(texts):
            if not 1 <= len(text) <= MAX_QUERY_TEXT_CHARS:
                raise InvalidArgument(
                    f"query {i}: a lexical query's text must be 1-{MAX_QUERY_TEXT_CHARS} characters, "
                    f"got {len(text)}"
                )
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        if flt is not None:
            filters.validate(flt, handle.c.number_fields, handle.c.keyword_fields)

    def search_text(
        self, name: str, space: str, texts: Sequence[str], k: int, flt: filters.Filter | None, prefix: bool
    ) -> list[list[Hit]]:
        """Validated queries (``prepare_text_search``) against a lexical space: BM25, best first, the
        filter applied to the whole ranked list (``lexical.search``)."""
        handle = self.registry.handle(name)
        db = self.registry.storage.reader()
        c = handle.c
        spec = c.lexical_space(space)
        out = []
        with handle.rw.read():
            mask = filters.evaluate(flt, c) if flt is not None else None
            admit = lexical.admitter(c.next_slot, c.alive.data, c.slot_of, mask)
            for text in texts:
                try:
                    rows = lexical.search(db, c.name, spec, text, prefix, k, admit)
                except sqlite3.OperationalError:
                    if handle.dropped:
                        raise NotFound(f"collection {quoted(name)} does not exist") from None
                    raise
                out.append(
                    [Hit(str(c.slot_ids[slot]), score, c.records[slot] or b"") for slot, score in rows]
                )
        return out

    def coalesces(self, name: str, space: str) -> bool:
        """Whether merging concurrent single queries pays off for this collection's index.

        Measured (docs/BENCHMARKS.md): merged HNSW queries gave 1.2-1.5x the QPS of separate calls, but
        a Flat scan costs FAISS the same per query batched or not on this CPU build, and one merged call
        runs on one executor thread where separate calls use them all (0.8x). So Flat is not merged.
        """
        return self.registry.handle(name).c.space(space).kind != IndexKind.FLAT

    def search(
        self,
        name: str,
        space: str,
        queries: np.ndarray,
        k: int,
        flt: filters.Filter | None,
        params: SearchParams,
    ) -> tuple[list[list[Hit]], bool]:
        """Prepared queries (``prepare_search``); returns hits per query and whether all are exact."""
        handle = self.registry.handle(name)
        c = handle.c
        target = c.space(space)
        with handle.rw.read():
            mask = filters.evaluate(flt, c) if flt is not None else None
            rows, exact = target.search(queries, k, mask, params)
            out = []
            for row in rows:
                hits = []
                for h in row:
                    item_id, record = c.slot_ids[h.slot], c.records[h.slot]
                    if item_id is None or record is None:  # an index answer for a dead slot: never expected
                        raise FailedPrecondition(f"index of {quoted(name)} returned a deleted item")
                    hits.append(Hit(item_id, h.score, record))
                out.append(hits)
        return out, exact

    # ---- statistics ----

    def stats(self, name: str) -> CollectionStats:
        return self.registry.handle(name).stats()

    def list_collections(self) -> list[CollectionStats]:
        return [handle.stats() for handle in self.registry.handles()]

    def counts(self) -> dict[str, int]:
        """Live items per collection (no lock: a gauge)."""
        return {handle.c.name: handle.c.count for handle in self.registry.handles()}

    def index_totals(self) -> dict[tuple[str, str], int]:
        """Vectors held by each (collection, space) FAISS index, tombstones included (no lock: a gauge)."""
        out = {}
        for handle in self.registry.handles():
            for space in handle.c.spaces.values():
                index = space.index
                out[handle.c.name, space.name] = int(index.ntotal) if index is not None else 0
        return out
