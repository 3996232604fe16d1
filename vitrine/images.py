"""Which images Vitrine accepts, decided once for the gateway and for Triton's pre-processing.

Formats, byte and pixel budgets and the smallest side are checked on the header alone
(:func:`check_header`, what the gateway does before an image costs a Triton round trip), and again with the
pixels decoded (:func:`open_image`, what the ``clip_image_preprocess`` model does). The same limits and
the same messages on both sides, so an image the gateway lets through is never refused by Triton for a
reason the gateway could have seen. A decompression bomb costs a header parse, not gigabytes of memory.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from vitrine.contracts import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; the message says why and is safe to return to a caller."""


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageRejected("image is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRejected(f"image is {len(data)} bytes; at most {MAX_IMAGE_BYTES} bytes are accepted")
    try:
        with warnings.catch_warnings():
            # PIL warns (and errors past 2x) on its own bomb limit; ours below is stricter and explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(
            "image bytes are not a JPEG, PNG or WebP image (not a decodable image header)"
        ) from None
    except Image.DecompressionBombError:
        # PIL's own guard fires in open() beyond twice its limit, before the size is exposed to us.
        raise ImageRejected(
            f"image declares far too many pixels; at most {MAX_IMAGE_PIXELS} pixels are accepted"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"image bytes are not a readable image ({str(exc)[:200]})") from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageRejected(f"image format {image.format} is not accepted; send JPEG, PNG or WebP")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height} pixels; "
            f"at most {MAX_IMAGE_PIXELS} pixels are accepted"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageRejected(
            f"image is {width}x{height} pixels; its shorter side must be at least {MIN_IMAGE_SIDE}"
        )
    return image


def check_header(data: bytes) -> None:
    """Every rule that the header can decide (format, bytes, declared pixels, smallest side); cheap."""
    _open(data).close()


def open_image(data: bytes, draft_size: int = 0) -> Image.Image:
    """An accepted image with its pixels decoded; corrupt or truncated pixel data is refused too.

    ``draft_size`` > 0: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    at least that long, so the decoder skips detail a later downscale to that size would discard (about
    half the decode-and-resize time of a 640x640 photo, embeddings within cosine 0.99999 of a full
    decode: docs/BENCHMARKS.md). Other formats decode in full."""
    image = _open(data)
    if draft_size > 0 and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"image data is corrupt or truncated ({str(exc)[:200]})") from None
    return image
