"""Seeded test images, including hostile ones built byte by byte (no file fixtures to drift)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A smooth seeded gradient with noise: realistic enough that resampling details matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (7 + seed) + rng.uniform(0, 6)),
            128 + 100 * np.cos(y / (11 + seed) + rng.uniform(0, 6)),
            128 + 60 * np.sin((x + y) / 17),
        ],
        axis=-1,
    )
    base += rng.normal(0, 12, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels (one empty row of
    data): what a decompression bomb looks like to a check that reads headers only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0"))
        + _chunk(b"IEND", b"")
    )


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (400 M by default).

    Only the header is honest: one zlib stream of a few rows follows. A decoder that trusts the header
    and allocates first would need over a gigabyte; the guard must refuse it from the header alone.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + b"\x00" * (width * 3), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """A valid JPEG header with most of its scan data cut off."""
    data = photo(64, 64, seed=3)
    return data[: len(data) // 3]
