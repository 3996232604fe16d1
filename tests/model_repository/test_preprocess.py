"""Image and text pre-processing, checked without Triton against transformers' CLIP processor."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model_repository.preprocess import (
    InputError,
    decode_text,
    decode_texts,
    normalize,
    open_image,
    pixel_values,
    resize_and_crop,
)
from tests.model_repository.images import photo, png_bomb, truncated_jpeg
from vitrine.contracts import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, MAX_IMAGE_BYTES, MAX_TEXT_CHARS


@pytest.fixture(scope="module")
def clip_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    )


@pytest.mark.parametrize(
    ("width", "height", "fmt", "mode"),
    [
        (640, 480, "JPEG", "RGB"),  # landscape, downscale
        (300, 517, "PNG", "RGB"),  # portrait, odd long side
        (100, 150, "WEBP", "RGB"),  # upscale
        (224, 224, "PNG", "RGBA"),  # alpha dropped, no resize
        (333, 250, "PNG", "L"),  # greyscale to RGB
        (250, 250, "PNG", "P"),  # palette to RGB
    ],
)
def test_pixel_values_match_transformers_clip_processor(clip_processor, width, height, fmt, mode):
    data = photo(width, height, seed=width, fmt=fmt, mode=mode)
    ours = pixel_values(data)
    theirs = clip_processor([Image.open(io.BytesIO(data))], return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_center_crop_keeps_the_middle_of_a_wide_image():
    # Left third red, middle blue, right third green: the crop must be all blue.
    array = np.zeros((224, 672, 3), dtype=np.uint8)
    array[:, :224, 0] = 255
    array[:, 224:448, 2] = 255
    array[:, 448:, 1] = 255
    crop = resize_and_crop(Image.fromarray(array))
    assert crop.shape == (224, 224, 3)
    assert (crop[:, :, 2] == 255).all() and (crop[:, :, :2] == 0).all()


def test_normalize_is_clip_mean_std_in_channels_first():
    pixels = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    out = normalize(pixels)
    assert out.shape == (2, 3, 4, 4)
    expected = (1.0 - np.asarray(CLIP_IMAGE_MEAN)) / np.asarray(CLIP_IMAGE_STD)
    np.testing.assert_allclose(out[1, :, 2, 3], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image is empty"),
        (b"this is not an image at all", "not a JPEG, PNG or WebP image"),
        (truncated_jpeg(), "corrupt or truncated"),
        (photo(1, 1, fmt="PNG"), "shorter side must be at least 8"),
        (photo(200, 4, fmt="PNG"), "shorter side must be at least 8"),
        (png_bomb(), "at most 40000000 pixels are accepted"),
        (png_bomb(8000, 8000), "8000x8000 = 64000000 pixels; at most 40000000 pixels are accepted"),
        (b"\xff" * (MAX_IMAGE_BYTES + 1), f"at most {MAX_IMAGE_BYTES} bytes"),
    ],
    ids=["empty", "not-image", "truncated", "1x1", "thin", "bomb", "bomb-under-pil-limit", "too-many-bytes"],
)
def test_bad_images_are_refused_with_the_reason(data, message):
    with pytest.raises(InputError, match=message):
        open_image(data)


def test_other_formats_are_refused_by_name():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "BMP")
    with pytest.raises(InputError, match="format BMP is not accepted"):
        open_image(buf.getvalue())


def test_decode_text_accepts_utf8_and_refuses_empty_invalid_and_huge():
    assert decode_text(np.array("chaussures rouges ✓".encode(), dtype=object)) == "chaussures rouges ✓"
    assert decode_texts(np.array([[b"a"], [b"b"]], dtype=object)) == ["a", "b"]
    with pytest.raises(InputError, match="text is empty"):
        decode_text(b"")
    with pytest.raises(InputError, match="text is empty"):
        decode_text(b"   \n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        decode_text(b"\xff\xfe")
    with pytest.raises(InputError, match=f"at most {MAX_TEXT_CHARS}"):
        decode_text(b"x" * (MAX_TEXT_CHARS + 1))
