"""Events -> training examples and held-out evaluation cases, split by time.

Each user's sessions are ordered by their first event. The **last** session is the test case and the one
before it the validation case (early stopping); training only sees events before the validation session
starts, so nothing a model is scored on leaks into what it learned from. A case's targets are the items
of its session the user had never touched before (Recommend drops seen items, so only new ones can be
hit), each graded by its strongest event; its history is everything before the session began.

Training examples: every first touch of an item, with the user's events before it as history (the
current session's earlier events included: the served tower reads the live history too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vitrine.events import EVENT_CODE, EVENT_WEIGHT, MAX_HISTORY, Event


@dataclass(frozen=True)
class History:
    """Newest first, at most ``MAX_HISTORY``: item row, event code, hours before ``now``."""

    items: np.ndarray  # int64 [h]
    types: np.ndarray  # int64 [h]
    ages: np.ndarray  # float32 [h]


@dataclass(frozen=True)
class Case:
    user: str
    history: History
    seen: frozenset[int]  # every item the user touched before the session
    targets: dict[int, float]  # new items of the session -> strongest event weight
    now: float


@dataclass
class Split:
    train: list[tuple[History, int, float]]  # (history, target item row, weight)
    validation: list[Case]
    test: list[Case]
    train_events: list[Event]  # events before each user's validation session (baselines learn from these)
    window: tuple[float, float]  # first and last event time


def history_of(events: Sequence[Event], index: dict[str, int], now: float) -> History:
    """The newest ``MAX_HISTORY`` events of ``events`` (time order) whose item is known."""
    picked = [e for e in reversed(events) if e.item_id in index][:MAX_HISTORY]
    return History(
        items=np.asarray([index[e.item_id] for e in picked], dtype=np.int64),
        types=np.asarray([EVENT_CODE[e.type] for e in picked], dtype=np.int64),
        ages=np.asarray([max(0.0, (now - e.ts) / 3600.0) for e in picked], dtype=np.float32),
    )


def _case(user: str, before: Sequence[Event], session: Sequence[Event], index: dict[str, int]) -> Case | None:
    seen = {index[e.item_id] for e in before if e.item_id in index}
    targets: dict[int, float] = {}
    for e in session:
        row = index.get(e.item_id)
        if row is not None and row not in seen:
            targets[row] = max(targets.get(row, 0.0), EVENT_WEIGHT[e.type])
    if not before or not targets:
        return None
    now = session[0].ts
    return Case(user, history_of(before, index, now), frozenset(seen), targets, now)


def split(events: Iterable[Event], index: dict[str, int]) -> Split:
    by_user: dict[str, list[Event]] = defaultdict(list)
    all_events = sorted(events, key=lambda e: (e.ts, e.event_id))
    for e in all_events:
        by_user[e.user_id].append(e)
    train: list[tuple[History, int, float]] = []
    validation: list[Case] = []
    test: list[Case] = []
    train_events: list[Event] = []
    for user in sorted(by_user):
        evs = by_user[user]
        sessions: dict[str, list[Event]] = defaultdict(list)
        for e in evs:
            sessions[e.session_id or user].append(e)
        order = sorted(sessions.values(), key=lambda s: s[0].ts)
        if len(order) >= 3:
            val_start, test_start = order[-2][0].ts, order[-1][0].ts
            before_test = [e for e in evs if e.ts < test_start]
            before_val = [e for e in evs if e.ts < val_start]
            case = _case(user, before_test, order[-1], index)
            if case is not None:
                test.append(case)
            case = _case(user, before_val, order[-2], index)
            if case is not None:
                validation.append(case)
        else:
            before_val = evs  # too short to hold out: all of it trains
        train_events.extend(before_val)
        touched: set[str] = set()
        for i, e in enumerate(before_val):
            if e.item_id in index and e.item_id not in touched and i > 0:
                weight = max(
                    EVENT_WEIGHT[x.type]
                    for x in before_val[i:]
                    if x.item_id == e.item_id and x.session_id == e.session_id
                )
                train.append((history_of(before_val[:i], index, e.ts), index[e.item_id], weight))
            touched.add(e.item_id)
    window = (all_events[0].ts, all_events[-1].ts) if all_events else (0.0, 0.0)
    return Split(train, validation, test, train_events, window)


def pad(histories: Sequence[History]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch arrays [b, MAX_HISTORY] (items, types, ages); padding has type 0."""
    n = len(histories)
    items = np.zeros((n, MAX_HISTORY), dtype=np.int64)
    types = np.zeros((n, MAX_HISTORY), dtype=np.int64)
    ages = np.zeros((n, MAX_HISTORY), dtype=np.float32)
    for i, h in enumerate(histories):
        k = len(h.items)
        items[i, :k], types[i, :k], ages[i, :k] = h.items, h.types, h.ages
    return items, types, ages
