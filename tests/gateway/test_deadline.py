"""Deadlines inside the pipeline, driven directly (STYLE 12): no stage outlives the caller's budget, and a
budget spent before a stage starts leaves no coroutine behind un-awaited (warnings are errors here)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence

import numpy as np
import pytest

from gateway.errors import DeadlineExceeded
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.types import SearchQuery
from tests.model_repository.images import png_header

PNG = png_header(64, 64)
"""A photo header the pipeline's checks accept; the fake embedder never decodes it."""


class SlowEmbedder:
    """Answers after ``delay`` seconds; records what it started so the test can see it was awaited."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: list[str] = []

    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        self.started.append("text")
        await asyncio.sleep(self.delay)
        return np.ones(512, np.float32) / np.sqrt(512), False

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        self.started.append("image")
        await asyncio.sleep(self.delay)
        return np.ones(512, np.float32) / np.sqrt(512)


class Unreachable:
    """Retriever and re-ranker that must never be reached once the deadline has passed."""

    async def search(self, *args: object) -> list[list[object]]:
        raise AssertionError("retrieval ran after the deadline")

    async def get(self, *args: object) -> dict[str, object]:
        raise AssertionError("lookup ran after the deadline")

    async def upsert(self, *args: object) -> None:
        raise AssertionError("upsert ran after the deadline")

    async def delete(self, *args: object) -> int:
        raise AssertionError("delete ran after the deadline")

    async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray:
        raise AssertionError("re-rank ran after the deadline")


def pipeline(delay: float) -> tuple[Pipeline, SlowEmbedder]:
    embedder = SlowEmbedder(delay)
    return Pipeline(embedder, Unreachable(), Unreachable(), PipelineSettings()), embedder  # type: ignore[arg-type]


async def test_budget_spent_before_start_creates_no_stray_coroutine() -> None:
    pipe, embedder = pipeline(0.0)
    with pytest.raises(DeadlineExceeded):
        await pipe.search(SearchQuery(text="red boots", image=PNG), timeout=1e-9)
    gc.collect()  # an un-awaited coroutine would warn here, and warnings fail this test
    assert embedder.started == []


async def test_hybrid_embeddings_share_one_budget_and_stop_at_the_deadline() -> None:
    pipe, embedder = pipeline(5.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DeadlineExceeded):
        await pipe.search(SearchQuery(text="red boots", image=PNG), timeout=0.2)
    assert loop.time() - t0 < 2.0
    assert sorted(embedder.started) == ["image", "text"]
    gc.collect()


async def test_search_cancelled_before_its_stages_start_leaves_nothing_behind() -> None:
    """A client that hangs up cancels the search; stages not yet started must not leak coroutines."""
    pipe, embedder = pipeline(5.0)
    task = asyncio.create_task(pipe.search(SearchQuery(text="red boots", image=PNG), timeout=10))
    await asyncio.sleep(0)  # the search runs up to its gather; the stage tasks are scheduled, not started
    assert embedder.started == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gc.collect()  # an un-awaited embed coroutine would warn here, and warnings fail this test
    assert embedder.started == []
