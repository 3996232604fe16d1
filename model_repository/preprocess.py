"""Image decoding and CLIP pre-processing as plain functions, shared by the Triton model and the tests.

The Python-backend model only moves tensors in and out; everything that can go wrong with a request's
bytes is decided here and raised as :class:`InputError`, so the model can turn it into a per-request
``INVALID_ARG`` while the rest of the batch proceeds.

The transform follows transformers' ``CLIPImageProcessor`` (RGB, shortest side to 224 with PIL bicubic on
uint8, center crop, rescale, normalise) so served embeddings match the PyTorch reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vitrine import images
from vitrine.contracts import CLIP_IMAGE_MEAN, CLIP_IMAGE_SIZE, CLIP_IMAGE_STD, MAX_TEXT_CHARS

_MEAN = np.asarray(CLIP_IMAGE_MEAN, dtype=np.float32)
_INV_STD = (1.0 / np.asarray(CLIP_IMAGE_STD, dtype=np.float32)).astype(np.float32)
_SCALE = np.float32(1.0 / 255.0)


class InputError(ValueError):
    """The request's content is unusable; the message is returned to the caller as-is."""


def open_image(data: bytes) -> Image.Image:
    """Open and validate an encoded image by Vitrine's image rules (``vitrine.images``, which the gateway
    applies to the header too), pixels decoded."""
    try:
        return images.open_image(data)
    except images.ImageRejected as exc:
        raise InputError(str(exc)) from None


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


def pixel_values(data: bytes) -> np.ndarray:
    """Encoded image bytes -> CLIP ``pixel_values`` [3, 224, 224] float32."""
    return normalize(resize_and_crop(open_image(data))[None])[0]


def decode_text(raw: object, what: str = "text") -> str:
    """One BYTES element -> str, refusing empty, non-UTF-8 and absurdly long text with a clear message."""
    if isinstance(raw, np.ndarray):
        raw = raw.item()
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        raise InputError(f"{what} must be BYTES, got {type(raw).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"{what} is {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted")
    if not text.strip():
        raise InputError(f"{what} is empty")
    return text


def decode_texts(values: np.ndarray | Sequence[object], what: str = "text") -> list[str]:
    flat = np.asarray(values, dtype=object).reshape(-1)
    return [decode_text(v, what) for v in flat]
