"""The verdict, the step search and the mix parser: the logic that decides pass/fail, without a stack."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.config import LoadTarget
from loadtest.objective import Objective, RunStats, Verdict, judge, percentile, read_stats
from loadtest.scenarios import DEFAULT_MIX, SCENARIOS, mix_for, parse_mix
from loadtest.step import StepPlan, search, users_for

# The header and rows exactly as Locust 2.x writes ``*_stats.csv``.
LOCUST_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
    "99.99%,100%"
)
LOCUST_CSV = (
    LOCUST_HEADER
    + """
grpc,embed_text,1944,0,2,2.9,0,31,2048,648.1,0.0,2,3,3,4,4,5,8,11,20,31,31
grpc,rerank50,305,2,2,3.1,0,40,200,101.7,0.6,2,3,3,4,4,5,7,8,30,40,40
,Aggregated,2249,2,2,2.9,0,40,1800,749.8,0.6,2,3,3,4,4,5,8,11,25,40,40
"""
)


def stats(requests: int = 1000, failures: int = 0, p95: float = 50.0, rps: float = 10.0) -> RunStats:
    return RunStats("Aggregated", requests, failures, rps, p95 / 2, p95, p95 * 1.5, p95 * 2, p95 / 2)


def test_judge_passes_within_objective() -> None:
    verdict = judge(stats(p95=99, failures=1), Objective(p95_ms=100, max_error_rate=0.001))
    assert verdict.passed and verdict.reasons == ()
    assert verdict.line().startswith("PASS")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"p95": 100.0}, "p95 100 ms is not below 100 ms"),
        ({"failures": 2}, "error rate 0.200% is above 0.1%"),
        ({"requests": 0}, "no requests completed"),
        ({"rps": 9.0}, "achieved 9.0 req/s of 10 offered"),
    ],
)
def test_judge_names_each_miss(kwargs: dict[str, float], reason: str) -> None:
    verdict = judge(stats(**kwargs), Objective(p95_ms=100, max_error_rate=0.001), target_rate=10.0)  # type: ignore[arg-type]
    assert not verdict.passed
    assert verdict.reasons == (reason,)
    assert verdict.line().startswith("MISS") and reason in verdict.line()


def test_read_stats_parses_locust_csv(tmp_path: Path) -> None:
    path = tmp_path / "locust_stats.csv"
    path.write_text(LOCUST_CSV)
    rows = read_stats(path)
    assert set(rows) == {"embed_text", "rerank50", "Aggregated"}
    total = rows["Aggregated"]
    assert (total.requests, total.failures, total.p95_ms, total.p99_ms, total.rps) == (
        2249,
        2,
        5.0,
        11.0,
        749.8,
    )
    assert math.isclose(rows["rerank50"].error_rate, 2 / 305)


def test_read_stats_rejects_other_csv(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text(LOCUST_CSV.replace("Aggregated", "Total"))
    with pytest.raises(ValueError, match="no 'Aggregated' row"):
        read_stats(path)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)) == (50.0, 95.0, 99.0)
    assert math.isnan(percentile([], 0.95))


def capacity(limit: float) -> tuple[Callable[[float], Verdict], list[float]]:
    """A stand-in stack that meets the objective up to ``limit`` req/s, recording each rate asked."""
    asked: list[float] = []

    def measure(rate: float) -> Verdict:
        asked.append(rate)
        return judge(stats(p95=50 if rate <= limit else 150, rps=rate), Objective(), rate)

    return measure, asked


def test_step_search_brackets_the_limit_then_bisects() -> None:
    measure, asked = capacity(13.0)
    outcome = search(StepPlan(start_rate=2, factor=2, max_rate=100, max_steps=8, refine=2), measure)
    assert asked[:4] == [2, 4, 8, 16]  # 16 misses: the edge is between 8 and 16
    assert asked[4:] == [12.0, 14.0]  # bisection: 12 passes, 14 misses
    assert (outcome.best_rate, outcome.first_miss) == (12.0, 14.0)
    assert [v.passed for _, v in outcome.steps] == [True, True, True, False, True, False]


def test_step_search_is_bounded_and_reports_when_nothing_missed() -> None:
    measure, asked = capacity(1e9)
    outcome = search(StepPlan(start_rate=1, factor=3, max_rate=20, max_steps=8), measure)
    assert asked == [1, 3, 9]  # 27 exceeds max_rate
    assert (outcome.best_rate, outcome.first_miss) == (9, None)
    measure, asked = capacity(1e9)
    search(StepPlan(start_rate=1, factor=1.1, max_rate=1e6, max_steps=5), measure)
    assert len(asked) == 5


def test_step_search_when_the_first_rate_misses() -> None:
    measure, asked = capacity(0.5)
    outcome = search(StepPlan(start_rate=2), measure)
    assert asked == [2] and outcome.best_rate is None and outcome.first_miss == 2


def test_step_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        StepPlan(start_rate=2, factor=1.0)


def test_users_for_rate_keeps_intervals_above_latency() -> None:
    assert users_for(20, 0.5) == 10 and users_for(0.3, 0.5) == 1 and users_for(7, 0.5) == 4


def test_mix_parsing() -> None:
    assert parse_mix("text=3, image=1,hybrid", SCENARIOS[LoadTarget.GATEWAY]) == {
        "text": 3,
        "image": 1,
        "hybrid": 1,
    }
    assert parse_mix("text=0,image=2", SCENARIOS[LoadTarget.GATEWAY]) == {"image": 2}
    for target in LoadTarget:
        assert set(mix_for(target, "")) == set(SCENARIOS[target])  # the default mix covers every scenario
        assert mix_for(target, "") == parse_mix(DEFAULT_MIX[target], SCENARIOS[target])
    with pytest.raises(ValueError, match="unknown scenario 'embed_text'"):
        mix_for(LoadTarget.GATEWAY, "embed_text=1")
    with pytest.raises(ValueError, match="not an integer"):
        parse_mix("text=x", SCENARIOS[LoadTarget.GATEWAY])
    with pytest.raises(ValueError, match="selects no scenario"):
        parse_mix("text=0", SCENARIOS[LoadTarget.GATEWAY])
