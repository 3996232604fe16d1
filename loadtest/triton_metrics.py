"""Triton's own counters around a run: where inside the model tier the time went, per model.

The gateway's stage timings say "embed_text took 15 ms"; Triton's cumulative counters, read before and
after a run, split that into time queued for a batch and time computing, and give the batch size that
dynamic batching actually formed under that load.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_cache_num_hits_per_model",
    "nv_cache_num_misses_per_model",
)

Snapshot = dict[str, dict[str, float]]


def snapshot(url: str, timeout_s: float = 10.0) -> Snapshot:
    """Counter values per model (summed over versions) from a Triton metrics endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return parse(reply.read().decode())


def parse(text: str) -> Snapshot:
    out: Snapshot = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if family.name not in COUNTERS:
            continue
        for sample in family.samples:
            # The parser names counter samples ``<family>_total``; key them by the family, as Triton does.
            if sample.name in (family.name, f"{family.name}_total") and "model" in sample.labels:
                model = sample.labels["model"]
                out[model][family.name] = out[model].get(family.name, 0.0) + float(sample.value)
    return dict(out)


def per_model(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Per model over the interval: requests, mean batch size, and mean ms per request by phase."""
    out = {}
    for model, counters in sorted(after.items()):
        prior = before.get(model, {})
        d = {name: counters.get(name, 0.0) - prior.get(name, 0.0) for name in COUNTERS}
        requests = d["nv_inference_request_success"]
        if requests <= 0:
            continue
        compute = sum(d[f"nv_inference_compute_{p}_duration_us"] for p in ("input", "infer", "output"))
        executions = d["nv_inference_exec_count"]
        out[model] = {
            "requests": requests,
            "batch": d["nv_inference_count"] / executions if executions > 0 else 0.0,
            "request_ms": d["nv_inference_request_duration_us"] / requests / 1000,
            "queue_ms": d["nv_inference_queue_duration_us"] / requests / 1000,
            "compute_ms": compute / requests / 1000,
        }
        lookups = d["nv_cache_num_hits_per_model"] + d["nv_cache_num_misses_per_model"]
        if lookups > 0:  # Triton's response cache is on for this model
            out[model]["cache_hit_rate"] = d["nv_cache_num_hits_per_model"] / lookups
    return out
