"""The gateway's server-side latency over a run, from its own Prometheus histograms.

A client measures the network, its own scheduling and the server; the gateway's histograms measure the
server alone. Scraping before and after a run and taking quantiles of the bucket deltas (linear inside a
bucket, as Prometheus' ``histogram_quantile`` does) gives the server's view of exactly that run, whichever
generator drove it, so the two can be told apart: a client p95 far above the server's is the client.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

REQUEST_HISTOGRAM = "vitrine_gateway_request_seconds"
STAGE_HISTOGRAM = "vitrine_gateway_stage_seconds"
LABELS = {REQUEST_HISTOGRAM: "method", STAGE_HISTOGRAM: "stage"}

Buckets = dict[float, float]
"""Cumulative count per upper bound (seconds), ``+Inf`` included."""
Snapshot = dict[str, Buckets]
"""Per series, keyed ``"method:Search"`` or ``"stage:embed_text"``."""


def snapshot(url: str, timeout_s: float = 10.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return parse(reply.read().decode())


def parse(text: str) -> Snapshot:
    out: dict[str, Buckets] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        label = LABELS.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            if sample.name != f"{family.name}_bucket" or label not in sample.labels:
                continue
            bound = float(sample.labels["le"])
            out[f"{label}:{sample.labels[label]}"][bound] = float(sample.value)
    return dict(out)


def quantile(buckets: Buckets, q: float) -> float:
    """``histogram_quantile(q, ...)`` over cumulative buckets; NaN when empty. A quantile that falls in
    the ``+Inf`` bucket is reported as the highest finite bound (the histogram knows no more)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def quantiles(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Per series over the interval: count and p50/p95/p99 in ms."""
    out = {}
    for series, buckets in sorted(after.items()):
        prior = before.get(series, {})
        delta = {bound: count - prior.get(bound, 0.0) for bound, count in buckets.items()}
        count = max(delta.values(), default=0.0)
        if count <= 0:
            continue
        out[series] = {
            "count": count,
            "p50_ms": 1000 * quantile(delta, 0.50),
            "p95_ms": 1000 * quantile(delta, 0.95),
            "p99_ms": 1000 * quantile(delta, 0.99),
        }
    return out
