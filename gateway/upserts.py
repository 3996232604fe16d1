"""Storing a stream of products: per-item checks, batching, and progress a failed stream can still report.

A bad item is reported at its position in the stream and does not stop the others; items are embedded
and written in batches so Triton's dynamic batcher sees many images at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc

from gateway.errors import InvalidInput, status_of
from gateway.ingest import IngestRoots
from gateway.pipeline import Pipeline
from gateway.types import check_image_header, check_product, require_photo
from vitrine.catalog import Product
from vitrine.errors import bounded


@dataclass(frozen=True)
class UpsertItem:
    """One product to store. ``image_path`` is read by the gateway from its ingest roots
    (``gateway.ingest``); ``error`` is set when the transport could not decode the item (it is
    reported, not stored)."""

    product: Product
    image: bytes = b""
    image_path: str = ""
    error: InvalidInput | None = None


@dataclass(frozen=True)
class ItemError:
    index: int
    id: str
    code: grpc.StatusCode
    message: str


@dataclass
class UpsertProgress:
    """How far a stream got, kept current while it runs, so a stream that fails part-way can still
    tell its caller what was stored: every item at a position below ``settled`` was either stored
    (``upserted`` counts them) or refused (``errors``); nothing at or after ``settled`` was stored,
    except that a batch whose index write ran out of time may have been."""

    upserted: int = 0
    settled: int = 0
    errors: list[ItemError] = field(default_factory=list)


def item_error(index: int, pid: str, exc: BaseException) -> ItemError:
    code, message = status_of(exc)
    return ItemError(index, bounded(pid, 200), code, message)


async def _load_image(item: UpsertItem, ingest: IngestRoots) -> bytes:
    if item.image or not item.image_path:
        return item.image
    return await ingest.read(item.image_path)


async def _aiter(items: AsyncIterable[UpsertItem] | Iterable[UpsertItem]) -> AsyncIterator[UpsertItem]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def upsert_products(
    pipeline: Pipeline,
    items: AsyncIterable[UpsertItem] | Iterable[UpsertItem],
    batch_size: int,
    timeout: Callable[[], float],
    ingest: IngestRoots,
    progress: UpsertProgress,
) -> tuple[int, list[ItemError]]:
    """Stores items in batches of ``batch_size``; returns how many were stored and the errors.
    ``timeout`` is read per batch; ``progress`` is kept current for a caller that must report a failure
    part-way. Items with the same id in one stream: the last stored one wins, whatever the batching
    (the pipeline keeps the last of a batch, and batches are written in stream order)."""
    batch: list[tuple[int, Product, bytes]] = []

    async def flush(settled: int) -> None:
        if batch:
            results = await pipeline.upsert([(p, img) for _, p, img in batch], timeout())
            for (index, product, _), err in zip(batch, results, strict=True):
                if err is None:
                    progress.upserted += 1
                else:
                    progress.errors.append(item_error(index, product.id, err))
            batch.clear()
        progress.settled = settled

    index = 0
    async for item in _aiter(items):
        try:
            if item.error is not None:
                raise item.error
            check_product(item.product)  # before its image costs a disk read
            image = await _load_image(item, ingest)
            require_photo(item.product, image)
            check_image_header(image)
            batch.append((index, item.product, image))
        except InvalidInput as exc:
            progress.errors.append(item_error(index, item.product.id, exc))
        index += 1
        if len(batch) >= batch_size:
            await flush(index)
        elif not batch:
            progress.settled = index
    await flush(index)
    progress.errors.sort(key=lambda e: e.index)
    return progress.upserted, progress.errors
