"""The trending list behind every cold-start recommendation: one refresh at a time, the previous list
served while it runs, a failed refresh never failing a request that has a list to serve."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway import recommend
from gateway.recommend import Recommender, RecommendSettings


class SlowTrending:
    """An event reader whose trending query blocks until released, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = False

    def trending(self, limit: int = 200, **_: Any) -> list[tuple[str, float]]:
        self.calls += 1
        call = self.calls
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise TimeoutError("the test never released the trending query")
        if self.fail:
            raise RuntimeError("database is locked")
        return [(f"p{call}", float(limit))]


def _recommender(reader: SlowTrending) -> Recommender:
    return Recommender(lambda: reader, tower=None, index=None, settings=RecommendSettings())  # type: ignore[arg-type, return-value]


async def test_one_refresh_at_a_time_and_the_old_list_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = SlowTrending()
    rec = _recommender(reader)
    reader.release.set()
    assert await rec.trending() == [("p1", 500.0)]  # the first read waits for the query
    monkeypatch.setattr(recommend, "TRENDING_TTL_S", 0.0)  # from now on every read finds the list expired
    reader.release.clear()
    reader.entered.clear()
    during = await asyncio.wait_for(asyncio.gather(*(rec.trending() for _ in range(20))), timeout=5)
    assert during == [[("p1", 500.0)]] * 20  # served at once, from the previous list
    assert await asyncio.to_thread(reader.entered.wait, 5)  # the refresh is running, blocked in its query
    later = await asyncio.wait_for(asyncio.gather(*(rec.trending() for _ in range(20))), timeout=5)
    assert later == during and reader.calls == 2  # forty expired reads, one refresh
    reader.release.set()
    refresh = rec._trending_refresh
    assert refresh is not None
    await asyncio.wait_for(refresh, timeout=5)
    monkeypatch.setattr(recommend, "TRENDING_TTL_S", 60.0)
    assert await rec.trending() == [("p2", 500.0)]
    assert reader.calls == 2


async def test_a_failed_refresh_keeps_the_previous_list(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = SlowTrending()
    rec = _recommender(reader)
    reader.release.set()
    first = await rec.trending()
    monkeypatch.setattr(recommend, "TRENDING_TTL_S", 0.0)
    reader.fail = True
    assert await rec.trending() == first
    refresh = rec._trending_refresh
    assert refresh is not None
    assert await asyncio.wait_for(refresh, timeout=5) == first  # logged, not raised
    reader.fail = False
    assert await rec.trending() == first  # still the old list while the retry runs
    refresh = rec._trending_refresh
    assert refresh is not None
    assert await asyncio.wait_for(refresh, timeout=5) == [("p3", 500.0)]
    assert reader.calls == 3


async def test_the_first_read_reports_a_failure() -> None:
    reader = SlowTrending()
    reader.fail = True
    reader.release.set()
    with pytest.raises(RuntimeError, match="database is locked"):
        await _recommender(reader).trending()
