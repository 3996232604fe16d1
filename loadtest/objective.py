"""The latency objective and how a run is judged against it, from Locust's own CSV.

Reading the verdict from the CSV Locust writes (rather than from live objects) means the figure that
passes or fails a run is the figure in the report a person reads afterwards.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitrine.measure import percentile

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class Objective:
    p95_ms: float = 100.0
    """p95 latency must stay below this (Locust rounds latencies above 100 ms to 10 ms)."""
    max_error_rate: float = 0.001
    """Failed requests / all requests must stay at or below this."""
    min_rate_fraction: float = 0.95
    """At a paced rate, the achieved rate must reach this fraction of the target: a stack that cannot keep
    up with the offered load has not met the objective at that load, whatever its latency."""


@dataclass(frozen=True)
class RunStats:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    avg_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    stats: RunStats
    objective: Objective
    target_rate: float = 0.0
    reasons: tuple[str, ...] = field(default=())

    def line(self) -> str:
        s = self.stats
        rate = f" at {self.target_rate:g} req/s offered" if self.target_rate else ""
        head = "PASS" if self.passed else "MISS"
        figures = (
            f"{s.requests} requests{rate}, {s.rps:.1f} req/s achieved, p50 {s.p50_ms:g} ms, "
            f"p95 {s.p95_ms:g} ms (objective < {self.objective.p95_ms:g}), p99 {s.p99_ms:g} ms, "
            f"errors {100 * s.error_rate:.3f}% (objective <= {100 * self.objective.max_error_rate:g}%)"
        )
        return f"{head}: {figures}" + ("" if self.passed else " - " + "; ".join(self.reasons))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["stats"]["error_rate"] = self.stats.error_rate
        out["line"] = self.line()
        return out


def judge(stats: RunStats, objective: Objective, target_rate: float = 0.0) -> Verdict:
    reasons = []
    if stats.requests == 0:
        reasons.append("no requests completed")
    else:
        if not stats.p95_ms < objective.p95_ms:
            reasons.append(f"p95 {stats.p95_ms:g} ms is not below {objective.p95_ms:g} ms")
        if stats.error_rate > objective.max_error_rate:
            reasons.append(
                f"error rate {100 * stats.error_rate:.3f}% is above {100 * objective.max_error_rate:g}%"
            )
        if target_rate > 0 and stats.rps < objective.min_rate_fraction * target_rate:
            reasons.append(f"achieved {stats.rps:.1f} req/s of {target_rate:g} offered")
    return Verdict(not reasons, stats, objective, target_rate, tuple(reasons))


def _number(row: dict[str, str], key: str) -> float:
    raw = (row.get(key) or "").strip()
    if raw in ("", "N/A"):
        return math.nan
    return float(raw)


def read_stats(csv_path: str | Path) -> dict[str, RunStats]:
    """Rows of Locust's ``*_stats.csv`` keyed by request name; the total is under ``"Aggregated"``."""
    out = {}
    with Path(csv_path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]
            requests = int(row["Request Count"])
            out[name] = RunStats(
                name=name,
                requests=requests,
                failures=int(row["Failure Count"]),
                rps=_number(row, "Requests/s"),
                p50_ms=_number(row, "50%") if requests else math.nan,
                p95_ms=_number(row, "95%") if requests else math.nan,
                p99_ms=_number(row, "99%") if requests else math.nan,
                max_ms=_number(row, "Max Response Time") if requests else math.nan,
                avg_ms=_number(row, "Average Response Time") if requests else math.nan,
            )
    if AGGREGATED not in out:
        raise ValueError(f"{csv_path} has no {AGGREGATED!r} row: not a Locust stats file")
    return out


def stage_summary(stages: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per-stage count, mean and nearest-rank p50/p95/p99 (ms) of the gateway's own timings."""
    return {
        stage: {
            "count": len(values),
            "mean_ms": sum(values) / len(values),
            "p50_ms": percentile(values, 0.50),
            "p95_ms": percentile(values, 0.95),
            "p99_ms": percentile(values, 0.99),
        }
        for stage, values in sorted(stages.items())
        if values
    }
