"""Image decoding and CLIP pre-processing as plain functions, shared by the Triton model and the tests.

The Python-backend model only moves tensors in and out; everything that can go wrong with a request's
bytes is decided here and raised as :class:`InputError`, so the model can turn it into a per-request
``INVALID_ARG`` while the rest of the batch proceeds.

The CLIP pixel transform itself lives in the kernel (``vitrine.pixels``): training code uses the same one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vitrine import images
from vitrine.contracts import MAX_TEXT_CHARS
from vitrine.pixels import normalize, resize_and_crop

__all__ = [
    "InputError",
    "decode_text",
    "decode_texts",
    "normalize",
    "open_image",
    "pixel_values",
    "resize_and_crop",
]


class InputError(ValueError):
    """The request's content is unusable; the message is returned to the caller as-is."""


def open_image(data: bytes, draft_size: int = 0) -> Image.Image:
    """Open and validate an encoded image by Vitrine's image rules (``vitrine.images``, which the gateway
    applies to the header too), pixels decoded (JPEGs at a reduced DCT scale when ``draft_size`` > 0)."""
    try:
        return images.open_image(data, draft_size)
    except images.ImageRejected as exc:
        raise InputError(str(exc)) from None


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
