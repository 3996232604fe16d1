"""Load tests against the real stack: Triton direct, the gateway, and Prometheus reading the dashboard.

Each run goes through ``python -m loadtest`` in a child process, exactly as an operator runs it, and is
judged from the CSV it writes. Durations are a few seconds: these check behaviour, not capacity.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from loadtest.config import LoadTarget
from loadtest.objective import AGGREGATED, read_stats
from loadtest.observability import GATEWAY_JOB, INDEX_JOB, TRITON_JOB, render_prometheus_config
from loadtest.observability.dashboard import DashboardQuery
from loadtest.observability.prometheus import QueryCheck, check_dashboard, targets_up
from loadtest.scenarios import SCENARIOS
from operations.servers import PrometheusServer
from tests.fixtures.stack import gateway_config_for, start_gateway, stop_gateway
from vitrine.contracts import Model

pytestmark = pytest.mark.slow
LOOSE = ("--p95-ms", "60000", "--max-error-rate", "0")
"""An objective any working stack meets on a busy 2-core machine: these tests are about behaviour."""


def loadtest(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loadtest", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


async def loadtest_async(*args: str, timeout_s: float = 240) -> tuple[int, str]:
    """For a gateway served by this test's event loop: the loop must keep running while Locust calls it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode()


def test_triton_run_reports_every_scenario(triton: Any, small_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = loadtest(
        "run", "--target", "triton", "--triton", triton.grpc_url, "--users", "2", "--spawn-rate", "2",
        "--duration-s", "5", "--catalog", str(small_catalog), "--out", str(out),
        "--triton-metrics", triton.metrics_url, *LOOSE,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("PASS: ")
    rows = read_stats(out / "locust_stats.csv")
    for name in SCENARIOS[LoadTarget.TRITON]:
        assert rows[name].requests > 0 and rows[name].failures == 0, (name, rows[name])
    assert rows[AGGREGATED].requests == sum(rows[n].requests for n in SCENARIOS[LoadTarget.TRITON])
    assert "embed_text" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"]["passed"] is True and summary["hardware"]["cpus"] >= 1
    # Triton's own counters over the run: every ensemble and its encoder served the load.
    inside = summary["triton"]
    for model in (
        Model.EMBED_TEXT,
        Model.CLIP_TEXT_ENCODER,
        Model.EMBED_IMAGE,
        Model.RERANK,
        Model.CROSS_ENCODER,
    ):
        assert inside[model.value]["requests"] > 0, (model, inside)
    encoder = inside[Model.CLIP_TEXT_ENCODER.value]
    assert encoder["batch"] >= 1 and 0 < encoder["compute_ms"] <= encoder["request_ms"]
    assert inside[Model.EMBED_TEXT.value]["requests"] >= rows["embed_text"].requests
    assert "triton model" in done.stdout


def test_step_load_paces_the_rate_and_finds_the_edge(
    triton: Any, small_catalog: Path, tmp_path: Path
) -> None:
    out = tmp_path / "step"
    done = loadtest(
        "step", "--target", "triton", "--triton", triton.grpc_url, "--mix", "embed_text=1",
        "--start-rate", "4", "--factor", "2", "--max-rate", "8", "--duration-s", "4",
        "--catalog", str(small_catalog), "--out", str(out), *LOOSE,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "step_summary.json").read_text())
    assert [s["rate"] for s in summary["steps"]] == [4, 8]
    assert summary["best_rate"] == 8 and summary["first_miss"] is None
    for step in summary["steps"]:
        # Paced, not flat out: about rate x duration requests (ramp jitter aside), far below what
        # unpaced users would send to tiny models.
        requests = step["verdict"]["stats"]["requests"]
        assert 0.6 * step["rate"] * 4 <= requests <= 1.25 * step["rate"] * 4, step
    assert "highest rate meeting the objective: 8 req/s" in done.stdout

    missed = loadtest(
        "step", "--target", "triton", "--triton", triton.grpc_url, "--mix", "embed_text=1",
        "--start-rate", "4", "--duration-s", "3", "--p95-ms", "0.001",
        "--catalog", str(small_catalog), "--out", str(tmp_path / "miss"),
    )  # fmt: skip
    assert missed.returncode == 1, missed.stdout + missed.stderr
    assert "no rate met the objective" in missed.stdout
    assert "p95" in missed.stdout and "is not below 0.001 ms" in missed.stdout


def test_bad_mix_and_unreachable_target_fail_cleanly(tmp_path: Path) -> None:
    bad = loadtest("run", "--target", "triton", "--mix", "search=1", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown scenario 'search'" in bad.stderr
    # Nothing listens on port 1: the run ends on time with a MISS, it does not hang.
    started = time.monotonic()
    down = loadtest(
        "run", "--target", "triton", "--triton", "127.0.0.1:1", "--users", "1", "--duration-s", "2",
        "--catalog-size", "12", "--out", str(tmp_path / "down"),
    )  # fmt: skip
    assert down.returncode == 1, down.stdout + down.stderr
    assert "no requests completed" in down.stdout
    assert time.monotonic() - started < 60


async def test_gateway_load_fills_every_dashboard_query(
    gateway_triton: Any, small_catalog: Path, tmp_path: Path
) -> None:
    """Gateway traffic of every scenario, a real Prometheus scraping all three services, every panel fed."""
    from operations.servers import index_server

    index = index_server(tmp_path / "index", threads=2, metrics_port=0)
    index.start()
    handle = None
    try:
        handle = await start_gateway(
            gateway_config_for(gateway_triton.grpc_url, index.address, metrics_port=0), small_catalog
        )
        assert handle.gateway.metrics_port and index.metrics_port
        service_metrics = [f"127.0.0.1:{handle.gateway.metrics_port}", f"127.0.0.1:{index.metrics_port}"]
        # The CPU and memory panels read the services' own process collectors.
        assert all(map(exports_process_metrics, service_metrics))
        triton_metrics = urlparse(gateway_triton.metrics_url).netloc
        config = render_prometheus_config(
            triton_metrics,
            f"127.0.0.1:{handle.gateway.metrics_port}",
            f"127.0.0.1:{index.metrics_port}",
            scrape_interval="1s",
        )
        with PrometheusServer(config, tmp_path / "prometheus") as prometheus:
            out = tmp_path / "gateway-run"
            # Prometheus is read while the load runs: Triton's latency summaries and any rate() need
            # recent traffic, and a quiet stack legitimately shows none.
            args = (
                "run", "--target", "gateway", "--gateway", handle.address, "--users", "3",
                "--spawn-rate", "3", "--duration-s", "20", "--catalog", str(small_catalog),
                "--out", str(out), *LOOSE,
            )  # fmt: skip
            load = asyncio.create_task(loadtest_async(*args))
            checks: list[QueryCheck] = []
            missing: list[DashboardQuery] = []
            up: dict[str, bool] = {}
            while not load.done():
                up = await asyncio.to_thread(targets_up, prometheus.url)
                checks = await asyncio.to_thread(check_dashboard, prometheus.url, "5m")
                missing = [c.query for c in checks if not c.query.requires and not c.has_data]
                if not missing and up == {TRITON_JOB: True, GATEWAY_JOB: True, INDEX_JOB: True}:
                    break
                await asyncio.sleep(0.5)  # the next scrape, for as long as the load lasts (bounded)
            code, text = await load
            assert code == 0, text
            assert up == {TRITON_JOB: True, GATEWAY_JOB: True, INDEX_JOB: True}, up
            assert not missing, "dashboard queries without data: " + "; ".join(
                f"{q.panel} [{q.ref_id}]: {q.expr}" for q in missing
            )
            # GPU panels: this CPU host exports no GPU metrics, so they must be empty, and they are
            # the only ones allowed to be.
            gpu = [c for c in checks if c.query.requires == "gpu"]
            assert gpu and all(c.series == 0 for c in gpu), [(c.query.panel, c.series) for c in gpu]

            rows = read_stats(out / "locust_stats.csv")
            for name in SCENARIOS[LoadTarget.GATEWAY]:
                assert rows[name].requests > 0 and rows[name].failures == 0, (name, rows[name])
            stages = json.loads((out / "stages.json").read_text())
            # The default text match embeds the query with MiniLM and reads the lexical space.
            want = {"embed_minilm", "lexical", "embed_image", "retrieve", "rerank", "total"}
            assert want <= set(stages), stages
            assert all(s["count"] > 0 and s["p95_ms"] >= s["p50_ms"] > 0 for s in stages.values())
    finally:
        if handle is not None:
            await stop_gateway(handle)
        index.stop()


def exports_process_metrics(address: str) -> bool:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


async def test_services_export_process_metrics(
    gateway_triton: Any, small_catalog: Path, tmp_path: Path
) -> None:
    from operations.servers import index_server

    with index_server(tmp_path / "index", metrics_port=0) as index:
        handle = await start_gateway(
            gateway_config_for(gateway_triton.grpc_url, index.address, metrics_port=0)
        )
        try:
            assert exports_process_metrics(f"127.0.0.1:{handle.gateway.metrics_port}"), "gateway"
            assert exports_process_metrics(f"127.0.0.1:{index.metrics_port}"), "index service"
        finally:
            await stop_gateway(handle)


async def test_gateway_failures_are_counted_by_status(
    gateway_stack: Any, small_catalog: Path, tmp_path: Path
) -> None:
    """top_k 1000 is out of range: every call fails with INVALID_ARGUMENT, and the verdict says so."""
    out = tmp_path / "bad-run"
    code, text = await loadtest_async(
        "run", "--target", "gateway", "--gateway", gateway_stack.address, "--mix", "text=1",
        "--top-k", "1000", "--users", "1", "--duration-s", "2", "--catalog", str(small_catalog),
        "--out", str(out),
    )  # fmt: skip
    assert code == 1, text
    assert "MISS" in text and "error rate 100.000% is above 0.1%" in text
    failures = (out / "locust_failures.csv").read_text()
    assert "INVALID_ARGUMENT" in failures and "text" in failures


async def test_objective_command_writes_the_report(
    gateway_stack: Any, gateway_triton: Any, small_catalog: Path, tmp_path: Path
) -> None:
    """The documented measurement end to end, at toy durations: step, re-rank runs, markdown with stages."""
    out = tmp_path / "objective"
    code, text = await loadtest_async(
        "objective", "--gateway", gateway_stack.address, "--catalog", str(small_catalog), "--out", str(out),
        "--warmup-s", "2", "--start-rate", "2", "--max-steps", "1", "--duration-s", "3",
        "--rerank-rates", "1", "--rerank-duration-s", "3", "--weights", "random (tiny)",
        "--triton-metrics", gateway_triton.metrics_url, *LOOSE,
    )  # fmt: skip
    assert code == 0, text
    report = (out / "objective.md").read_text()
    assert "highest paced rate meeting the objective: **2 req/s**" in report
    assert "weights: random (tiny)" in report
    rows = [
        line for line in report.splitlines() if line.startswith("| 10 | 1 |") or line.startswith("| 50 | 1 |")
    ]
    assert len(rows) == 2 and all("rerank" in row and "embed_minilm" in row for row in rows), report
    result = json.loads((out / "objective.json").read_text())
    assert [r["depth"] for r in result["rerank"]] == [10, 50]
    assert "Inside Triton" in report and f"| re-rank 50 at 1 req/s | {Model.CROSS_ENCODER.value} |" in report
    assert all(r["verdict"]["stats"]["requests"] > 0 for r in result["rerank"])


async def test_open_loop_objective_writes_the_same_tables(
    gateway_stack: Any, gateway_triton: Any, small_catalog: Path, tmp_path: Path
) -> None:
    """The objective with Poisson arrivals, at toy durations: the text step, re-rank 10 and 50 at a fixed
    rate through the real cross-encoder, the gateway's stages and Triton's counters per run."""
    out = tmp_path / "objective-openloop"
    code, text = await loadtest_async(
        "openloop-objective", "--gateway", gateway_stack.address, "--catalog", str(small_catalog),
        "--out", str(out), "--warmup-s", "1", "--rate", "2", "--max-steps", "1", "--duration-s", "3",
        "--rerank-rates", "1", "--rerank-duration-s", "3", "--weights", "random (tiny)",
        "--triton-metrics", gateway_triton.metrics_url, *LOOSE,
    )  # fmt: skip
    assert code == 0, text
    report = (out / "objective.md").read_text()
    assert "Highest offered rate meeting the objective: **2 req/s**" in report
    assert "open loop, poisson arrivals" in report and "weights: random (tiny)" in report
    rows = [line for line in report.splitlines() if line.startswith(("| 10 | ", "| 50 | "))]
    assert len(rows) == 2 and all("rerank" in row and "embed_minilm" in row for row in rows), report
    result = json.loads((out / "objective.json").read_text())
    assert [(r["depth"], r["rate"]) for r in result["rerank"]] == [(10, 1.0), (50, 1.0)]
    assert all(
        r["verdict"]["stats"]["requests"] > 0 and r["cpu"]["generator_share"] < 1 for r in result["rerank"]
    )
    assert f"| re-rank 50 at 1 req/s | {Model.CROSS_ENCODER.value} |" in report
    cross = result["rerank"][1]["triton"][Model.CROSS_ENCODER.value]
    assert cross["requests"] >= result["rerank"][1]["verdict"]["stats"]["requests"]
