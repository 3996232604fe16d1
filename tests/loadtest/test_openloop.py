"""The open-loop generator, the gateway's server-side quantiles and the generator's CPU accounting.

Latency must run from each request's scheduled send time: a server that serves one request at a time
makes every later request wait, and that wait must be in the figures (a closed-loop client would report
the service time alone). Runs are bounded by their schedule and deadlines, never by a wall-clock guess.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from loadtest import openloop, server_metrics
from loadtest.accounting import CpuMeter, CpuUse
from loadtest.data import QueryData
from tests.fixtures.stack import gateway_config_for, start_gateway, stop_gateway
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

SERVICE_S = 0.2
"""What the one-at-a-time test server spends on each search."""


def test_schedules_are_fixed_before_the_run() -> None:
    uniform = openloop.schedule(10, 2.0, "uniform", random.Random(0))
    assert uniform == [i / 10 for i in range(20)]
    poisson = openloop.schedule(50, 20.0, "poisson", random.Random(0))
    assert poisson == sorted(poisson) and poisson[0] > 0 and poisson[-1] < 20.0
    assert 900 <= len(poisson) <= 1100  # 1000 expected; +-3 sigma is +-95
    assert poisson == openloop.schedule(50, 20.0, "poisson", random.Random(0))
    with pytest.raises(ValueError, match="arrival must be one of"):
        openloop.schedule(10, 1.0, "bursty", random.Random(0))
    with pytest.raises(ValueError, match="rate > 0"):
        openloop.schedule(0, 1.0, "uniform", random.Random(0))


def test_histogram_quantiles_from_bucket_deltas() -> None:
    metrics = """# TYPE vitrine_gateway_request_seconds histogram
vitrine_gateway_request_seconds_bucket{le="0.01",method="Search"} %d
vitrine_gateway_request_seconds_bucket{le="0.02",method="Search"} %d
vitrine_gateway_request_seconds_bucket{le="0.05",method="Search"} %d
vitrine_gateway_request_seconds_bucket{le="+Inf",method="Search"} %d
vitrine_gateway_request_seconds_count{method="Search"} %d
vitrine_gateway_request_seconds_sum{method="Search"} 1.0
"""
    before = server_metrics.parse(metrics % (5, 5, 5, 5, 5))
    # Over the interval: 50 requests under 10 ms, 40 in (10, 20], 10 in (20, 50].
    after = server_metrics.parse(metrics % (55, 95, 105, 105, 105))
    q = server_metrics.quantiles(before, after)["method:Search"]
    assert q["count"] == 100
    assert q["p50_ms"] == pytest.approx(10.0)
    assert q["p95_ms"] == pytest.approx(20 + 30 * 0.5)
    assert q["p99_ms"] == pytest.approx(20 + 30 * 0.9)
    assert math.isnan(server_metrics.quantile({}, 0.5))
    assert server_metrics.quantile({0.01: 0, math.inf: 4}, 0.5) == 0.01  # beyond the last finite bound


def test_cpu_use_flags_a_greedy_generator() -> None:
    calm = CpuUse(wall_s=10, cores=2, generator_cpu_s=1.0, machine_busy_s=8.0, max_share=0.25)
    assert calm.generator_share == pytest.approx(0.05) and not calm.flagged
    assert calm.machine_share == pytest.approx(0.4)
    greedy = CpuUse(wall_s=10, cores=2, generator_cpu_s=6.0, machine_busy_s=18.0, max_share=0.25)
    assert greedy.flagged and "ABOVE the 25% limit" in greedy.line()
    assert greedy.to_json()["flagged"] is True


def test_cpu_meter_counts_this_process() -> None:
    meter = CpuMeter(interval_s=0.05).start()
    total = 0
    for i in range(2_000_000):  # burn some CPU in this process
        total += i * i
    meter.stop()
    use = meter.window()
    assert total > 0 and use.generator_cpu_s > 0 and use.wall_s > 0
    assert use.machine_busy_s >= 0 and len(meter.samples) >= 2


class _OneAtATime(pb_grpc.ProductSearchServicer):
    """Serves searches strictly one after another, ``SERVICE_S`` each; ``hang`` never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.lock = asyncio.Lock()
        self.hang = hang
        self.served = 0

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        if self.hang:
            await asyncio.Event().wait()
        async with self.lock:
            await asyncio.sleep(SERVICE_S)
            self.served += 1
        return pb.SearchResponse(timings=[pb.StageTiming(stage="total", ms=1000 * SERVICE_S)])


@pytest_asyncio.fixture
async def fake_gateway() -> AsyncIterator[tuple[str, _OneAtATime, _OneAtATime]]:
    """Two servers: one serving one request at a time, one that never answers."""
    servicers = (_OneAtATime(), _OneAtATime(hang=True))
    servers, addresses = [], []
    for servicer in servicers:
        server = grpc.aio.server()
        pb_grpc.add_ProductSearchServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    yield f"{addresses[0]}|{addresses[1]}", *servicers
    for server in servers:
        await server.stop(0)


@pytest.fixture(scope="module")
def data() -> QueryData:
    return QueryData.generated(size=24, seed=3, max_images=2)


async def test_latency_runs_from_the_schedule(fake_gateway: Any, data: QueryData) -> None:
    addresses, slow, _ = fake_gateway
    rate = 10.0
    result = await asyncio.wait_for(
        openloop.run(addresses.split("|")[0], data, {"text": 1}, rate, 1.0, arrival="uniform", timeout_s=10),
        timeout=60,
    )
    assert result.scheduled == 10 and slow.served == 10
    assert [o.code for o in result.outcomes] == ["OK"] * 10
    by_due = sorted(result.outcomes, key=lambda o: o.due_s)
    assert [round(o.due_s, 6) for o in by_due] == [round(i / rate, 6) for i in range(10)]
    # The i-th request cannot finish before (i + 1) service times after the start, and was due at i/rate:
    # its wait in the server's line is part of its latency.
    for i, outcome in enumerate(by_due):
        assert outcome.sent_s >= outcome.due_s
        assert outcome.latency_ms >= 1000 * ((i + 1) * SERVICE_S - i / rate) - 1.0, (i, outcome)
    stats = result.stats()
    assert stats.requests == 10 and stats.failures == 0
    assert stats.max_ms >= 1000 * (10 * SERVICE_S - 9 / rate) - 1.0  # 5.5 service times, not one
    assert result.stages()["total"]["count"] == 10


async def test_a_server_that_never_answers_ends_the_run_at_the_deadlines(
    fake_gateway: Any, data: QueryData
) -> None:
    addresses, _, hung = fake_gateway
    result = await asyncio.wait_for(
        openloop.run(addresses.split("|")[1], data, {"text": 1}, 4.0, 1.0, arrival="uniform", timeout_s=0.5),
        timeout=60,
    )
    assert result.scheduled == 4 and hung.served == 0
    assert result.errors() == {"DEADLINE_EXCEEDED": 4}
    verdict = result.verdict(openloop.Objective(p95_ms=100, max_error_rate=0.001))
    assert not verdict.passed and verdict.stats.failures == 4


async def test_open_loop_against_the_live_gateway(
    gateway_triton: Any, index_server: Any, small_catalog: Path, tmp_path: Path
) -> None:
    handle = await start_gateway(
        gateway_config_for(gateway_triton.grpc_url, index_server.address, metrics_port=0), small_catalog
    )
    try:
        metrics_url = f"http://127.0.0.1:{handle.gateway.metrics_port}/metrics"
        before = await asyncio.to_thread(server_metrics.snapshot, metrics_url)
        query_data = QueryData.from_catalog(small_catalog)
        result = await asyncio.wait_for(
            openloop.run(  # three connections in turn, as several clients would
                handle.address,
                query_data,
                {"text": 3, "similar": 1},
                6.0,
                2.0,
                arrival="poisson",
                seed=5,
                channels=3,
            ),
            timeout=120,
        )
        after = await asyncio.to_thread(server_metrics.snapshot, metrics_url)
    finally:
        await stop_gateway(handle)
    assert result.scheduled == len(openloop.schedule(6.0, 2.0, "poisson", random.Random(5)))
    assert result.scheduled > 0 and result.errors() == {}
    scenarios = {o.scenario for o in result.outcomes}
    assert scenarios <= {"text", "similar"}
    searches = sum(o.scenario == "text" for o in result.outcomes)
    seen = server_metrics.quantiles(before, after)
    # The gateway counted exactly the searches sent; its own latency cannot exceed what the client saw.
    assert seen["method:Search"]["count"] == searches
    if searches:
        assert {"embed_minilm", "lexical", "retrieve", "total"} <= set(result.stages())
    record = result.to_json(openloop.Objective(p95_ms=60_000, max_error_rate=0))
    assert record["verdict"]["stats"]["failures"] == 0 and record["cpu"]["generator_cpu_s"] > 0
    assert record["offered_rate"] == result.scheduled / 2.0
    json.dumps(record)  # the report is plain JSON


async def test_compare_runs_both_generators_on_the_same_step(
    gateway_triton: Any, index_server: Any, small_catalog: Path, tmp_path: Path
) -> None:
    """``python -m loadtest compare``: Locust (its CPU from its whole process tree) beside the open loop."""
    from tests.loadtest.test_live import loadtest_async

    handle = await start_gateway(
        gateway_config_for(gateway_triton.grpc_url, index_server.address, metrics_port=0), small_catalog
    )
    out = tmp_path / "compare"
    try:
        code, text = await loadtest_async(
            "compare", "--gateway", handle.address, "--rates", "4", "--duration-s", "3",
            "--catalog", str(small_catalog), "--out", str(out), "--p95-ms", "60000", "--max-error-rate", "0",
            "--gateway-metrics", f"http://127.0.0.1:{handle.gateway.metrics_port}/metrics",
        )  # fmt: skip
    finally:
        await stop_gateway(handle)
    assert code == 0, text
    report = json.loads((out / "compare.json").read_text())
    (row,) = report["rows"]
    assert row["rate"] == 4 and row["users"] == 2
    for name in ("locust", "openloop"):
        run = row[name]
        assert run["verdict"]["stats"]["requests"] > 0 and run["verdict"]["stats"]["failures"] == 0, name
        assert run["cpu"]["generator_cpu_s"] > 0 and run["cpu"]["cores"] >= 1, name
        assert len(run["cpu"]["load_before"]) == 3, name
        assert run["server"]["method:Search"]["count"] > 0, name
    table = (out / "compare.md").read_text()
    assert "| 4 | locust |" in table and "| 4 | openloop |" in table and "generator CPU" in table
    summary = json.loads((out / "locust-4" / "summary.json").read_text())
    assert summary["generator"] == "locust" and summary["cpu"]["wall_s"] > 0


async def test_step_mode_finds_the_edge_of_a_one_at_a_time_server(fake_gateway: Any, tmp_path: Path) -> None:
    """``python -m loadtest openloop --step``: 2 req/s fits a 5-per-second server, 20 req/s cannot."""
    from tests.loadtest.test_live import loadtest_async

    addresses, slow, _ = fake_gateway
    out = tmp_path / "openloop"
    code, text = await loadtest_async(
        "openloop", "--step", "--gateway", addresses.split("|")[0], "--rate", "2", "--factor", "10",
        "--max-rate", "20", "--refine", "0", "--duration-s", "1.5", "--arrival", "uniform",
        "--p95-ms", "1000", "--catalog-size", "12", "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    summary = json.loads((out / "step_summary.json").read_text())
    assert summary["best_rate"] == 2 and summary["first_miss"] == 20
    assert [s["scheduled"] for s in summary["steps"]] == [3, 30] and slow.served == 33
    report = (out / "openloop.md").read_text()
    assert "Highest offered rate meeting the objective: **2 req/s**" in report
    assert "| 20.0 |" in report and "miss" in report
