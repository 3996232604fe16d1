"""The GPU target's PyTorch path: a TorchScript fp16 trace per tower, validated against fp32 at export and
served where onnxruntime has no CUDA provider. Traced and run on the CPU here (the same code, device
"cpu"); the CUDA run itself is GPU-marked."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import variants
from export.pipeline import _dummy, _torch_runner, probe_for, torch_fp16_variant
from export.specs import CLIP_IMAGE, CLIP_TEXT, CROSS_ENCODER, TowerSpec
from export.towers import ClipImageTower, ClipTextTower, CrossEncoderTower, load_clip, load_cross_encoder
from model_repository.render import RenderOptions, render_repository
from model_repository.runtime import DeviceUnavailable, make_gpu_session, make_session, run_batched
from vitrine.contracts import Target
from vitrine.torchscript import TorchSession

SPECS = (CLIP_TEXT, CLIP_IMAGE, CROSS_ENCODER)


def _tower(artifacts: Path, spec: TowerSpec) -> torch.nn.Module:
    if spec is CROSS_ENCODER:
        return CrossEncoderTower(load_cross_encoder(artifacts / "checkpoints" / "cross_encoder")).eval()
    clip = load_clip(artifacts / "checkpoints" / "clip")
    return (ClipTextTower(clip) if spec is CLIP_TEXT else ClipImageTower(clip)).eval()


def _requests(spec: TowerSpec) -> list[dict[str, np.ndarray]]:
    """Two requests of the dummy's shapes with different contents, and one of another batch size."""
    base = _dummy(spec)
    rng = np.random.default_rng(7)
    out = []
    for rows in (2, 2, 3):
        feed = {}
        for name, value in base.items():
            shape = (rows, *value.shape[1:])
            if value.dtype.kind == "f":
                feed[name] = rng.standard_normal(shape).astype(np.float32)
            elif name == "input_ids":
                feed[name] = rng.integers(5, 90, shape).astype(np.int64)
            else:
                feed[name] = np.broadcast_to(value[:1], shape).copy()
        out.append(feed)
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.model.value)
def test_a_trace_serves_like_the_onnx_graph(tiny_artifacts: Path, tmp_path: Path, spec: TowerSpec) -> None:
    path = tmp_path / "model.pt"
    variants.torchscript(_tower(tiny_artifacts, spec), _dummy(spec), path, "cpu", half=False)
    traced = TorchSession(path, "cpu")
    onnx = make_session(tiny_artifacts / spec.model.value / "model.onnx", threads=1)
    assert traced.inputs == [i.name for i in onnx.get_inputs()]  # matched by name, in the graph's order
    requests = _requests(spec)
    outputs = [o.name for o in onnx.get_outputs()]
    got = run_batched(traced, requests, outputs)
    want = run_batched(onnx, requests, outputs)
    for g, w in zip(got, want, strict=True):
        assert g.outputs is not None and w.outputs is not None, (g.error, w.error)
        np.testing.assert_allclose(g.outputs[outputs[0]], w.outputs[outputs[0]], atol=1e-4)
    # A request the model cannot take fails alone, with the missing input named.
    renamed = {("not_" + k if k == traced.inputs[0] else k): v for k, v in requests[0].items()}
    broken = [renamed, requests[1]]
    results = run_batched(traced, broken, outputs)
    assert results[0].error is not None and traced.inputs[0] in results[0].error
    assert results[1].outputs is not None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.model.value)
def test_the_fp16_trace_is_validated_against_fp32(
    tiny_artifacts: Path, tmp_path: Path, spec: TowerSpec
) -> None:
    module = _tower(tiny_artifacts, spec)
    probe = probe_for(spec, tiny_artifacts, seed=0)
    entry = torch_fp16_variant(spec, module, tmp_path, _torch_runner(module), probe, device="cpu")
    assert entry["status"] == "validated" and entry["servable"], entry
    assert entry["validation"]["top10_agreement_within_noise"] == 1.0
    path = tmp_path / entry["path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert TorchSession(path, "cpu").dtype is torch.float16


def test_a_cpu_export_records_why_there_is_no_trace(tiny_artifacts: Path) -> None:
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    for spec in SPECS:
        entry = manifest["models"][spec.model.value]["torch_fp16"]
        if torch.cuda.is_available():
            assert entry["status"] == "validated" and entry["servable"], entry
        else:
            assert entry == {"status": "skipped", "reason": variants.cuda_unavailable(), "servable": False}


def test_the_gpu_rendering_places_validated_traces(tiny_artifacts: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    module = _tower(artifacts, CROSS_ENCODER)
    folder = artifacts / CROSS_ENCODER.model.value
    manifest["models"][CROSS_ENCODER.model.value]["torch_fp16"] = torch_fp16_variant(
        CROSS_ENCODER, module, folder, _torch_runner(module), probe_for(CROSS_ENCODER, artifacts, 0), "cpu"
    )
    (artifacts / "manifest.json").write_text(json.dumps(manifest))
    repo = render_repository(artifacts, tmp_path / "gpu", RenderOptions(target=Target.GPU_EMBEDDED))
    configs = {
        p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")
    }
    cross = configs[CROSS_ENCODER.model.value]
    assert cross.parameters["torch_file"].string_value == variants.TORCH_FP16_FILE
    placed = repo / CROSS_ENCODER.model.value / "1" / variants.TORCH_FP16_FILE
    assert placed.read_bytes() == (folder / variants.TORCH_FP16_FILE).read_bytes()
    # Only validated traces are named: the CLIP towers have none in this manifest.
    assert "torch_file" not in configs[CLIP_TEXT.model.value].parameters
    cpu = render_repository(artifacts, tmp_path / "cpu", RenderOptions(target=Target.CPU))
    assert not list(cpu.glob(f"*/1/{variants.TORCH_FP16_FILE}"))


def test_a_gpu_session_names_every_missing_piece(tiny_artifacts: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers() or torch.cuda.is_available():
        pytest.skip("a CUDA path exists here")
    graph = tiny_artifacts / "cross_encoder" / "model.onnx"
    with pytest.raises(DeviceUnavailable, match=r"install onnxruntime-gpu.*export with --torch-fp16"):
        make_gpu_session(graph, torch_fallback=tmp_path / "absent.pt")
    trace = tmp_path / "model.pt"
    variants.torchscript(
        _tower(tiny_artifacts, CROSS_ENCODER), _dummy(CROSS_ENCODER), trace, "cpu", half=True
    )
    with pytest.raises(DeviceUnavailable, match=r"install onnxruntime-gpu.*sees no CUDA device"):
        make_gpu_session(graph, torch_fallback=trace)


@pytest.mark.gpu
def test_the_fp16_trace_on_cuda_matches_fp32(tiny_artifacts: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs PyTorch with a CUDA device")
    for spec in SPECS:
        module = _tower(tiny_artifacts, spec)
        probe = probe_for(spec, tiny_artifacts, seed=0)
        entry = torch_fp16_variant(spec, module, tmp_path / spec.model.value, _torch_runner(module), probe)
        assert entry["status"] == "validated" and entry["servable"], (spec.model.value, entry)
