"""The transformer-optimizer variant: fused graphs validated like fp32, recorded, and served on request."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from model_repository.render import Precision, RenderOptions, render_repository
from vitrine.contracts import Model


def test_fused_graphs_are_validated_and_recorded(tiny_artifacts: Path) -> None:
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    for model in (Model.CLIP_TEXT_ENCODER, Model.CLIP_IMAGE_ENCODER, Model.CROSS_ENCODER):
        entry = manifest["models"][model.value]["optimized"]
        assert entry["status"] == "validated" and entry["servable"], (model, entry)
        assert entry["agreement_top10"] == 1.0 and entry["validation"]["top10_overlap"] == 1.0
        assert entry["fused"], (model, entry)  # the optimizer matched its patterns
        path = tiny_artifacts / model.value / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    cross = manifest["models"][Model.CROSS_ENCODER.value]["optimized"]
    assert {"Attention", "SkipLayerNormalization"} <= set(cross["fused"])
    ops = {n.op_type for n in onnx.load(str(tiny_artifacts / "cross_encoder" / cross["path"])).graph.node}
    assert "Attention" in ops and "Softmax" not in ops  # attention runs as one fused kernel


def test_render_serves_the_fused_graph_only_when_asked(tiny_artifacts: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    fused = render_repository(
        tiny_artifacts, tmp_path / "fused", RenderOptions(precision=Precision.OPTIMIZED)
    )
    plain = render_repository(tiny_artifacts, tmp_path / "plain", RenderOptions())
    for model in (Model.CLIP_TEXT_ENCODER, Model.CROSS_ENCODER):
        entry = manifest["models"][model.value]
        served = {
            name: hashlib.sha256((root / model.value / "1" / "model.onnx").read_bytes()).hexdigest()
            for name, root in (("fused", fused), ("plain", plain))
        }
        assert served == {"fused": entry["optimized"]["sha256"], "plain": entry["sha256"]}, model
