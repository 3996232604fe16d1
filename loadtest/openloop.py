"""A light open-loop generator: asyncio + grpc.aio at a fixed arrival rate, latency from the schedule.

Locust's users wait for an answer before their next request, so a slow answer delays the requests behind
it and the report never sees the time they would have waited (coordinated omission); and its gevent
users cost enough CPU on a small machine to slow the stack they measure. Here every request has a send
time fixed before the run (uniform or Poisson arrivals at ``rate``), is sent at that time whatever is
still in flight, and its latency runs from that scheduled time to its answer: a stall anywhere, in the
server or in this process, shows up in the figures. The run is bounded by construction: a fixed number of
scheduled requests, each with a deadline.

The traffic is Locust's: the same query data (``loadtest.data``) and the same request per scenario
(``loadtest.gateway_requests``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadtest.accounting import CpuMeter, CpuUse, load_average
from loadtest.data import QueryData
from loadtest.gateway_requests import SEARCH, build
from loadtest.objective import AGGREGATED, Objective, RunStats, Verdict, judge, stage_summary
from vitrine import targets
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.measure import percentile

ARRIVALS = ("poisson", "uniform")


def schedule(rate: float, duration_s: float, arrival: str, rng: random.Random) -> list[float]:
    """Send offsets (s from the start) of every request of a run: ``rate x duration`` of them on average.

    Uniform arrivals are evenly spaced; Poisson arrivals have exponential gaps, the bursts real traffic has.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("the open-loop generator needs rate > 0 and duration_s > 0")
    if arrival == "uniform":
        return [i / rate for i in range(max(1, math.floor(rate * duration_s)))]
    if arrival != "poisson":
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    offsets: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


@dataclass
class Outcome:
    """One request: scenario, when it was due and sent (s from the start), latency from due, status."""

    scenario: str
    due_s: float
    sent_s: float
    latency_ms: float
    code: str
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class OpenLoopResult:
    rate: float
    duration_s: float
    arrival: str
    outcomes: list[Outcome]
    wall_s: float
    cpu: CpuUse
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]

    @property
    def scheduled(self) -> int:
        return len(self.outcomes)

    def stats(self, scenario: str = AGGREGATED) -> RunStats:
        chosen = [o for o in self.outcomes if scenario == AGGREGATED or o.scenario == scenario]
        # Failures count in the latency figures too, as in Locust: a deadline is a latency.
        latencies = [o.latency_ms for o in chosen]
        failures = sum(o.code != "OK" for o in chosen)
        ok = len(chosen) - failures
        return RunStats(
            name=scenario,
            requests=len(chosen),
            failures=failures,
            # Answers per second from the start until the last answer (or the schedule's end, if later).
            rps=ok / max(self.wall_s, self.duration_s),
            p50_ms=percentile(latencies, 0.50),
            p95_ms=percentile(latencies, 0.95),
            p99_ms=percentile(latencies, 0.99),
            max_ms=max(latencies, default=math.nan),
            avg_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        )

    def errors(self) -> dict[str, int]:
        return dict(Counter(o.code for o in self.outcomes if o.code != "OK"))

    def send_lag_ms(self, q: float) -> float:
        """How late this process sent requests (quantile, ms): its own health as a generator."""
        return percentile((1000 * (o.sent_s - o.due_s) for o in self.outcomes), q)

    def stages(self) -> dict[str, dict[str, float]]:
        values: dict[str, list[float]] = defaultdict(list)
        for o in self.outcomes:
            for stage, ms in o.stages.items():
                values[stage].append(ms)
        return stage_summary(values)

    @property
    def offered_rate(self) -> float:
        """What the schedule actually offered: Poisson arrivals deviate from the nominal rate by chance,
        and a run is judged on keeping up with the load it was given."""
        return self.scheduled / self.duration_s

    def verdict(self, objective: Objective) -> Verdict:
        return judge(self.stats(), objective, self.offered_rate)

    def to_json(self, objective: Objective) -> dict[str, Any]:
        scenarios = sorted({o.scenario for o in self.outcomes})
        return {
            "generator": "openloop",
            "rate": self.rate,
            "offered_rate": self.offered_rate,
            "arrival": self.arrival,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "wall_s": round(self.wall_s, 3),
            "verdict": self.verdict(objective).to_json(),
            "scenarios": {name: vars(self.stats(name)) for name in scenarios},
            "errors": self.errors(),
            "send_lag_ms": {"p50": self.send_lag_ms(0.5), "p99": self.send_lag_ms(0.99)},
            "stages": self.stages(),
            "cpu": {**self.cpu.to_json(), "load_before": self.load_before, "load_after": self.load_after},
        }


async def run(
    target: str | grpc.aio.Channel,
    data: QueryData,
    mix: Mapping[str, int],
    rate: float,
    duration_s: float,
    *,
    arrival: str = "poisson",
    timeout_s: float = 10.0,
    top_k: int = 10,
    seed: int = 0,
    max_generator_share: float = 0.25,
    channels: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> OpenLoopResult:
    """Offers ``rate`` requests/s for ``duration_s`` to a gateway (address or open channel); with an
    address, over ``channels`` connections in turn. Several comma-separated addresses (or a gRPC target
    naming several) spread the requests over the gateways with ``round_robin`` (``vitrine.targets``);
    no request is retried: a failure is reported as it happened.

    Returns once every scheduled request has an answer or its deadline, so at most ``duration_s +
    timeout_s`` plus scheduling slack after the start.
    """
    rng = random.Random(seed)
    offsets = schedule(rate, duration_s, arrival, rng)
    names = [name for name, weight in mix.items() for _ in range(weight)]
    # Requests are built before the clock starts: building them is the generator's work, not latency.
    planned = [
        (offset, name, *build(name, data, rng, top_k)) for offset in offsets for name in [rng.choice(names)]
    ]
    own = isinstance(target, str)
    opened = (
        [targets.aio_channel(target) for _ in range(max(1, channels))]
        if isinstance(target, str)
        else [target]
    )
    stubs = [pb_grpc.ProductSearchStub(c) for c in opened]
    outcomes: list[Outcome | None] = [None] * len(planned)
    meter = CpuMeter(max_share=max_generator_share).start()
    load_before = load_average()

    async def one(i: int, due: float, scenario: str, method: str, request: Any) -> None:
        sent = clock()
        code, stages = "OK", {}
        try:
            response = await getattr(stubs[i % len(stubs)], method)(request, timeout=timeout_s)
            if method == SEARCH:
                stages = {t.stage: t.ms for t in response.timings}
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        done = clock()
        outcomes[i] = Outcome(scenario, due - start, sent - start, 1000 * (done - due), code, stages)

    start = clock()
    tasks = []
    try:
        for i, (offset, scenario, method, request) in enumerate(planned):
            due = start + offset
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, due, scenario, method, request)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if own:
            for channel in opened:
                await channel.close(None)
    wall = clock() - start
    meter.stop()
    done = [o for o in outcomes if o is not None]
    return OpenLoopResult(rate, duration_s, arrival, done, wall, meter.window(), load_before, load_average())
