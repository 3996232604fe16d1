"""Recommendations as plain code: live history -> user tower -> candidates -> business re-rank -> hydration.

The clients are passed in (the events store, a user-tower client, the index retriever), so tests and
benchmarks can drive this directly. One Recommend:

1. the user's last ``MAX_HISTORY`` events from the events store (live: an event recorded a moment ago
   changes the next answer, no retraining);
2. the served recommender version ``V`` (the newest ``user_tower`` version Triton reports); the history
   items' vectors in the index's ``rec.V`` space (the items read live, their vectors once per item:
   ``gateway.rec_vectors``); the user tower on Triton turns them, their event types and ages into one
   vector;
3. the index's top candidates for it in ``rec.V``, filters applied inside the index;
4. the business layer: drop what the user has already touched (``exclude_seen``), a popularity penalty
   (trending score, log-scaled), optional boosts, then MMR over categories: each pick maximises
   ``(1 - diversity) * relevance - diversity * max category similarity to the picks so far``
   (same leaf 1, same parent 0.5);
5. hydration from the candidates' payloads, with a reason ("because you viewed <title>": the history item
   nearest the candidate in the rec space).

Cold start: a user with no history gets session neighbours of the context item when one is given (items
seen in the same sessions, else its image neighbours), otherwise recency-weighted trending items. With
no recommender deployed, or none of the history's items in the rec space, the answer is trending too;
``strategy`` says which path answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gateway.errors import InvalidInput, NotFound
from gateway.event_store import EventReader
from gateway.rec_vectors import RecVectors
from gateway.timing import Timer
from gateway.types import ItemSource
from vitrine.catalog import Product
from vitrine.contracts import REC_DIM
from vitrine.events import EVENT_CODE, MAX_HISTORY, Event, EventType
from vitrine.filters import FieldFilter, field_values, matches
from vitrine.items import IMAGE, rec_space

log = logging.getLogger(__name__)

TRENDING_TTL_S = 30.0
"""Trending scores are recomputed at most this often (one aggregate query over the trending window)."""

MAX_RECOMMEND = 100
DEFAULT_RECOMMEND = 10
MAX_BOOSTS = 16

_VERB = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "looked at",
    EventType.FAVORITE: "saved",
    EventType.CART: "added to your cart",
    EventType.CONTACT: "asked about",
    EventType.PURCHASE: "bought",
}


@dataclass(frozen=True)
class RecommendSettings:
    """Recommendation settings, declared once; the gateway's config holds these (its flags come from here)."""

    events_path: str = field(
        default="var/events/events.sqlite3",
        metadata={"help": "events store (SQLite); created on first use"},
    )
    events_retention_days: float = field(
        default=180.0, metadata={"help": "events older than this are deleted (0 keeps all)"}
    )
    trending_window_days: float = field(default=14.0, metadata={"help": "events trending looks at"})
    rec_candidates: int = field(default=100, metadata={"help": "candidates the index returns per Recommend"})
    rec_diversity: float = field(
        default=0.3, metadata={"help": "default MMR strength over categories in [0, 1] (0 = relevance only)"}
    )
    rec_popularity_penalty: float = field(
        default=0.05, metadata={"help": "score taken from the most trending item (log-scaled below it)"}
    )
    rec_version_ttl_s: float = field(
        default=1.0, metadata={"help": "seconds the served recommender version is cached"}
    )


@dataclass(frozen=True)
class Boost:
    field: str
    any_of: tuple[str, ...]
    weight: float


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    top_k: int = DEFAULT_RECOMMEND
    context_item: str = ""
    filters: tuple[FieldFilter, ...] = ()
    exclude_seen: bool = True
    diversity: float | None = None
    boosts: tuple[Boost, ...] = ()


@dataclass
class Recommendation:
    product: Product
    score: float
    reason: str


@dataclass
class RecommendResult:
    items: list[Recommendation]
    strategy: str  # "personal", "session" (context item neighbours) or "trending"
    model_version: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class UserTower(Protocol):
    async def user_tower_version(self, timeout: float | None) -> int:
        """The newest served version, 0 when none."""
        ...

    async def embed_user(
        self, version: int, history: np.ndarray, types: np.ndarray, ages: np.ndarray, timeout: float | None
    ) -> np.ndarray: ...


def recommend_query(
    *,
    user_id: str,
    top_k: int | None = None,
    context_item: str = "",
    filters: Sequence[FieldFilter] = (),
    exclude_seen: bool | None = None,
    diversity: float | None = None,
    boosts: Sequence[Boost] = (),
) -> RecommendQuery:
    """The query from a transport's plain values (0 / None mean the defaults), checked."""
    q = RecommendQuery(
        user_id=user_id,
        top_k=top_k or DEFAULT_RECOMMEND,
        context_item=context_item,
        filters=tuple(filters),
        exclude_seen=True if exclude_seen is None else exclude_seen,
        diversity=diversity,
        boosts=tuple(boosts),
    )
    check_query(q)
    return q


def check_query(q: RecommendQuery) -> None:
    if not q.user_id and not q.context_item:
        raise InvalidInput("user_id is required (or a context item for an anonymous shopper)")
    if len(q.user_id) > 128:
        raise InvalidInput("user_id must be at most 128 characters")
    if not 1 <= q.top_k <= MAX_RECOMMEND:
        raise InvalidInput(f"top_k must be in 1..{MAX_RECOMMEND}, got {q.top_k}")
    if q.diversity is not None and not (0.0 <= q.diversity <= 1.0 and math.isfinite(q.diversity)):
        raise InvalidInput(f"diversity must be in [0, 1], got {q.diversity}")
    if len(q.boosts) > MAX_BOOSTS:
        raise InvalidInput(f"at most {MAX_BOOSTS} boosts")
    for b in q.boosts:
        if not math.isfinite(b.weight) or abs(b.weight) > 1.0:
            raise InvalidInput(f"boost weight must be in [-1, 1], got {b.weight}")


def _boost(product: Product, boosts: Sequence[Boost]) -> float:
    """A boost's values match a product as a filter's ``any_of`` does (``vitrine.filters``)."""
    return sum(b.weight for b in boosts if set(b.any_of) & field_values(product, b.field))


def _category_codes(items: Sequence[Recommendation]) -> tuple[np.ndarray, np.ndarray]:
    """Each item's leaf and parent category as small integers (-1: none), so MMR compares arrays.

    Same leaf (a non-empty category equal to the pick's) is similarity 1, same parent (a category of at
    least two levels whose path above the leaf equals the pick's) 0.5, anything else 0."""
    leaves: dict[tuple[str, ...], int] = {}
    parents: dict[tuple[str, ...], int] = {}
    leaf = np.full(len(items), -1, dtype=np.int64)
    parent = np.full(len(items), -1, dtype=np.int64)
    for i, r in enumerate(items):
        category = r.product.category
        if category:
            leaf[i] = leaves.setdefault(category, len(leaves))
        if len(category) > 1:
            parent[i] = parents.setdefault(category[:-1], len(parents))
    return leaf, parent


def mmr(items: list[Recommendation], k: int, diversity: float) -> list[Recommendation]:
    """Greedy maximal marginal relevance over categories; relevance is min-max scaled to [0, 1].

    Each pick maximises ``(1 - diversity) * relevance - diversity * max similarity to the picks so far``
    (ties to the earlier item). The running maximum is updated with the last pick only, over arrays: the
    same picks as comparing every item with every pick, at a hundredth of the Python work (MMR over a
    hundred candidates was ~3 ms of the gateway's CPU per Recommend)."""
    if diversity <= 0 or len(items) <= 1:
        return sorted(items, key=lambda r: -r.score)[:k]
    scores = np.asarray([r.score for r in items], dtype=np.float64)
    spread = float(scores.max() - scores.min()) or 1.0
    relevance = (scores - scores.min()) / spread
    leaf, parent = _category_codes(items)
    similarity = np.zeros(len(items))
    available = np.ones(len(items), dtype=bool)
    picked: list[int] = []
    while len(picked) < min(k, len(items)):
        value = np.where(available, (1 - diversity) * relevance - diversity * similarity, -np.inf)
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        same_leaf = (leaf == leaf[best]) & (leaf >= 0)
        same_parent = (parent == parent[best]) & (parent >= 0)
        similarity = np.maximum(similarity, np.where(same_leaf, 1.0, np.where(same_parent, 0.5, 0.0)))
    return [items[i] for i in picked]


def pad_history(
    events: Sequence[Event], vectors: dict[str, np.ndarray], now: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Event]]:
    """The user tower's inputs (newest first, zero-padded) from the events whose item has a rec vector."""
    used = [e for e in events if e.item_id in vectors][:MAX_HISTORY]
    hist = np.zeros((MAX_HISTORY, REC_DIM), dtype=np.float32)
    types = np.zeros(MAX_HISTORY, dtype=np.int64)
    ages = np.zeros(MAX_HISTORY, dtype=np.float32)
    for i, e in enumerate(used):
        hist[i] = vectors[e.item_id]
        types[i] = EVENT_CODE[e.type]
        ages[i] = max(0.0, (now - e.ts) / 3600.0)
    return hist, types, ages, used


class Recommender:
    def __init__(
        self,
        events: Callable[[], EventReader],
        tower: UserTower,
        index: ItemSource,
        settings: RecommendSettings,
        validate_filters: Callable[[Sequence[FieldFilter]], None] | None = None,
    ) -> None:
        self._events = events
        self.validate_filters = validate_filters
        self.tower = tower
        self.index = index
        self.rec_vectors = RecVectors(index)
        self.settings = settings
        self._version = (0, -math.inf)  # (version, monotonic time read)
        self._trending_cache: tuple[float, list[tuple[str, float]]] = (-math.inf, [])
        self._trending_refresh: asyncio.Task[list[tuple[str, float]]] | None = None

    @property
    def events(self) -> EventReader:
        return self._events()

    async def version(self, timeout: float | None) -> int:
        version, read_at = self._version
        if time.monotonic() - read_at > self.settings.rec_version_ttl_s:
            version = await self.tower.user_tower_version(timeout)
            self._version = (version, time.monotonic())
        return version

    async def trending(self) -> list[tuple[str, float]]:
        """The trending list, refreshed at most every ``TRENDING_TTL_S`` by one query at a time.

        Once a list exists, an expired one is still served while a single background refresh runs: every
        request arriving during the ~100 ms aggregate used to start its own, and at 20 req/s the pile-up
        made one recommendation in a hundred take 0.3-1.2 s. Only the very first read waits."""
        read_at, items = self._trending_cache
        if time.monotonic() - read_at > TRENDING_TTL_S:
            if self._trending_refresh is None or self._trending_refresh.done():
                self._trending_refresh = asyncio.create_task(self._refresh_trending())
            if read_at == -math.inf:
                return await asyncio.shield(self._trending_refresh)
        return items

    async def _refresh_trending(self) -> list[tuple[str, float]]:
        try:
            items = await asyncio.to_thread(self.events.trending, 500)
        except Exception:
            if self._trending_cache[0] == -math.inf:
                raise  # the first read: the waiting request reports it
            log.warning("trending refresh failed; serving the previous list", exc_info=True)
            return self._trending_cache[1]
        self._trending_cache = (time.monotonic(), items)
        return items

    def _history(self, user_id: str, exclude_seen: bool) -> tuple[list[Event], set[str]]:
        """The user's last events and the items to leave out, in one trip to a worker thread: the two
        indexed reads take ~0.2 ms together, about what a trip through the event loop costs."""
        if not user_id:
            return [], set()
        events = self.events
        return events.recent(user_id, MAX_HISTORY), events.seen(user_id) if exclude_seen else set()

    async def recommend(self, q: RecommendQuery, timeout: float) -> RecommendResult:
        check_query(q)
        if self.validate_filters is not None:
            self.validate_filters(q.filters)
        deadline = time.monotonic() + timeout
        timer = Timer()

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        with timer.stage("rec_history"):
            history, seen = await asyncio.to_thread(self._history, q.user_id, q.exclude_seen)
        exclude = set(seen) | ({q.context_item} if q.context_item else set())
        trending = dict(await self.trending())
        top_trend = max(trending.values(), default=0.0)
        diversity = self.settings.rec_diversity if q.diversity is None else q.diversity

        def penalty(pid: str) -> float:
            if top_trend <= 0:
                return 0.0
            return (
                self.settings.rec_popularity_penalty
                * math.log1p(trending.get(pid, 0.0))
                / math.log1p(top_trend)
            )

        result: RecommendResult | None = None
        if history:
            result = await self._personal(q, history, exclude, penalty, diversity, timer, left)
        if result is None and q.context_item:
            result = await self._session(q, exclude, diversity, timer, left)
        if result is None:
            result = await self._trending(q, exclude, trending, diversity, timer, left)
        result.timings = {**timer.timings, "rec_total": sum(timer.timings.values())}
        return result

    async def _personal(
        self,
        q: RecommendQuery,
        history: list[Event],
        exclude: set[str],
        penalty: Callable[[str], float],
        diversity: float,
        timer: Timer,
        left: Callable[[], float],
    ) -> RecommendResult | None:
        with timer.stage("rec_user_tower"):
            version = await self.version(left())
            if not version:
                return None
            space = rec_space(version)
            history_ids = list(dict.fromkeys(e.item_id for e in history))
            products, vectors = await self.rec_vectors.products(space, history_ids, left())
            hist, types, ages, used = pad_history(history, vectors, time.time())
            if not used:
                return None
            user = await self.tower.embed_user(version, hist, types, ages, left())
        with timer.stage("rec_retrieve"):
            k = min(1000, max(self.settings.rec_candidates, q.top_k * 3) + len(exclude))
            (candidates,) = await self.index.search(space, [user], k, q.filters, left())
        with timer.stage("rec_rerank"):
            pool = []
            for c in candidates:
                if c.id in exclude:
                    continue
                score = c.score - penalty(c.id) + _boost(c.product, q.boosts)
                pool.append(Recommendation(c.product, score, ""))
            picked = mmr(pool, q.top_k, diversity)
            # reason: the history item nearest each pick in the rec space
            if picked:
                found = await self.rec_vectors.vectors(space, [r.product.id for r in picked], left())
                hist_ids = [e.item_id for e in used]
                hist_mat = np.stack([vectors[pid] for pid in hist_ids])
                for r in picked:
                    vec = found.get(r.product.id)
                    j = int(np.argmax(hist_mat @ vec)) if vec is not None else 0
                    r.reason = f"because you {_VERB[used[j].type]} {products[hist_ids[j]].title}"
        return RecommendResult(picked, "personal", version)

    async def _session(
        self, q: RecommendQuery, exclude: set[str], diversity: float, timer: Timer, left: Callable[[], float]
    ) -> RecommendResult | None:
        with timer.stage("rec_retrieve"):
            stored = await self.index.get([q.context_item], left(), spaces=(IMAGE,))
            if q.context_item not in stored:
                raise NotFound(f"unknown context item {q.context_item[:128]!r}")
            context, vecs = stored[q.context_item]
            neighbours = await asyncio.to_thread(self.events.co_visited, q.context_item, 200)
            ids = [pid for pid, _ in neighbours if pid not in exclude]
            products = await self.index.get(ids, left(), spaces=()) if ids else {}
            counts = dict(neighbours)
            pool = [
                Recommendation(p, counts[pid] + _boost(p, q.boosts), f"often viewed with {context.title}")
                for pid, (p, _) in products.items()
                if matches(p, q.filters)
            ]
            if len(pool) < q.top_k and IMAGE in vecs:
                (similar,) = await self.index.search(
                    IMAGE, [vecs[IMAGE]], q.top_k * 3 + len(exclude), q.filters, left()
                )
                have = {r.product.id for r in pool}
                pool += [
                    Recommendation(c.product, -1.0 + c.score * 1e-3, f"looks like {context.title}")
                    for c in similar
                    if c.id not in exclude and c.id not in have
                ]
        with timer.stage("rec_rerank"):
            return RecommendResult(mmr(pool, q.top_k, diversity), "session")

    async def _trending(
        self,
        q: RecommendQuery,
        exclude: set[str],
        trending: dict[str, float],
        diversity: float,
        timer: Timer,
        left: Callable[[], float],
    ) -> RecommendResult:
        with timer.stage("rec_retrieve"):
            ids = [pid for pid, _ in sorted(trending.items(), key=lambda kv: -kv[1]) if pid not in exclude]
            ids = ids[: max(200, q.top_k * 10)]
            products = await self.index.get(ids, left(), spaces=()) if ids else {}
        with timer.stage("rec_rerank"):
            pool = [
                Recommendation(p, math.log1p(trending[pid]) + _boost(p, q.boosts), "trending now")
                for pid, (p, _) in products.items()
                if matches(p, q.filters)
            ]
            return RecommendResult(mmr(pool, q.top_k, diversity), "trending")
