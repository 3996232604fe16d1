"""A real Prometheus server for a stack: find the binary and query it (``operations.servers`` starts it).

The binary is Debian's ``prometheus`` package: on PATH when installed system-wide, or unpacked into the
virtual environment by ``make prometheus-bin`` (no root needed to run it from there).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.observability import dashboard

ENV_BINARY = "VITRINE_PROMETHEUS"


class PrometheusError(RuntimeError):
    pass


def find_binary() -> Path:
    candidates = [
        os.environ.get(ENV_BINARY, ""),
        str(Path(sys.prefix) / "prometheus" / "usr" / "bin" / "prometheus"),
    ]
    candidates.append(shutil.which("prometheus") or "")
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise PrometheusError(
        "prometheus binary not found: run `make prometheus-bin` (unpacks Debian's prometheus package into "
        f"the virtual environment), `apt-get install prometheus`, or set {ENV_BINARY}"
    )


def query(url: str, expr: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """An instant query's result vector; a PromQL error is raised, not returned as 'no data'."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise PrometheusError(f"query failed ({exc.code}): {body.get('error', '')}: {expr}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"query failed: {body.get('error', '')}: {expr}")
    return list(body["data"]["result"])


def targets_up(url: str) -> dict[str, bool]:
    """Scrape health per job, as Prometheus last saw it."""
    return {sample["metric"]["job"]: sample["value"][1] == "1" for sample in query(url, "up")}


@dataclass(frozen=True)
class QueryCheck:
    query: dashboard.DashboardQuery
    series: int
    finite: int

    @property
    def has_data(self) -> bool:
        return self.finite > 0


def check_dashboard(
    url: str, rate_interval: str = "1m", board: dict[str, Any] | None = None
) -> list[QueryCheck]:
    """Every dashboard query evaluated now: how many series it returns, and how many are numbers."""
    board = board if board is not None else json.loads(dashboard.render())
    out = []
    for item in dashboard.queries(board):
        result = query(url, dashboard.promql(item.expr, rate_interval))
        finite = sum(1 for sample in result if math.isfinite(float(sample["value"][1])))
        out.append(QueryCheck(item, len(result), finite))
    return out
