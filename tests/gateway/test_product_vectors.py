"""A batch of products embedded in few requests; a bad photo in a chunk is found alone, its neighbours
keep their vectors; an outage raises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from gateway.errors import Dependency, InvalidInput, Unavailable
from gateway.product_vectors import IMAGE_CHUNK, product_vectors
from vitrine.catalog import Product
from vitrine.items import IMAGE, MINILM, TITLE


def _vec(key: str) -> np.ndarray:
    return np.frombuffer(key.encode().ljust(16, b"."), dtype=np.uint8)[:16].astype(np.float32)


class PerItem:
    """Embedder and sentence embedder, one item per call; ``b"bad"`` is a photo that does not decode."""

    def __init__(self, outage: bool = False) -> None:
        self.calls: list[str] = []
        self.outage = outage

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        self.calls.append("image")
        if image == b"bad":
            raise InvalidInput("not a decodable image")
        return _vec(image.decode())

    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        self.calls.append("text")
        return _vec(text), False

    async def embed_minilm(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        self.calls.append("minilm")
        return _vec("m" + text), False


class Batched(PerItem):
    async def embed_images(self, images: Sequence[bytes], timeout: float | None) -> np.ndarray:
        self.calls.append(f"images:{len(images)}")
        if self.outage:
            raise Unavailable(Dependency.TRITON, "down")
        if b"bad" in images:
            raise InvalidInput("not a decodable image")
        return np.stack([_vec(i.decode()) for i in images])

    async def embed_texts(self, texts: Sequence[str], timeout: float | None) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(f"texts:{len(texts)}")
        return np.stack([_vec(t) for t in texts]), np.zeros(len(texts), bool)

    async def embed_minilms(
        self, texts: Sequence[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(f"minilms:{len(texts)}")
        return np.stack([_vec("m" + t) for t in texts]), np.zeros(len(texts), bool)


N, BAD = 20, 5


def _items() -> list[tuple[Product, bytes]]:
    return [
        (Product(id=f"p{i}", title=f"t{i}", image_uri="x.jpg"), b"bad" if i == BAD else f"i{i}".encode())
        for i in range(N)
    ]


@pytest.mark.parametrize("embedder", [Batched(), PerItem()], ids=["batched", "per-item"])
async def test_every_item_gets_its_vectors_and_the_bad_photo_alone_is_refused(embedder: PerItem) -> None:
    rows = await product_vectors(embedder, embedder, _items(), 30.0)
    assert isinstance(rows[BAD], InvalidInput) and "'p5'" in str(rows[BAD])
    for i, row in enumerate(rows):
        if i == BAD:
            continue
        assert isinstance(row, dict) and set(row) == {IMAGE, TITLE, MINILM}
        assert np.array_equal(row[IMAGE], _vec(f"i{i}")) and np.array_equal(row[TITLE], _vec(f"t{i}"))
        assert np.array_equal(row[MINILM], _vec(f"mt{i}"))


async def test_batched_requests_carry_chunks_and_only_the_refused_chunk_goes_again_per_item() -> None:
    embedder = Batched()
    await product_vectors(embedder, embedder, _items(), 30.0)
    chunks = [c for c in embedder.calls if c.startswith("images:")]
    assert chunks == [f"images:{IMAGE_CHUNK}", f"images:{IMAGE_CHUNK}", f"images:{N - 2 * IMAGE_CHUNK}"]
    assert embedder.calls.count("image") == IMAGE_CHUNK  # the chunk holding the bad photo, item by item
    assert "texts:20" in embedder.calls and "minilms:20" in embedder.calls
    assert "text" not in embedder.calls and "minilm" not in embedder.calls


async def test_an_outage_raises_instead_of_blaming_items() -> None:
    with pytest.raises(Unavailable):
        await product_vectors(Batched(outage=True), None, _items(), 30.0)
