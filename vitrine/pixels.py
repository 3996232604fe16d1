"""CLIP's pixel transform, one copy for serving and for training.

Triton's ``clip_image_preprocess`` model and the adaptation code (features cached for training, images
embedded for evaluation) both turn pictures into ``pixel_values`` here, so an adapter is trained on
exactly the pixels the served encoder sees.

The transform follows transformers' ``CLIPImageProcessor`` (RGB, shortest side to 224 with PIL bicubic on
uint8, center crop, rescale, normalise) so served embeddings match the PyTorch reference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vitrine.contracts import CLIP_IMAGE_MEAN, CLIP_IMAGE_SIZE, CLIP_IMAGE_STD

_MEAN = np.asarray(CLIP_IMAGE_MEAN, dtype=np.float32)
_INV_STD = (1.0 / np.asarray(CLIP_IMAGE_STD, dtype=np.float32)).astype(np.float32)
_SCALE = np.float32(1.0 / 255.0)


def resize_and_crop(image: Image.Image, size: int = CLIP_IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 [size, size, 3]: shortest side to ``size`` (bicubic), then the centre square.

    Same arithmetic as transformers' ``get_resize_output_image_size`` (long side truncated with int())
    and ``center_crop`` (offsets floored), so crops line up with the reference pixel for pixel.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    top = (new_h - size) // 2
    left = (new_w - size) // 2
    return np.asarray(image, dtype=np.uint8)[top : top + size, left : left + size]


def normalize(pixels: np.ndarray) -> np.ndarray:
    """[n, h, w, 3] uint8 -> [n, 3, h, w] float32 CLIP-normalised, in one vectorised pass."""
    out = pixels.astype(np.float32) * _SCALE
    out -= _MEAN
    out *= _INV_STD
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def pixel_values_of(image: Image.Image) -> np.ndarray:
    """A decoded image -> CLIP ``pixel_values`` [3, 224, 224] float32."""
    return normalize(resize_and_crop(image)[None])[0]
