"""Tiny exports through the real path: contract, manifest, validation failures, parity with PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from export import validate, variants
from export.errors import ExportError, ShapeError, SourceError, ToleranceError
from export.pipeline import INT8_MIN_AGREEMENT, ExportConfig, Manifest, export_all, probe_for, sha256
from export.specs import CLIP_IMAGE, CLIP_TEXT, CROSS_ENCODER, MINILM, TOWERS, Family
from export.towers import ClipImageTower, ClipTextTower, load_clip
from vitrine.contracts import CLIP_CONTEXT_LENGTH, EMBED_DIM, MINILM_DIM, Model, Size, Tensor, Weights
from vitrine.tokenization import ClipTokenizer, PairTokenizer


@pytest.fixture(scope="module")
def manifest(tiny_artifacts: Path) -> Manifest:
    return Manifest.load(tiny_artifacts)


@pytest.fixture(scope="module")
def reference(tiny_artifacts: Path) -> Any:
    from export.reference import TorchReference

    return TorchReference(tiny_artifacts)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_manifest_records_weights_source_and_files(tiny_artifacts: Path, manifest: Manifest) -> None:
    raw = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert set(raw["models"]) == {
        m.value
        for m in (
            Model.CLIP_TEXT_ENCODER,
            Model.CLIP_IMAGE_ENCODER,
            Model.CROSS_ENCODER,
            Model.MINILM_ENCODER,
        )
    }
    for spec in TOWERS:
        entry = manifest.entry(spec.model)
        path = manifest.path(spec.model)
        assert path == tiny_artifacts / spec.model.value / "model.onnx"
        assert entry.weights == Weights.RANDOM.value and entry.source == "random-seed-0"
        assert entry.size == Size.TINY.value and entry.opset >= 17
        assert entry.sha256 == sha256(path)
        assert [t["name"] for t in entry.inputs] == [t.name.value for t in spec.inputs]
        width = {CROSS_ENCODER.model: 1, MINILM.model: MINILM_DIM}.get(spec.model, EMBED_DIM)
        assert entry.outputs[0]["shape"][-1] == width
        assert entry.validation["top10_agreement_within_noise"] == 1.0
        assert entry.int8 is not None and manifest.path(spec.model, "int8").is_file()
        assert 0.0 <= entry.int8["agreement_top10"] <= 1.0
        assert entry.int8["servable"] == (entry.int8["agreement_top10"] >= INT8_MIN_AGREEMENT)
        attempts = entry.int8["attempts"]
        assert attempts[0]["scheme"] == variants.INT8_ALL and attempts[-1]["scheme"] == entry.int8["scheme"]
        assert (
            len(attempts) == 1 if attempts[0]["agreement_top10"] >= INT8_MIN_AGREEMENT else len(attempts) == 2
        )
        if len(attempts) == 2:  # tiny towers have 2 layers, so 2 MLP down-projections stay fp32
            assert attempts[1]["fp32_matmuls"] == 2
        assert entry.fp16 is not None and entry.fp16["status"] == "validated"
        assert manifest.path(spec.model, "fp16").stat().st_size < path.stat().st_size
        with pytest.raises(KeyError, match="no int4"):
            manifest.path(spec.model, "int4")
    assert manifest.entry(Model.CLIP_TEXT_ENCODER).validation["min_cosine"] >= 0.9999
    assert manifest.entry(Model.CROSS_ENCODER).validation["max_abs_diff"] <= 1e-4
    for family in Family:
        assert manifest.tokenizer(family).is_file()
    assert (tiny_artifacts / "checkpoints" / "clip" / "config.json").is_file()


def test_graphs_have_contract_names_and_dynamic_axes(manifest: Manifest) -> None:
    for spec in TOWERS:
        validate.check_graph(spec, manifest.path(spec.model))
        sess = validate.session(manifest.path(spec.model))
        assert [i.name for i in sess.get_inputs()] == [t.name.value for t in spec.inputs]
        assert isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch
    text = validate.session(manifest.path(Model.CLIP_TEXT_ENCODER))
    assert isinstance(text.get_inputs()[0].shape[1], str)  # dynamic sequence


def test_onnx_text_and_image_match_transformers_reference(manifest: Manifest, reference: Any) -> None:
    texts = ["red leather ankle boots", "Café crème 👢", "", "waterproof " * 90]
    batch = ClipTokenizer.from_file(manifest.tokenizer(Family.CLIP)).encode_batch(texts)
    text = validate.session(manifest.path(Model.CLIP_TEXT_ENCODER))
    got = text.run(None, {Tensor.INPUT_IDS.value: batch.input_ids, Tensor.EOT_INDEX.value: batch.eot_index})[
        0
    ]
    assert got.shape == (4, EMBED_DIM)
    assert _cosine(got, reference.embed_text(texts)).min() >= 0.9999

    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 200), (224, 640))
    ]
    pixels = reference.pixel_values(images)
    assert pixels.shape == (2, 3, 224, 224)
    image = validate.session(manifest.path(Model.CLIP_IMAGE_ENCODER))
    got = image.run(None, {Tensor.PIXEL_VALUES.value: pixels})[0]
    assert _cosine(got, reference.embed_image(images)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_rerank_matches_transformers_reference(manifest: Manifest, reference: Any) -> None:
    passages = ["suede chelsea boots", "", "a cotton t-shirt " * 100, "北京 烤鸭"]
    batch = PairTokenizer.from_file(manifest.tokenizer(Family.CROSS_ENCODER)).encode("boots", passages)
    sess = validate.session(manifest.path(Model.CROSS_ENCODER))
    got = sess.run(
        None,
        {
            Tensor.INPUT_IDS.value: batch.input_ids,
            Tensor.ATTENTION_MASK.value: batch.attention_mask,
            Tensor.TOKEN_TYPE_IDS.value: batch.token_type_ids,
        },
    )[0]
    assert got.shape == (4, 1)
    np.testing.assert_allclose(got[:, 0], reference.rerank("boots", passages), atol=1e-4)
    assert batch.truncated.tolist() == [False, False, True, False]


def test_bucket_padding_gives_the_same_embedding(manifest: Manifest) -> None:
    tok = ClipTokenizer.from_file(manifest.tokenizer(Family.CLIP))
    sess = validate.session(manifest.path(Model.CLIP_TEXT_ENCODER))
    batch = tok.encode_batch(["red leather ankle boots"])
    n = int(batch.eot_index[0, 0]) + 1
    unpadded = batch.input_ids[:, :n]
    padded = np.full((1, CLIP_CONTEXT_LENGTH), tok.eos_id, np.int64)
    padded[:, :n] = unpadded
    runs = [
        sess.run(None, {Tensor.INPUT_IDS.value: ids, Tensor.EOT_INDEX.value: batch.eot_index})[0]
        for ids in (unpadded, batch.input_ids, padded)
    ]
    assert batch.input_ids.shape[1] == 8 and n < 8
    for other in runs[1:]:
        assert _cosine(runs[0], other).min() >= 0.99999


def _clip_runner(artifacts: Path, spec: Any) -> Any:
    from export.pipeline import _torch_runner

    clip = load_clip(artifacts / "checkpoints" / "clip")
    return _torch_runner((ClipTextTower if spec is CLIP_TEXT else ClipImageTower)(clip).eval())


def test_perturbed_weights_raise_tolerance_error_with_figures(tiny_artifacts: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_artifacts / "clip_text_encoder" / "model.onnx"))
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if t.data_type == 1 else 0)
    weights = onnx.numpy_helper.to_array(largest)
    noise = np.random.default_rng(0).standard_normal(weights.shape).astype(np.float32) * weights.std()
    largest.CopyFrom(onnx.numpy_helper.from_array(weights + noise, largest.name))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    probe = probe_for(CLIP_TEXT, tiny_artifacts, seed=0)
    with pytest.raises(ToleranceError, match=r"cosine with PyTorch 0\.\d+ \(row \d+\) < 0\.9999"):
        validate.validate(CLIP_TEXT, broken, _clip_runner(tiny_artifacts, CLIP_TEXT), probe)


def test_wrong_output_shape_raises_shape_error(tiny_artifacts: Path, tmp_path: Path) -> None:
    """A graph that declares the contract's output but computes [batch, 1024] is caught at run time."""
    model = onnx.load(str(tiny_artifacts / "clip_image_encoder" / "model.onnx"))
    out = Tensor.EMBEDDING.value
    for node in model.graph.node:
        node.output[:] = ["pre_embedding" if o == out else o for o in node.output]
    model.graph.node.append(
        onnx.helper.make_node("Concat", ["pre_embedding", "pre_embedding"], [out], axis=1)
    )
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    probe = probe_for(CLIP_IMAGE, tiny_artifacts, seed=0)
    with pytest.raises(
        ShapeError, match=r"output shape \(20, 1024\), PyTorch \(20, 512\), contract \[batch, 512\]"
    ):
        validate.validate(CLIP_IMAGE, broken, _clip_runner(tiny_artifacts, CLIP_IMAGE), probe)


def test_renamed_input_raises_shape_error(tiny_artifacts: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_artifacts / "clip_image_encoder" / "model.onnx"))
    old = Tensor.PIXEL_VALUES.value
    model.graph.input[0].name = "input.1"
    for node in model.graph.node:
        node.input[:] = ["input.1" if i == old else i for i in node.input]
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ShapeError, match=r"inputs are \['input.1'\], expected \['pixel_values'\]"):
        validate.check_graph(CLIP_IMAGE, broken)


def test_topk_agreement_definition() -> None:
    reference = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]], np.float32)
    swapped = np.array([[0.9, 0.1, 0.8, 0.0], [0.1, 0.2, 0.3, 0.4]], np.float32)
    assert validate.topk_agreement(reference, reference, k=2) == 1.0
    assert validate.topk_agreement(swapped, reference, k=2) == 0.75
    assert validate.topk_agreement(swapped, reference, k=2, tie=0.15) == 1.0


def test_opset_below_17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 13 < 17"):
        export_all(ExportConfig(out=tmp_path, source="random", size=Size.TINY, opset=13))
    assert not (tmp_path / "manifest.json").exists()


def test_tensorrt_is_skipped_with_a_reason_without_it() -> None:
    reason = variants.tensorrt_unavailable()
    try:
        import tensorrt  # noqa: F401
        import torch

        has_trt = torch.cuda.is_available()
    except ImportError:
        has_trt = False
    assert (reason is None) == has_trt
    if reason:
        assert "TensorRT" in reason or "CUDA" in reason


def test_cli_fails_with_typed_error_on_unusable_source(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "--size",
            "tiny",
            "--clip-source",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "export failed: SourceError" in proc.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_unknown_checkpoint_directory_is_a_source_error(tmp_path: Path) -> None:
    from export.checkpoints import obtain

    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="cannot load clip checkpoint"):
        obtain(Family.CLIP, str(tmp_path / "empty"), Size.FULL, 0, tmp_path / "out")


@pytest.mark.gpu
def test_tensorrt_engine_builds_on_a_gpu_host(tiny_artifacts: Path, tmp_path: Path) -> None:
    reason = variants.tensorrt_unavailable()
    if reason:
        pytest.skip(reason)
    plan = tmp_path / "model.plan"
    info = variants.tensorrt_engine(
        CLIP_TEXT, tiny_artifacts / "clip_text_encoder" / "model.onnx", plan, max_batch=8, max_seq=77
    )
    assert info["status"] == "built" and info["precision"] == "fp16"
    assert plan.stat().st_size > 0


def test_local_checkpoint_directories_take_the_same_path(tiny_artifacts: Path, tmp_path: Path) -> None:
    """A directory source (here: the tiny export's own checkpoints) is recorded as pretrained, by name."""
    ckpts = tiny_artifacts / "checkpoints"
    manifest = export_all(
        ExportConfig(
            out=tmp_path,
            clip_source=str(ckpts / "clip"),
            cross_encoder_source=str(ckpts / "cross_encoder"),
            minilm_source=str(ckpts / "minilm"),
            size=Size.TINY,
        )
    )
    for spec in TOWERS:
        entry = manifest.entry(spec.model)
        assert entry.weights == Weights.PRETRAINED.value
        assert entry.source == spec.family.value
        assert entry.validation["top10_agreement_within_noise"] == 1.0
    original = validate.session(Manifest.load(tiny_artifacts).path(Model.CLIP_IMAGE_ENCODER))
    again = validate.session(manifest.path(Model.CLIP_IMAGE_ENCODER))
    pixels = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(
        again.run(None, {Tensor.PIXEL_VALUES.value: pixels})[0],
        original.run(None, {Tensor.PIXEL_VALUES.value: pixels})[0],
        atol=1e-6,
    )


def test_auto_at_tiny_size_builds_seeded_random_weights(tmp_path: Path) -> None:
    from export.checkpoints import obtain

    first = obtain(Family.CROSS_ENCODER, "auto", Size.TINY, 7, tmp_path / "a")
    second = obtain(Family.CROSS_ENCODER, "random", Size.TINY, 7, tmp_path / "b")
    assert (first.weights, first.source) == (Weights.RANDOM, "random-seed-7")
    assert (first.path / "model.safetensors").read_bytes() == (second.path / "model.safetensors").read_bytes()
    assert (first.path / "tokenizer.json").is_file() and (first.path / "vocab.txt").is_file()
