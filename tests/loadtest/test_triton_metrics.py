"""Per-model figures from Triton's counters, on text in the exact format tritonserver 2.51 exports."""

from __future__ import annotations

import pytest

from loadtest.triton_metrics import COUNTERS, parse, per_model

MODEL = 'model="clip_text_encoder",version="1"'


def exposition(values: dict[str, float]) -> str:
    """Triton's text format: HELP/TYPE lines, counters without ``_total``, plus a summary and a gauge."""
    lines = []
    for name in COUNTERS:
        lines += [
            f"# HELP {name} Cumulative",
            f"# TYPE {name} counter",
            f"{name}{{{MODEL}}} {values[name]:g}",
        ]
    lines += [
        "# TYPE nv_inference_request_success counter",
        'nv_inference_request_success{model="idle",version="1"} 3',
        "# TYPE nv_inference_queue_summary_us summary",
        f"nv_inference_queue_summary_us_count{{{MODEL}}} 10",
        f"nv_inference_queue_summary_us_sum{{{MODEL}}} 10000",
        f'nv_inference_queue_summary_us{{{MODEL},quantile="0.5"}} 900',
        "# TYPE nv_cpu_utilization gauge",
        "nv_cpu_utilization 0.5",
    ]
    return "\n".join(lines) + "\n"


BEFORE: dict[str, float] = {
    "nv_inference_request_success": 10,
    "nv_inference_count": 10,
    "nv_inference_exec_count": 10,
    "nv_inference_request_duration_us": 200_000,
    "nv_inference_queue_duration_us": 10_000,
    "nv_inference_compute_input_duration_us": 1_000,
    "nv_inference_compute_infer_duration_us": 150_000,
    "nv_inference_compute_output_duration_us": 1_000,
    "nv_cache_num_hits_per_model": 0,
    "nv_cache_num_misses_per_model": 10,
}
# 40 more requests in 20 executions (batches of 2), 100 ms each: 30 ms queued, 1 + 55 ms computing.
AFTER: dict[str, float] = {
    "nv_inference_request_success": 50,
    "nv_inference_count": 50,
    "nv_inference_exec_count": 30,
    "nv_inference_request_duration_us": 4_200_000,
    "nv_inference_queue_duration_us": 1_210_000,
    "nv_inference_compute_input_duration_us": 41_000,
    "nv_inference_compute_infer_duration_us": 2_350_000,
    "nv_inference_compute_output_duration_us": 1_000,
    "nv_cache_num_hits_per_model": 10,  # the response cache answered 10 of the 40, 30 missed
    "nv_cache_num_misses_per_model": 40,
}


def test_counters_parse_by_family_and_model() -> None:
    snap = parse(exposition(BEFORE))
    assert snap["clip_text_encoder"] == {name: float(v) for name, v in BEFORE.items()}
    assert snap["idle"] == {"nv_inference_request_success": 3.0}


def test_per_model_over_an_interval() -> None:
    figures = per_model(parse(exposition(BEFORE)), parse(exposition(AFTER)))
    assert set(figures) == {"clip_text_encoder"}  # "idle" served nothing in between
    m = figures["clip_text_encoder"]
    assert m["requests"] == 40 and m["batch"] == 2.0
    assert m["request_ms"] == pytest.approx(100.0)
    assert m["queue_ms"] == pytest.approx(30.0)
    assert m["compute_ms"] == pytest.approx(56.0)
    assert m["cache_hit_rate"] == pytest.approx(0.25)
