"""A personal Recommend driven directly, over an index, a user tower and an events reader in hand: what it
picks and why, and which reads it makes of the index as its rec-space vectors are kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pytest

from gateway.rec_vectors import RecVectors
from gateway.recommend import Recommender, RecommendQuery, RecommendSettings
from gateway.types import Candidate
from vitrine.catalog import Product
from vitrine.contracts import REC_DIM
from vitrine.events import EVENT_CODE, Event, EventType
from vitrine.filters import FieldFilter

NOW = time.time()
HISTORY = [
    ("p3", EVENT_CODE[EventType.CART]),
    ("p7", EVENT_CODE[EventType.VIEW]),
    ("p11", EVENT_CODE[EventType.VIEW]),
]
"""The shopper's items, newest first, with their event types' codes."""


class Index:
    """Products with a vector in ``rec.1`` and ``rec.2``, exact search, every read recorded."""

    def __init__(self, n: int = 30, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.products = {f"p{i}": Product(id=f"p{i}", title=f"title {i}") for i in range(n)}
        self.vectors: dict[str, dict[str, np.ndarray]] = {}
        for pid in self.products:
            self.vectors[pid] = {}
            for space in ("rec.1", "rec.2", "image"):
                v = rng.standard_normal(REC_DIM).astype(np.float32)
                self.vectors[pid][space] = v / np.linalg.norm(v)
        self.gets: list[tuple[list[str], tuple[str, ...] | None]] = []

    async def get(
        self, ids: Sequence[str], timeout: float | None, *, spaces: Collection[str] | None = None
    ) -> dict[str, tuple[Product, dict[str, np.ndarray]]]:
        self.gets.append((list(ids), None if spaces is None else tuple(spaces)))
        await asyncio.sleep(0)  # a real read yields: concurrent requests interleave here
        return {
            pid: (
                self.products[pid],
                {s: v for s, v in self.vectors[pid].items() if spaces is None or s in spaces},
            )
            for pid in ids
            if pid in self.products
        }

    async def search(
        self,
        space: str,
        vectors: Sequence[np.ndarray],
        k: int,
        filters: Sequence[FieldFilter],
        timeout: float | None,
    ) -> list[list[Candidate]]:
        (query,) = vectors
        scored = sorted(
            ((float(self.vectors[p][space] @ query), p) for p in self.products), key=lambda t: -t[0]
        )
        return [[Candidate(pid, score, self.products[pid]) for score, pid in scored[:k]]]


class Tower:
    """Version ``version``; the user vector is the type-weighted sum of the history's vectors."""

    def __init__(self) -> None:
        self.version = 1
        self.histories: list[np.ndarray] = []

    async def user_tower_version(self, timeout: float | None) -> int:
        return self.version

    async def embed_user(
        self, version: int, history: np.ndarray, types: np.ndarray, ages: np.ndarray, timeout: float | None
    ) -> np.ndarray:
        self.histories.append(history)
        user = (history * (1 + types[:, None])).sum(axis=0)
        return (user / np.linalg.norm(user)).astype(np.float32)


class Events:
    def __init__(self, history: dict[str, list[Event]]) -> None:
        self.history = history

    def recent(self, user_id: str, limit: int = 20) -> list[Event]:
        return self.history.get(user_id, [])[:limit]

    def seen(self, user_id: str, limit: int = 1000) -> set[str]:
        return {e.item_id for e in self.history.get(user_id, [])}

    def trending(self, limit: int = 200, **_: Any) -> list[tuple[str, float]]:
        return []

    def co_visited(self, item_id: str, limit: int = 50, sessions: int = 500) -> list[tuple[str, int]]:
        return []


def _event(item: str, kind: EventType, age_s: float) -> Event:
    return Event(f"e-{item}-{kind.value}", "u1", "s1", item, kind, NOW - age_s)


@pytest.fixture
def parts() -> tuple[Index, Tower, Recommender]:
    index, tower = Index(), Tower()
    history = [
        _event("p3", EventType.CART, 60),
        _event("p7", EventType.VIEW, 120),
        _event("p11", EventType.VIEW, 180),
    ]
    rec = Recommender(lambda: Events({"u1": history}), tower, index, RecommendSettings())  # type: ignore[arg-type, return-value]
    return index, tower, rec


def _expected(index: Index, space: str, history: list[tuple[str, int]], k: int) -> list[tuple[str, str]]:
    """Relevance order without the history's items; each pick's reason is its nearest history item."""
    total = np.sum([index.vectors[pid][space] * (1 + code) for pid, code in history], axis=0)
    user = total / np.linalg.norm(total)
    ranked = sorted(index.products, key=lambda p: -float(index.vectors[p][space] @ user))
    picks = [p for p in ranked if p not in {pid for pid, _ in history}][:k]
    nearest = {
        p: max(history, key=lambda h: float(index.vectors[h[0]][space] @ index.vectors[p][space]))
        for p in picks
    }
    return [(p, nearest[p][0]) for p in picks]


async def test_picks_reasons_and_the_vectors_read_once(parts: tuple[Index, Tower, Recommender]) -> None:
    index, _, rec = parts
    q = RecommendQuery(user_id="u1", top_k=5, diversity=0.0)
    first = await rec.recommend(q, 10.0)
    assert first.strategy == "personal" and first.model_version == 1
    expected = _expected(index, "rec.1", HISTORY, 5)
    assert [r.product.id for r in first.items] == [p for p, _ in expected]
    verbs = {"p3": "added to your cart", "p7": "viewed", "p11": "viewed"}
    assert [r.reason for r in first.items] == [f"because you {verbs[h]} title {h[1:]}" for _, h in expected]
    # the first answer read the history's vectors and the picks' (those not read with the history)
    assert index.gets[0] == (["p3", "p7", "p11"], ("rec.1",))
    assert index.gets[1][1] == ("rec.1",) and set(index.gets[1][0]) == {p for p, _ in expected}
    index.gets.clear()
    again = await rec.recommend(q, 10.0)
    assert [(r.product.id, r.reason) for r in again.items] == [(r.product.id, r.reason) for r in first.items]
    assert index.gets == [(["p3", "p7", "p11"], ())]  # the items live, without a vector


async def test_an_item_gone_from_the_catalog_leaves_the_history_though_its_vector_was_kept(
    parts: tuple[Index, Tower, Recommender],
) -> None:
    index, tower, rec = parts
    q = RecommendQuery(user_id="u1", top_k=5, diversity=0.0)
    await rec.recommend(q, 10.0)
    del index.products["p7"]
    result = await rec.recommend(q, 10.0)
    used = tower.histories[-1]
    assert np.allclose(used[0], index.vectors["p3"]["rec.1"]) and np.allclose(
        used[1], index.vectors["p11"]["rec.1"]
    )
    assert not used[2:].any()  # two items used, the rest padding
    expected = _expected(index, "rec.1", [HISTORY[0], HISTORY[2]], 5)
    assert [r.product.id for r in result.items] == [p for p, _ in expected]


async def test_a_new_version_reads_its_own_space(parts: tuple[Index, Tower, Recommender]) -> None:
    index, tower, rec = parts
    q = RecommendQuery(user_id="u1", top_k=4, diversity=0.0)
    await rec.recommend(q, 10.0)
    tower.version = 2
    rec._version = (0, -float("inf"))  # as after the version's time to live
    index.gets.clear()
    result = await rec.recommend(q, 10.0)
    assert result.model_version == 2
    assert index.gets[0] == (["p3", "p7", "p11"], ("rec.2",))
    assert np.allclose(tower.histories[-1][0], index.vectors["p3"]["rec.2"])
    expected = _expected(index, "rec.2", HISTORY, 4)
    assert [r.product.id for r in result.items] == [p for p, _ in expected]


async def test_the_kept_vectors_are_bounded_oldest_out() -> None:
    index = Index()
    kept = RecVectors(index, kept=2)
    assert set(await kept.vectors("rec.1", ["p1", "p2", "p3"], 1.0)) == {"p1", "p2", "p3"}
    assert len(kept) == 2  # p1, read first, went first
    index.gets.clear()
    assert set(await kept.vectors("rec.1", ["p1", "p3"], 1.0)) == {"p1", "p3"}
    assert index.gets == [(["p1"], ("rec.1",))]
    products, vectors = await kept.products("rec.1", ["p3", "p1"], 1.0)
    assert sorted(products) == sorted(vectors) == ["p1", "p3"]
    assert index.gets[-1] == (["p3", "p1"], ())  # every vector kept: none travels
    products, vectors = await kept.products("rec.1", ["p3", "gone"], 1.0)
    assert sorted(products) == sorted(vectors) == ["p3"]
    assert index.gets[-1] == (["p3", "gone"], ("rec.1",))  # an id never read: vectors travel


async def test_requests_on_two_versions_at_once_each_get_their_own_spaces_vectors() -> None:
    """Across a version switch, requests still on the old space and new ones on the new space overlap."""
    index = Index()
    kept = RecVectors(index)

    async def interleaved(space: str) -> dict[str, np.ndarray]:
        return await kept.vectors(space, ["p1", "p2"], 1.0)

    old, new = await asyncio.gather(interleaved("rec.1"), interleaved("rec.2"))
    assert set(old) == set(new) == {"p1", "p2"}
    assert np.allclose(old["p1"], index.vectors["p1"]["rec.1"])
    assert np.allclose(new["p1"], index.vectors["p1"]["rec.2"])
    products, vectors = await kept.products("rec.1", ["p2"], 1.0)  # the old space is still kept
    assert list(products) == ["p2"]
    assert list(vectors) == ["p2"] and index.gets[-1] == (["p2"], ())
    await kept.vectors("rec.3", ["p1"], 1.0)  # a third space: the oldest goes
    await kept.products("rec.1", ["p2"], 1.0)
    assert index.gets[-1] == (["p2"], ("rec.1",))
