"""Observability for a running stack: Prometheus scrape configuration and the Grafana dashboard.

The dashboard JSON is generated from ``dashboard.py`` (``python -m loadtest.observability dashboard``) and
committed; a test checks the file equals the generator's output and, against a live stack and a real
Prometheus, that every query in it returns data.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DASHBOARD_FILE = HERE / "grafana" / "vitrine.json"
PROMETHEUS_FILE = HERE / "prometheus.yml"

TRITON_JOB = "triton"
GATEWAY_JOB = "vitrine-gateway"
INDEX_JOB = "vitrine-index"


def render_prometheus_config(
    triton: str, gateway: str, index: str, scrape_interval: str = "5s", metrics_path: str = "/metrics"
) -> str:
    """Scrape configuration for one stack; targets are ``host:port`` of each metrics endpoint."""
    jobs = ((TRITON_JOB, triton), (GATEWAY_JOB, gateway), (INDEX_JOB, index))
    lines = [
        "# Prometheus configuration for a Vitrine stack: Triton, the gateway and the index service.",
        "# Written by `python -m loadtest.observability prometheus-config` (flags name the endpoints).",
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  evaluation_interval: {scrape_interval}",
        "scrape_configs:",
    ]
    for job, target in jobs:
        lines += [
            f"  - job_name: {job}",
            f"    metrics_path: {metrics_path}",
            "    static_configs:",
            f"      - targets: ['{target}']",
        ]
    return "\n".join(lines) + "\n"
