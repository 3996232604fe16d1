"""Adapter training on features of the tiny served encoders: seeded, improving, exported faithfully."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adapt import data, features, metrics
from adapt.heads import HeadKind
from adapt.serving import HEAD_INPUT, export_version
from adapt.train import TrainSpec, apply, train, training_metric
from vitrine.contracts import CLIP_IMAGE_SIZE, Model, Tensor


@pytest.fixture(scope="module")
def encoders(tiny_artifacts: Path) -> features.Encoders:
    return features.Encoders(tiny_artifacts)


@pytest.fixture(scope="module")
def catalog_features(encoders: features.Encoders) -> dict[str, features.Features]:
    ds = data.catalog_pairs(160, seed=3, image_size=96)
    return {
        part: features.cached(
            encoders, f"t-{part}", getattr(ds, part).images, getattr(ds, part).texts,
            getattr(ds, part).groups, None, progress=False,
        )
        for part in ("train", "val", "test")
    }  # fmt: skip


SPEC = TrainSpec(epochs=8, batch=64, hidden=128, patience=8, seed=7)


def test_catalog_split_is_by_product() -> None:
    ds = data.catalog_pairs(60, seed=1, image_size=64)
    ids = [set(s.groups.tolist()) for s in (ds.train, ds.val, ds.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(i) for i in ids) == 60
    assert [p.title for p in ds.products[: len(ds.train)]] == list(ds.train.texts)


def test_training_is_deterministic_for_a_seed(catalog_features: dict[str, features.Features]) -> None:
    a = train(SPEC, catalog_features["train"], catalog_features["val"], "instance", progress=False)
    b = train(SPEC, catalog_features["train"], catalog_features["val"], "instance", progress=False)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.history == b.history


@pytest.mark.parametrize("head", [HeadKind.RESIDUAL, HeadKind.NAIVE])
def test_training_improves_the_training_metric(
    catalog_features: dict[str, features.Features], head: HeadKind
) -> None:
    f = catalog_features["train"]
    spec = TrainSpec(head=head, alpha=0.5, epochs=15, batch=64, hidden=128, patience=15, seed=1)
    # Select on the training split itself: this asserts that the optimisation learns, not generalisation.
    result = train(spec, f, f, "instance", progress=False)
    assert training_metric(result.model, f, "instance") > training_metric(None, f, "instance") + 0.1


def test_an_untrained_residual_adapter_is_zero_shot(catalog_features: dict[str, features.Features]) -> None:
    """The residual head's last layer starts at zero: before training it returns CLIP's embedding."""
    result = train(
        TrainSpec(epochs=0, hidden=64), catalog_features["train"], catalog_features["val"], "instance", False
    )
    image, text = apply(result.model, catalog_features["test"])
    assert np.allclose(image, catalog_features["test"].image, atol=1e-6)
    assert np.allclose(text, catalog_features["test"].text, atol=1e-6)


@pytest.mark.skipif(
    not data.fashion_mnist_available(),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it: make fashion-mnist)",
)
def test_fashion_mnist_subset_trains_at_class_level(encoders: features.Encoders) -> None:
    ds = data.fashion_mnist(300, 200, seed=0)
    assert ds.train.images[0].size == (28, 28) and ds.train.images[0].mode == "L"
    assert sorted(set(ds.test.groups.tolist())) == list(range(10))
    feats = {
        p: features.cached(encoders, f"fm-{p}", getattr(ds, p).images, getattr(ds, p).texts,
                           getattr(ds, p).groups, None, progress=False)
        for p in ("train", "test")
    }  # fmt: skip
    spec = TrainSpec(alpha=0.5, epochs=10, batch=128, hidden=128, patience=10, seed=0)
    result = train(spec, feats["train"], feats["train"], "class", progress=False)
    assert training_metric(result.model, feats["train"], "class") > training_metric(
        None, feats["train"], "class"
    )
    image, text = apply(result.model, feats["test"])
    from adapt.train import class_prompt_vectors

    prompts, labels = class_prompt_vectors(text, feats["test"].groups)
    per = metrics.class_metrics(image, labels, prompts, gallery=100)
    assert len(per["mAP@10"]) == 20 and len(per["accuracy"]) == 200


def test_exported_adapter_equals_pytorch(
    tiny_artifacts: Path, catalog_features: dict[str, features.Features], tmp_path: Path
) -> None:
    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    result = train(SPEC, catalog_features["train"], catalog_features["val"], "instance", progress=False)
    manifest = export_version(result.model, art, "2", {"test": True}, measure=False)
    for model in (Model.CLIP_IMAGE_ENCODER, Model.CLIP_TEXT_ENCODER):
        assert manifest["models"][model.value]["validation"]["min_cosine"] >= 0.9999
    # Independently of the export's own check: the head graph alone against PyTorch on cached features,
    # and the fused image tower against the base tower followed by the PyTorch head.
    head = ort.InferenceSession(str(art / "versions/2/heads/clip_image_encoder.onnx"))
    feats = catalog_features["test"].image
    with torch.no_grad():
        expected = result.model.image(torch.from_numpy(feats)).numpy()
    assert np.abs(head.run(None, {HEAD_INPUT: feats})[0] - expected).max() < 1e-5
    pixels = (
        np.random.default_rng(0).standard_normal((3, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)).astype(np.float32)
    )
    feed = {Tensor.PIXEL_VALUES.value: pixels}
    base = ort.InferenceSession(str(art / "clip_image_encoder/model.onnx")).run(None, feed)[0]
    fused = ort.InferenceSession(str(art / "versions/2/clip_image_encoder/model.onnx")).run(None, feed)[0]
    with torch.no_grad():
        want = result.model.image(torch.from_numpy(base)).numpy()
    assert np.abs(fused - want).max() < 1e-5
    assert np.abs(fused - base).max() > 1e-3  # the adapter is really in the graph
