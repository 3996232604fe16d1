"""Step load: raise a paced request rate until the objective breaks, then narrow the edge by bisection.

The search is a plain function over "measure this rate" so its logic is tested without a stack, and the
number of measurements is bounded however the stack behaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.objective import Verdict


@dataclass(frozen=True)
class StepPlan:
    start_rate: float = 2.0
    factor: float = 1.5
    max_rate: float = 500.0
    max_steps: int = 8
    refine: int = 2
    """Bisection steps between the last passing and the first missing rate."""
    resolution: float = 0.5
    """Rates closer than this (req/s) are not told apart: bisection stops there."""

    def __post_init__(self) -> None:
        if self.start_rate <= 0 or self.factor <= 1 or self.max_steps < 1 or self.max_rate < self.start_rate:
            raise ValueError("step plan needs start_rate > 0, factor > 1, max_steps >= 1, max_rate >= start")


@dataclass(frozen=True)
class StepOutcome:
    steps: tuple[tuple[float, Verdict], ...]
    best_rate: float | None
    """Highest measured rate that met the objective; None when even the first step missed."""
    first_miss: float | None
    """Lowest measured rate that missed; None when every step up to the plan's limit passed."""


def users_for(rate: float, interval_s: float) -> int:
    """Users needed so each sends one request every ``interval_s`` on average at ``rate`` req/s overall.

    The interval must be well above the latency being measured, or a slow answer delays the user's next
    request and the offered rate silently drops (coordinated omission).
    """
    return max(1, math.ceil(rate * interval_s))


def search(plan: StepPlan, measure: Callable[[float], Verdict]) -> StepOutcome:
    steps: list[tuple[float, Verdict]] = []
    best: float | None = None
    miss: float | None = None
    rate = plan.start_rate
    while len(steps) < plan.max_steps and rate <= plan.max_rate + 1e-9:
        verdict = measure(rate)
        steps.append((rate, verdict))
        if not verdict.passed:
            miss = rate
            break
        best = rate
        rate = round(rate * plan.factor, 1)
    if best is not None and miss is not None:
        low, high = best, miss
        for _ in range(plan.refine):
            if len(steps) >= plan.max_steps or high - low <= plan.resolution:
                break
            mid = round((low + high) / 2, 1)
            verdict = measure(mid)
            steps.append((mid, verdict))
            if verdict.passed:
                low = best = mid
            else:
                high = miss = mid
    return StepOutcome(tuple(steps), best, miss)
