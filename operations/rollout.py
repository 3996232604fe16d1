"""Roll an adapted encoder version out to a live stack, and back.

``deploy``: the adapted towers are already Triton versions of the encoders (``adapt.serving``, rendered
by ``model_repository``); the catalog is re-embedded by that version's pinned ensembles into optional
index spaces of its own (``vitrine.items.encoder_space``: ``image.2``, ``title.2``) with
``UpsertVectors``, beside the live ``image``/``title`` spaces, while the gateway keeps answering from
the old version. Only when every product has its new vectors is the serving pointer replaced
(``gateway.serving_pointer``: the serving file, by rename, or with ``state_url`` the database's row,
with a NOTIFY in the same transaction); each gateway sees it within a health interval (at once over
NOTIFY) and switches its query encoder and its spaces in one assignment, so no search ever compares a
query vector of one version with product vectors of another. The old spaces stay, so ``rollback`` is
the same write pointing back.

Why new spaces in the live collection rather than a new collection behind an alias: the re-index writes
only vectors (no payload copy), product updates made during the re-index keep their new vectors (an
upsert that omits an optional space keeps it), and both versions share one set of attributes, so
filters select the same products before and after the switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gateway.errors import GatewayError
from gateway.index_backends import open_index
from gateway.serving_pointer import Change, FileServingPointer, ServingPointer, initial_state
from gateway.state import open_pointer
from gateway.triton_client import TritonModels
from vitrine.catalog import Product, read_catalog, resolve_image
from vitrine.contracts import (
    BASE_VERSION,
    EMBED_DIM,
    EMBED_IMAGE_IO,
    EMBED_TEXT_IO,
    RERANK_IO,
    Model,
    ensemble_name,
)
from vitrine.items import IMAGE, TITLE, encoder_space

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """A deploy or rollback cannot proceed; the message says what to do."""


@dataclass(frozen=True)
class RolloutTarget:
    """The live stack a rollout acts on."""

    triton_url: str
    index_address: str
    collection: str
    serving_file: Path
    index_kind: str = "flat"
    state_url: str = ""
    """The gateways' ``--state-url``: the pointer is the database's row, not ``serving_file``."""

    def pointer(self) -> ServingPointer:
        return serving_pointer(self.serving_file, self.state_url)


def serving_pointer(serving_file: Path, state_url: str = "") -> ServingPointer:
    pointer = open_pointer(serving_file, state_url)
    if pointer is None:
        raise RolloutError("no serving pointer: give the gateways' --serving-file or --state-url")
    return pointer


def read_serving(path: Path) -> dict[str, Any]:
    """The serving file's document (the initial one when there is no file)."""
    return FileServingPointer(path).read() or initial_state()


def catalog_products(catalog: Path) -> list[tuple[Product, Path]]:
    out = []
    for row in read_catalog(catalog):
        if isinstance(row, Product):
            image = resolve_image(row, catalog.parent)
            if image is not None and image.is_file():
                out.append((row, image))
    return out


def _servers(models: TritonModels) -> list[Any]:
    """Every Triton replica's client: each replica loads a version, or the gateways would mark the ones
    that lack it down until someone loads it there too."""
    servers = [replica.client for replica in models.replicas.replicas]
    if not servers:
        raise RolloutError("no Triton replica to load the version on (the Triton DNS name resolved to none)")
    return servers


async def _ready(models: TritonModels, version: int) -> bool:
    for client in _servers(models):
        for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO):
            if not await client.is_model_ready(ensemble_name(io.model, version)):
                return False
    return True


async def _load(models: TritonModels, version: int) -> None:
    """Have Triton serve ``version``: reload the encoders (their version policy now names it; the old
    version keeps answering meanwhile), then load the version's pinned ensembles. Needs Triton's explicit
    model control, as the stack starts it; a server started over the rendered repository already has it."""
    if await _ready(models, version):
        return
    try:
        for client in _servers(models):
            for encoder in (Model.CLIP_TEXT_ENCODER, Model.CLIP_IMAGE_ENCODER):
                await client.load_model(encoder.value)
            for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO):
                await client.load_model(ensemble_name(io.model, version))
    except Exception as exc:
        raise RolloutError(
            f"Triton does not serve encoder version {version} ({str(exc)[:200]}): render the model "
            "repository from the artifacts (`vitrine adapt deploy --artifacts A --repo R` does) and run "
            "Triton with --model-control-mode=explicit, or restart it"
        ) from None
    if not await _ready(models, version):
        raise RolloutError(f"Triton loaded encoder version {version} but its ensembles are not ready")


async def load_reranker(models: TritonModels, version: int) -> int:
    """Have Triton serve cross-encoder ``version`` when the repository holds it (``vitrine adapt export``
    adds one when a re-ranker was trained); returns the cross-encoder version the gateways should use:
    ``version``, or 1 when this version ships no cross-encoder of its own."""
    name = ensemble_name(RERANK_IO.model, version)
    servers = _servers(models)
    try:
        if all([await client.is_model_ready(name) for client in servers]):
            return version
        index = await models.client.get_model_repository_index(as_json=True)
    except Exception as exc:
        raise RolloutError(f"Triton unreachable while looking for {name} ({str(exc)[:200]})") from None
    if name not in {m.get("name") for m in index.get("models", [])}:
        return BASE_VERSION
    try:
        for client in servers:
            await client.load_model(Model.CROSS_ENCODER.value)
            await client.load_model(name)
    except Exception as exc:
        raise RolloutError(f"Triton could not load {name} ({str(exc)[:200]})") from None
    if not all([await client.is_model_ready(name) for client in servers]):
        raise RolloutError(f"Triton loaded {name} but it is not ready on every replica")
    return version


def render(artifacts: Path, repo: Path) -> None:
    """Render the live repository again from the artifacts, now holding the adapted versions (files
    are placed beside the served ones; a running Triton reads them only when ``_load`` asks it to)."""
    from model_repository.render import RenderOptions, render_repository

    render_repository(artifacts, repo, RenderOptions())


async def serve_version(triton_url: str, version: int, artifacts: Path, repo: Path) -> None:
    """Render ``repo`` from ``artifacts`` and have the running Triton load ``version`` while serving."""
    render(artifacts, repo)
    models = TritonModels(triton_url)
    try:
        await _load(models, version)
    finally:
        await models.close()


async def prepare_spaces(target: RolloutTarget, version: int) -> None:
    """Triton serving ``version`` and the index holding its (empty) spaces; a resumed deploy finds them."""
    models = TritonModels(target.triton_url)
    index = open_index(target.index_address, target.collection, (), target.index_kind)
    try:
        await _load(models, version)
        for base in (IMAGE, TITLE):
            try:
                await index.add_space(encoder_space(base, version), EMBED_DIM, target.index_kind)
            except GatewayError as exc:
                message = str(exc).lower()
                if "already" not in message and "exist" not in message:  # a resumed deploy finds them
                    raise
    finally:
        await models.close()
        await index.close()


async def reembed(
    target: RolloutTarget,
    version: int,
    products: Sequence[tuple[Product, Path]],
    batch: int = 16,
    timeout: float = 120.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``version``'s vectors of every product into its own spaces (``prepare_spaces`` made them and
    had Triton load the version); the live spaces are untouched."""
    models = TritonModels(target.triton_url)
    index = open_index(target.index_address, target.collection, (), target.index_kind)
    started = time.perf_counter()
    try:
        missing: list[str] = []
        bar = tqdm(total=len(products), desc=f"re-embed v{version}", unit="product", disable=not progress)
        for start in range(0, len(products), batch):
            chunk = products[start : start + batch]
            vecs = await asyncio.gather(
                *(models.embed_image(path.read_bytes(), timeout, version) for _, path in chunk),
                *(models.embed_text(p.title, timeout, version) for p, _ in chunk),
            )
            n = len(chunk)
            image = {p.id: vecs[i] for i, (p, _) in enumerate(chunk)}
            title = {p.id: vecs[n + i][0] for i, (p, _) in enumerate(chunk)}
            missing += await index.upsert_vectors(encoder_space(IMAGE, version), image, timeout)
            missing += await index.upsert_vectors(encoder_space(TITLE, version), title, timeout)
            bar.update(n)
        bar.close()
    finally:
        await models.close()
        await index.close()
    return {
        "version": version,
        "products": len(products),
        "missing_ids": sorted(set(missing)),
        "seconds": round(time.perf_counter() - started, 2),
    }


async def deploy(
    target: RolloutTarget,
    version: int,
    catalog: Path,
    batch: int = 16,
    progress: bool = True,
    artifacts: Path | None = None,
    repo: Path | None = None,
    settle_s: float = 3.0,
) -> dict[str, Any]:
    """Re-embed the catalog with ``version``, then switch every gateway following the serving pointer:
    to the version's encoders and, when the version ships one, its cross-encoder (both in one write).
    With ``artifacts`` and ``repo``, the live repository is rendered again first (the adapted version
    exported into the artifacts by ``vitrine adapt export``) and Triton loads it while serving.
    ``settle_s``: how long gateways get to see the pending version before the re-index starts (more than
    their health interval, 1 s by default)."""
    pointer = target.pointer()
    try:
        current = _versions(await asyncio.to_thread(_read, pointer))
        if current[0] == version:
            raise RolloutError(f"encoder version {version} already serves")
        if artifacts is not None and repo is not None:
            render(artifacts, repo)
        # Gateways learn the pending version first (its spaces exist by then), so what any of them
        # ingests from now on gets its vectors too; the catalog file's products are re-embedded after
        # they had time to see it.
        await prepare_spaces(target, version)
        await asyncio.to_thread(_update, pointer, lambda state: {**state, "pending_version": version})
        await asyncio.sleep(settle_s)
        report = await reembed(target, version, catalog_products(catalog), batch, progress=progress)
        models = TritonModels(target.triton_url)
        try:
            reranker_version = await load_reranker(models, version)
        finally:
            await models.close()
        report["reranker_version"] = reranker_version

        def switch(state: dict[str, Any]) -> dict[str, Any]:
            encoder, reranker = _versions(state)
            return {
                "encoder_version": version,
                "reranker_version": reranker_version,
                "history": [
                    *state.get("history", []),
                    {"encoder_version": encoder, "reranker_version": reranker},
                ],
                "switched_at": time.time(),
                "reindex": report,
            }

        await asyncio.to_thread(_update, pointer, switch)
    finally:
        pointer.close()
    return report


def _versions(entry: Any) -> tuple[int, int]:
    """(encoder, cross-encoder) versions of a serving state or history entry; a bare number (files
    written before cross-encoders were versioned) is an encoder version with cross-encoder 1."""
    if isinstance(entry, dict):
        return int(entry.get("encoder_version", BASE_VERSION)), int(
            entry.get("reranker_version", BASE_VERSION)
        )
    return int(entry), BASE_VERSION


def _read(pointer: ServingPointer) -> dict[str, Any]:
    try:
        return pointer.read() or initial_state()
    except GatewayError as exc:  # the database is unreachable
        raise RolloutError(f"serving pointer {pointer.name}: {exc}") from None


def _update(pointer: ServingPointer, change: Change) -> dict[str, Any]:
    try:
        return pointer.update(change)
    except GatewayError as exc:
        raise RolloutError(f"serving pointer {pointer.name}: {exc}") from None


def rollback(serving_file: Path, state_url: str = "") -> tuple[int, int]:
    """Serve the previous versions again (their spaces were never touched); returns (encoder,
    cross-encoder) versions."""
    pointer = serving_pointer(serving_file, state_url)

    def back(state: dict[str, Any]) -> dict[str, Any]:
        history = list(state.get("history", []))
        if not history:
            raise RolloutError(f"nothing to roll back to: {pointer.name} records no previous version")
        encoder, reranker = _versions(history.pop())
        return {
            "encoder_version": encoder,
            "reranker_version": reranker,
            "history": history,
            "switched_at": time.time(),
        }

    try:
        return _versions(_update(pointer, back))
    finally:
        pointer.close()
