"""Triton's own request traces, read back: where each request's time went, step by step."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.trace import handoff_ms, read_spans, summary, trace_files
from vitrine import triton as request
from vitrine.contracts import EMBED_TEXT_IO, RERANK_IO, Model, Tensor


def test_a_traced_triton_shows_each_ensemble_step(tiny_artifacts: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as tc

    from operations.stack import Stack

    trace = tmp_path / "trace.json"
    stack = Stack(tmp_path / "stack", tiny_artifacts, triton_trace=trace)
    try:
        triton = stack.start_triton()
        client = tc.InferenceServerClient(triton.grpc_url)
        for i in range(3):
            client.infer(
                Model.EMBED_TEXT.value, request.inputs(EMBED_TEXT_IO, {Tensor.TEXT: [f"red boots {i}"]})
            )
        client.infer(
            Model.RERANK.value,
            request.inputs(RERANK_IO, {Tensor.QUERY: ["boots"], Tensor.PASSAGES: ["red boots", "a bag"]}),
        )
    finally:
        stack.stop()  # Triton writes what it traced when it stops

    spans = read_spans(trace_files(trace))
    by_model: dict[str, list] = {}
    for span in spans:
        by_model.setdefault(span.model, []).append(span)
    assert len(by_model[Model.EMBED_TEXT.value]) == 3 and len(by_model[Model.RERANK.value]) == 1
    text = by_model[Model.EMBED_TEXT.value][0]
    # On the CPU the text encoder tokenizes its own requests: one step; the re-rank keeps two.
    assert [c.model for c in text.children] == [Model.CLIP_TEXT_ENCODER.value]
    (rerank,) = by_model[Model.RERANK.value]
    assert [c.model for c in rerank.children] == [Model.RERANK_TOKENIZE.value, Model.CROSS_ENCODER.value]
    for child in text.children:
        assert child.queue_ms is not None and child.queue_ms >= 0
        assert child.compute_ms is not None and child.compute_ms > 0
    assert text.total_ms is not None and text.total_ms > 0
    busy = sum((c.ns["COMPUTE_END"] - c.ns["REQUEST_START"]) / 1e6 for c in text.children)
    assert handoff_ms(text) == pytest.approx(text.total_ms - busy)
    report = summary(spans, slowest=2)
    assert f"| {Model.CROSS_ENCODER.value} | 1 |" in report and "Slowest 2 of 4 requests" in report


def test_no_trace_file_is_an_empty_list(tmp_path: Path) -> None:
    assert trace_files(tmp_path / "absent.json") == []
    assert read_spans([]) == []
