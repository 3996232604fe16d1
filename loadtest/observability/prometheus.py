"""A real Prometheus server for a stack: find the binary, start it on a loopback port, query it.

The binary is Debian's ``prometheus`` package: on PATH when installed system-wide, or unpacked into the
virtual environment by ``make prometheus-bin`` (no root needed to run it from there).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.observability import dashboard
from vitrine.net import free_port

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


class PrometheusServer:
    """``prometheus`` on a free loopback port with a given configuration; a context manager."""

    def __init__(self, config_text: str, workdir: Path, ready_timeout_s: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.config_text = config_text
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text)
        self.port = free_port()
        command = [
            str(find_binary()),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready within {self.ready_timeout_s:.0f} s")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


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
