"""The Grafana dashboard, built in code so every query has one definition and the JSON cannot drift.

Queries use ``$__rate_interval`` and the ``${DS_PROMETHEUS}`` datasource variable, so the file imports into
any Grafana with a Prometheus datasource. Panels that only a GPU host can fill say so in ``requires``
(kept in the panel JSON under ``vitrine``), and the live test expects them empty on a CPU host rather than
skipping them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loadtest.observability import GATEWAY_JOB, INDEX_JOB, TRITON_JOB

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE = "$__rate_interval"
SCHEMA_VERSION = 39
UID = "vitrine-serving"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    requires: str = ""
    """"gpu" when only a GPU host produces the series."""
    width: int = 12
    extra: dict[str, Any] = field(default_factory=dict)


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]))"


def _quantiles(metric: str, by: str, scale: str = " * 1000") -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}]))){scale}",
            f"{{{{{by}}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


_COMPUTE = " + ".join(
    _rate(f"nv_inference_compute_{part}_duration_us", "model") for part in ("input", "infer", "output")
)
_SERVICES = f'job=~"{GATEWAY_JOB}|{INDEX_JOB}"'

ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Triton models",
        (
            Panel(
                "Request rate per model",
                "Successful inference requests per second, per model (ensembles and their steps).",
                "reqps",
                (Query(_rate("nv_inference_request_success", "model"), "{{model}}"),),
            ),
            Panel(
                "Failures by reason per model",
                "Failed requests per second by Triton's reason label (REJECTED: queue full or timed out, "
                "BACKEND, CANCELED, OTHER). Requests refused at Triton's front door never appear here; "
                "the gateway's status-code panel counts those.",
                "reqps",
                (Query(_rate("nv_inference_request_failure", "model, reason"), "{{model}} {{reason}}"),),
            ),
            Panel(
                "Average batch size",
                "Inferences over executions: how much dynamic batching merges. Models that never execute "
                "themselves (ensembles) are left out.",
                "none",
                (
                    Query(
                        f"{_rate('nv_inference_count', 'model')} / "
                        f"({_rate('nv_inference_exec_count', 'model')} > 0)",
                        "{{model}}",
                    ),
                ),
            ),
            Panel(
                "Queue vs compute time per request (mean)",
                "Time waiting in the scheduler queue against time computing (input + infer + output), per "
                "successful request. Queue time growing faster than compute means the model is saturated.",
                "ms",
                (
                    Query(
                        f"{_rate('nv_inference_queue_duration_us', 'model')} / "
                        f"({_rate('nv_inference_request_success', 'model')} > 0) / 1000",
                        "{{model}} queue",
                    ),
                    Query(
                        f"({_COMPUTE}) / ({_rate('nv_inference_request_success', 'model')} > 0) / 1000",
                        "{{model}} compute",
                    ),
                ),
            ),
            Panel(
                "Queue and compute time p99 (Triton summaries)",
                "Triton's latency summaries (started with summary_latencies=true): p99 over its window.",
                "ms",
                (
                    Query(
                        'max by (model) (nv_inference_queue_summary_us{quantile="0.99"}) / 1000',
                        "{{model}} queue",
                    ),
                    Query(
                        'max by (model) (nv_inference_compute_infer_summary_us{quantile="0.99"}) / 1000',
                        "{{model}} compute",
                    ),
                ),
            ),
            Panel(
                "Pending requests",
                "Requests queued inside Triton, per model.",
                "short",
                (Query("sum by (model) (nv_inference_pending_request_count)", "{{model}}"),),
            ),
        ),
    ),
    (
        "Gateway",
        (
            Panel(
                "Gateway requests by method and status",
                "Calls per second by gRPC status code: failures by reason as clients see them, including "
                "requests refused before reaching Triton or the index.",
                "reqps",
                (Query(_rate("vitrine_gateway_requests_total", "method, code"), "{{method}} {{code}}"),),
            ),
            Panel(
                "Gateway latency by method (p50/p95/p99)",
                "End-to-end latency of each RPC inside the gateway.",
                "ms",
                _quantiles("vitrine_gateway_request_seconds", "method"),
            ),
            Panel(
                "Gateway per-stage latency (p50/p95/p99)",
                "embed_text, embed_image, retrieve, rerank and total: which stage dominates a search.",
                "ms",
                _quantiles("vitrine_gateway_stage_seconds", "stage"),
                width=24,
            ),
            Panel(
                "Gateway in flight and dependencies",
                "Requests being served, and 1/0 per dependency from the gateway's health probe.",
                "short",
                (
                    Query("sum(vitrine_gateway_in_flight)", "in flight"),
                    Query("max by (dependency) (vitrine_gateway_dependency_up)", "{{dependency}} up"),
                ),
                width=24,
            ),
        ),
    ),
    (
        "Index service",
        (
            Panel(
                "Index QPS by method",
                "Index service calls per second, by method and status code.",
                "reqps",
                (Query(_rate("vitrine_index_requests_total", "method, code"), "{{method}} {{code}}"),),
            ),
            Panel(
                "Index latency by method (p50/p95/p99)",
                "Server-side latency of index calls.",
                "ms",
                _quantiles("vitrine_index_request_seconds", "method"),
            ),
            Panel(
                "Index queries per FAISS call",
                "Mean queries per search after coalescing concurrent requests.",
                "none",
                (
                    Query(
                        f"sum(rate(vitrine_index_search_batch_queries_sum[{RATE}])) / "
                        f"(sum(rate(vitrine_index_search_batch_queries_count[{RATE}])) > 0)",
                        "queries per call",
                    ),
                ),
            ),
            Panel(
                "Index vectors per collection",
                "Live items per collection.",
                "short",
                (Query("sum by (collection) (vitrine_index_vectors)", "{{collection}}"),),
            ),
        ),
    ),
    (
        "Recommendations",
        (
            Panel(
                "Events recorded per second",
                "Shopper events the gateway stored (RecordEvents and POST /v1/events), duplicates excluded.",
                "ops",
                (Query(f"sum(rate(vitrine_gateway_events_recorded_total[{RATE}]))", "events/s"),),
                requires="recommendations",
                width=8,
            ),
            Panel(
                "Recommend latency (p50/p95/p99)",
                "Whole Recommend (history read, user tower, candidates, re-rank) as the gateway timed it.",
                "ms",
                tuple(
                    Query(
                        f"histogram_quantile({q}, sum by (le) (rate(vitrine_gateway_stage_seconds_bucket"
                        f'{{stage="rec_total"}}[{RATE}]))) * 1000',
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
                requires="recommendations",
                width=8,
            ),
            Panel(
                "Cold-start share",
                "Share of Recommend answered without a personal history (trending or context neighbours).",
                "percentunit",
                (
                    Query(
                        f'sum(rate(vitrine_gateway_recommendations_total{{strategy!="personal"}}[{RATE}])) '
                        f"/ sum(rate(vitrine_gateway_recommendations_total[{RATE}]))",
                        "cold start",
                    ),
                ),
                requires="recommendations",
                width=8,
            ),
        ),
    ),
    (
        "Resources",
        (
            Panel(
                "CPU utilisation",
                "Cores used by the gateway and index processes, and Triton's host CPU utilisation (0-1).",
                "percentunit",
                (
                    Query(
                        f"sum by (job) (rate(process_cpu_seconds_total{{{_SERVICES}}}[{RATE}]))",
                        "{{job}} cores",
                    ),
                    Query(f'max(nv_cpu_utilization{{job="{TRITON_JOB}"}})', "host (Triton)"),
                ),
            ),
            Panel(
                "Memory",
                "Resident memory of the gateway and index processes; host memory in use seen by Triton.",
                "bytes",
                (
                    Query(f"sum by (job) (process_resident_memory_bytes{{{_SERVICES}}})", "{{job}} RSS"),
                    Query(f'max(nv_cpu_memory_used_bytes{{job="{TRITON_JOB}"}})', "host used (Triton)"),
                ),
            ),
            Panel(
                "GPU utilisation",
                "Per GPU, from Triton's GPU metrics. Empty on hosts without a GPU (the CPU default).",
                "percentunit",
                (Query("max by (gpu_uuid) (nv_gpu_utilization)", "{{gpu_uuid}}"),),
                requires="gpu",
            ),
            Panel(
                "GPU memory",
                "Per GPU, used against total. Empty on hosts without a GPU (the CPU default).",
                "bytes",
                (
                    Query("max by (gpu_uuid) (nv_gpu_memory_used_bytes)", "{{gpu_uuid}} used"),
                    Query("max by (gpu_uuid) (nv_gpu_memory_total_bytes)", "{{gpu_uuid}} total"),
                ),
                requires="gpu",
            ),
        ),
    ),
)


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": pid,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": {"lineWidth": 1}}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }
    if panel.requires:
        out["vitrine"] = {"requires": panel.requires}
    return out


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, pid, x, y))
            pid, x = pid + 1, x + panel.width
        y += 8
    return {
        "annotations": {"list": []},
        "description": "Vitrine serving: Triton models, gateway stages, index service, CPU/GPU resources.",
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["vitrine"],
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                }
            ]
        },
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": "Vitrine serving",
        "uid": UID,
        "version": 1,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


@dataclass(frozen=True)
class DashboardQuery:
    panel: str
    ref_id: str
    expr: str
    requires: str


def queries(dashboard: dict[str, Any]) -> list[DashboardQuery]:
    """Every PromQL expression of a dashboard JSON, with the panel it belongs to."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            requires = panel.get("vitrine", {}).get("requires", "")
            out.append(DashboardQuery(panel["title"], target["refId"], target["expr"], requires))
    return out


def promql(expr: str, rate_interval: str) -> str:
    """A dashboard expression as Prometheus itself takes it: Grafana's variables substituted."""
    return expr.replace(RATE, rate_interval)
