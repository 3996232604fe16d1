"""Draft-mode JPEG decoding for serving: a reduced DCT scale that still covers the crop, same pixels
within a few levels, every other format decoded in full. The embeddings stay within tolerance of the
PyTorch reference (test_serving's 640x480 JPEG goes through this path)."""

from __future__ import annotations

import numpy as np

from model_repository.preprocess import open_image
from tests.model_repository.images import photo
from vitrine.contracts import CLIP_IMAGE_SIZE
from vitrine.pixels import resize_and_crop


def test_a_large_jpeg_decodes_at_the_smallest_scale_covering_the_crop() -> None:
    data = photo(1024, 768, seed=5)
    assert open_image(data).size == (1024, 768)
    # 1/4 would be 256x192, below 224 on one side: 1/2 is the smallest scale that covers the crop.
    assert open_image(data, CLIP_IMAGE_SIZE).size == (512, 384)
    assert open_image(photo(1920, 1920, seed=6), CLIP_IMAGE_SIZE).size == (240, 240)  # 1/8
    assert open_image(photo(300, 300, seed=7), CLIP_IMAGE_SIZE).size == (300, 300)  # no scale covers it


def test_other_formats_decode_in_full() -> None:
    assert open_image(photo(1024, 768, seed=5, fmt="PNG"), CLIP_IMAGE_SIZE).size == (1024, 768)


def test_draft_pixels_stay_close_to_a_full_decode() -> None:
    data = photo(1280, 960, seed=8)
    full = resize_and_crop(open_image(data)).astype(np.int16)
    draft = resize_and_crop(open_image(data, CLIP_IMAGE_SIZE)).astype(np.int16)
    assert full.shape == draft.shape == (CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE, 3)
    assert np.abs(full - draft).mean() < 3.0, np.abs(full - draft).mean()
