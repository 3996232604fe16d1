"""A batch of products embedded for storage: photos and titles in few Triton requests.

A search embeds one query; an upsert embeds many products. One request per photo and per title spent the
image encoder's time on per-request overhead and left it idle between requests, so an embedder that takes
many items per request (``BatchEmbedder``: Triton's client) gets chunks of ``IMAGE_CHUNK`` photos and
``TEXT_CHUNK`` titles per request, every chunk sent at once so each encoder instance has work queued; any
other embedder is called once per item. A chunk refused as invalid (a photo whose header passed but whose
body does not decode) is sent again one item at a time, so only the bad item is reported and its
neighbours are stored. Dependency outages raise: nothing can be stored then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from gateway.errors import InvalidInput
from gateway.types import Embedder, SentenceEmbedder
from vitrine.catalog import Product
from vitrine.contracts import EMBED_IMAGE_IO, EMBED_MINILM_IO, EMBED_TEXT_IO
from vitrine.items import IMAGE, MINILM, TITLE, sentence_text

T = TypeVar("T")

IMAGE_CHUNK = min(8, EMBED_IMAGE_IO.max_batch_size)
"""Photos per request: several chunks of one upsert batch run on the encoder's instances side by side,
and a bad photo costs a re-send of 8 (within ``EMBED_IMAGE_IO.max_batch_size``)."""
TEXT_CHUNK = min(EMBED_TEXT_IO.max_batch_size, EMBED_MINILM_IO.max_batch_size)
"""Titles per request: text encoders batch well, one request carries the whole upsert batch."""


@runtime_checkable
class BatchEmbedder(Protocol):
    """An ``Embedder`` that also takes many photos or titles per request (rows in the items' order)."""

    async def embed_images(self, images: Sequence[bytes], timeout: float | None) -> np.ndarray: ...

    async def embed_texts(
        self, texts: Sequence[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class BatchSentenceEmbedder(Protocol):
    async def embed_minilms(
        self, texts: Sequence[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]: ...


Vector = np.ndarray | BaseException


async def _chunked(
    many: Callable[[Sequence[T]], Awaitable[np.ndarray]] | None,
    one: Callable[[T], Awaitable[np.ndarray]],
    items: Sequence[T],
    chunk: int,
) -> list[Vector]:
    """One vector (or the item's error) per item: chunks through ``many`` all at once, or every item
    through ``one`` when there is no ``many``; a chunk refused as invalid goes again item by item."""

    async def part(xs: Sequence[T]) -> list[Vector]:
        if many is not None and len(xs) > 1:
            try:
                return list(await many(xs))
            except InvalidInput:
                pass  # which item? each alone says
        return list(await asyncio.gather(*(one(x) for x in xs), return_exceptions=True))

    size = chunk if many is not None else 1
    parts = await asyncio.gather(
        *(part(items[a : a + size]) for a in range(0, len(items), size)), return_exceptions=True
    )
    out: list[Vector] = []
    for p in parts:
        if isinstance(p, BaseException):
            raise p
        out.extend(p)
    return out


def _vectors(
    embed: Callable[[T], Awaitable[tuple[np.ndarray, object]]],
) -> Callable[[T], Awaitable[np.ndarray]]:
    """A text embedding call without its truncation flags."""

    async def vectors(x: T) -> np.ndarray:
        return (await embed(x))[0]

    return vectors


def _image_column(
    embedder: Embedder, images: Sequence[bytes], budget: float | None
) -> Awaitable[list[Vector]]:
    many = partial(embedder.embed_images, timeout=budget) if isinstance(embedder, BatchEmbedder) else None
    return _chunked(many, partial(embedder.embed_image, timeout=budget), images, IMAGE_CHUNK)


def _title_column(embedder: Embedder, titles: Sequence[str], budget: float | None) -> Awaitable[list[Vector]]:
    many = (
        _vectors(partial(embedder.embed_texts, timeout=budget))
        if isinstance(embedder, BatchEmbedder)
        else None
    )
    return _chunked(many, _vectors(partial(embedder.embed_text, timeout=budget)), titles, TEXT_CHUNK)


def _sentence_column(
    sentence: SentenceEmbedder, texts: Sequence[str], budget: float | None
) -> Awaitable[list[Vector]]:
    many = (
        _vectors(partial(sentence.embed_minilms, timeout=budget))
        if isinstance(sentence, BatchSentenceEmbedder)
        else None
    )
    return _chunked(many, _vectors(partial(sentence.embed_minilm, timeout=budget)), texts, TEXT_CHUNK)


async def product_vectors(
    embedder: Embedder,
    sentence: SentenceEmbedder | None,
    items: Sequence[tuple[Product, bytes]],
    budget: float | None,
) -> list[dict[str, np.ndarray] | InvalidInput]:
    """Each item's vectors by space (``image``, ``title``, and ``minilm`` when ``sentence`` is given), or
    why it cannot be stored (``InvalidInput``); every column of the batch is embedded concurrently."""
    columns = [
        _image_column(embedder, [image for _, image in items], budget),
        _title_column(embedder, [p.title for p, _ in items], budget),
    ]
    spaces = [IMAGE, TITLE]
    if sentence is not None:
        columns.append(_sentence_column(sentence, [sentence_text(p) for p, _ in items], budget))
        spaces.append(MINILM)
    done = await asyncio.gather(*columns, return_exceptions=True)
    for column in done:
        if isinstance(column, BaseException):
            raise column
    rows: list[dict[str, np.ndarray] | InvalidInput] = []
    for j, (product, _) in enumerate(items):
        row = [column[j] for column in done if not isinstance(column, BaseException)]
        for res in row:
            if isinstance(res, BaseException) and not isinstance(res, InvalidInput):
                raise res
        failed = next((res for res in row if isinstance(res, BaseException)), None)
        if failed is not None:
            rows.append(InvalidInput(f"product {product.id!r}: {failed}"))
        else:
            rows.append({space: np.asarray(res) for space, res in zip(spaces, row, strict=True)})
    return rows


async def version_vectors(
    embedder: Embedder, items: Sequence[tuple[Product, bytes]], budget: float | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, title) vectors of another encoder version for items its base version already embedded;
    any failure raises (the base version accepted every one of them)."""
    images, titles = await asyncio.gather(
        _image_column(embedder, [image for _, image in items], budget),
        _title_column(embedder, [p.title for p, _ in items], budget),
    )
    for res in (*images, *titles):
        if isinstance(res, BaseException):
            raise res
    return [(np.asarray(i), np.asarray(t)) for i, t in zip(images, titles, strict=True)]
