"""Fine-tuning the last blocks: only they move, the loss falls, AMP on a GPU host."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapt import data
from adapt.finetune import FinetuneError, FinetuneSpec, finetune, load_clip


@pytest.fixture(scope="module")
def pairs() -> tuple[list, list]:
    ds = data.catalog_pairs(24, seed=4, image_size=64)
    return list(ds.train.images)[:16], list(ds.train.texts)[:16]


def test_cpu_finetune_of_a_tiny_tower_moves_only_the_last_block(tiny_artifacts: Path, pairs: tuple) -> None:
    images, texts = pairs
    before = load_clip(tiny_artifacts).state_dict()
    spec = FinetuneSpec(tower="image", blocks=1, steps=8, batch=8, lr=1e-3, device="cpu")
    clip, report = finetune(tiny_artifacts, images, texts, spec, progress=False)
    after = clip.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(
        n.startswith(("vision_model.encoder.layers.1.", "vision_model.post_layernorm", "visual_projection"))
        for n in changed
    ), sorted(changed)
    assert report["loss_last"] < report["loss_first"]
    assert report["amp"] == "off"


def test_a_wide_tower_on_a_cpu_is_refused(
    tiny_artifacts: Path, pairs: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU guard reads the tower's width; lowering the bound below the tiny tower's 64 trips it."""
    monkeypatch.setattr("adapt.finetune.CPU_MAX_HIDDEN", 32)
    with pytest.raises(FinetuneError, match="needs a GPU"):
        finetune(tiny_artifacts, *pairs, FinetuneSpec(device="cpu"), progress=False)


@pytest.mark.gpu
def test_gpu_finetune_runs_with_amp(tiny_artifacts: Path, pairs: tuple) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    images, texts = pairs
    _, report = finetune(
        tiny_artifacts, images, texts, FinetuneSpec(blocks=2, steps=20, batch=16, lr=1e-3), progress=False
    )
    assert report["device"].startswith("cuda") and report["amp"] in ("bfloat16", "float16")
    assert report["loss_last"] < report["loss_first"]
