"""``vitrine up`` searches as soon as the first batch is stored, while the rest is still being ingested."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from operations.client import IngestSummary
from operations.demo_run import ingest_while_serving


def test_the_first_search_comes_after_the_first_batch_and_before_the_rest() -> None:
    events: list[str] = []
    searched = threading.Event()

    def run(on_batch: Callable[[IngestSummary], None]) -> IngestSummary:
        summary = IngestSummary()
        for batch in range(3):
            summary.rows += 4
            summary.upserted += 4
            summary.seconds = 1.0 + batch
            events.append(f"stored {summary.upserted}")
            on_batch(summary)
            if batch == 0:  # the rest waits until the search has run: it must not need them
                assert searched.wait(30)
        return summary

    def first_search(stored: int) -> None:
        events.append(f"searched over {stored}")
        searched.set()

    summary = ingest_while_serving(run, 12, first_search, every_s=0.01)
    assert events == ["stored 4", "searched over 4", "stored 8", "stored 12"]
    assert (summary.upserted, summary.rows) == (12, 12)
    assert summary.rate == pytest.approx(4.0)


def test_a_failed_ingest_raises_and_searches_nothing() -> None:
    def run(on_batch: Callable[[IngestSummary], None]) -> IngestSummary:
        raise OSError("gateway gone")

    searches: list[int] = []
    with pytest.raises(OSError, match="gateway gone"):
        ingest_while_serving(run, 12, searches.append, every_s=0.01)
    assert searches == []
