"""The dashboard and scrape configuration as files: generated, importable, every query valid PromQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from loadtest.observability import (
    DASHBOARD_FILE,
    GATEWAY_JOB,
    INDEX_JOB,
    PROMETHEUS_FILE,
    TRITON_JOB,
    dashboard,
    render_prometheus_config,
)
from loadtest.observability.prometheus import PrometheusError, find_binary


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        tool = find_binary().resolve().with_name("promtool")
    except PrometheusError as exc:
        pytest.fail(str(exc))  # `make test` installs it: missing is a broken setup, not a reason to skip
    assert tool.is_file(), f"promtool missing beside {find_binary()}"
    return tool


def test_committed_dashboard_is_the_generated_one() -> None:
    assert DASHBOARD_FILE.read_text() == dashboard.render(), (
        "the dashboard JSON drifted from loadtest/observability/dashboard.py: "
        "run `python -m loadtest.observability dashboard`"
    )


def test_dashboard_is_importable_grafana_json() -> None:
    board = json.loads(DASHBOARD_FILE.read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_has_the_panels_operators_need() -> None:
    board = json.loads(DASHBOARD_FILE.read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in board["panels"]}
    needs = {
        "Request rate per model": "nv_inference_request_success",
        "Failures by reason per model": "reason",
        "Average batch size": "nv_inference_exec_count",
        "Queue vs compute time per request (mean)": "nv_inference_compute_infer_duration_us",
        "Gateway per-stage latency (p50/p95/p99)": "vitrine_gateway_stage_seconds_bucket",
        "Index QPS by method": "vitrine_index_requests_total",
        "Index latency by method (p50/p95/p99)": "vitrine_index_request_seconds_bucket",
        "CPU utilisation": "process_cpu_seconds_total",
        "Memory": "process_resident_memory_bytes",
        "GPU utilisation": "nv_gpu_utilization",
        "GPU memory": "nv_gpu_memory_used_bytes",
    }
    for title, metric in needs.items():
        assert metric in exprs.get(title, ""), f"panel {title!r} should query {metric}"
    stage = exprs["Gateway per-stage latency (p50/p95/p99)"]
    assert all(f"histogram_quantile({q}," in stage for q in ("0.5", "0.95", "0.99"))
    gpu_only = {p["title"] for p in board["panels"] if p.get("vitrine", {}).get("requires") == "gpu"}
    assert gpu_only == {"GPU utilisation", "GPU memory"}


def test_every_dashboard_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule: a typo fails here, not on a blank panel."""
    board = json.loads(DASHBOARD_FILE.read_text())
    items = dashboard.queries(board)
    assert len(items) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"vitrine:dashboard_check_{i}", "expr": dashboard.promql(q.expr, "1m")}
                    for i, q in enumerate(items)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(items)} rules found" in done.stdout


def test_prometheus_config_is_valid_and_names_every_job(promtool: Path, tmp_path: Path) -> None:
    committed = PROMETHEUS_FILE.read_text()
    assert committed == render_prometheus_config("127.0.0.1:8002", "127.0.0.1:9101", "127.0.0.1:9102")
    for job in (TRITON_JOB, GATEWAY_JOB, INDEX_JOB):
        assert f"job_name: {job}\n" in committed
    path = tmp_path / "prometheus.yml"
    path.write_text(committed)
    done = subprocess.run([str(promtool), "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
