"""Merging concurrent single-query searches with identical options into one FAISS call.

Nothing waits on a timer: the first request runs at once, and requests that arrive while a call is in
flight ride together in the next one, so batching costs no latency when the service is idle. Whether a
collection's index gains from it at all is ``Reads.coalesces``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

Key = TypeVar("Key", bound=Hashable)
Row = TypeVar("Row")


class Coalescer(Generic[Key, Row]):
    """Queries with equal keys share a call to ``run``, which answers a row per query and whether every
    row is exact; the key carries everything but the queries (collection, space, k, filter, params)."""

    def __init__(
        self, run: Callable[[Key, np.ndarray], Awaitable[tuple[Sequence[Row], bool]]], max_batch: int
    ) -> None:
        self._run = run
        self._max = max_batch
        self._queues: dict[Key, list[tuple[np.ndarray, asyncio.Future[tuple[list[Row], bool]]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: Key, query: np.ndarray) -> tuple[list[Row], bool]:
        """One prepared query (a 1-row array); its row, as a one-row result, and whether it is exact."""
        fut: asyncio.Future[tuple[list[Row], bool]] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            task = asyncio.create_task(self._drain(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((query, fut))
        return await fut

    async def _drain(
        self, key: Key, queue: list[tuple[np.ndarray, asyncio.Future[tuple[list[Row], bool]]]]
    ) -> None:
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                try:
                    rows, exact = await self._run(key, np.concatenate([q for q, _ in batch]))
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for i, (_, fut) in enumerate(batch):
                    if not fut.done():
                        fut.set_result(([rows[i]], exact))
        finally:
            del self._queues[key]
