"""Deadlines and stage timings, shared by search (``gateway.pipeline``) and recommendations."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable
from typing import TypeVar

from gateway.errors import DeadlineExceeded

T = TypeVar("T")


class Deadline:
    """Absolute deadline on the event loop's clock; ``None`` means the caller set none."""

    def __init__(self, timeout: float | None) -> None:
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self._at is None:
            return None
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded")
        return left

    async def run(self, awaitable: Awaitable[T]) -> T:
        try:
            left = self.remaining()
        except DeadlineExceeded:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        if left is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, left)
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded") from None


class Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def stage(self, name: str) -> _Stage:
        return _Stage(self.timings, name)


class _Stage:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings, self._name = timings, name

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._timings[self._name] = (time.perf_counter() - self._t0) * 1000.0
