"""Deploy what ``vitrine up`` trained (``operations.trained_defaults``) to the running stack, cheaply.

The adapted encoder and the trained cross-encoder become a new version in the artifacts
(``adapt.serving.export_version``: heads fused into the towers, validated against PyTorch), the live
repository is rendered again and every Triton replica loads the version while serving. The catalog is
not embedded again: a product's adapted vector is the adapter's head applied to its stored base vector,
which is what the fused tower computes from its photo and title (checked in the run on a few products
through Triton, photos included), so the new spaces ``image.N`` / ``title.N`` are filled from the index's
own vectors in seconds where re-embedding the photos takes minutes. Then the serving pointer switches
every gateway (as ``vitrine adapt deploy`` does: the pending version first, so a product ingested
meanwhile gets its adapted vectors too) and ``up`` waits until each gateway says it serves the versions.

Every step finds what is already in place and skips it, so a second ``up`` deploys nothing again.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_repository.render import RenderOptions
from vitrine.catalog import Product, read_catalog
from vitrine.contracts import BASE_VERSION

MIN_COSINE = 0.999
"""Head over a stored vector vs the fused tower over the product's photo (served through Triton)."""
SETTLE_S = 2.0
"""How long gateways get to see the pending version before the new spaces are filled (> their health
interval, 1 s by default)."""


class NotIngested(RuntimeError):
    """Some catalog products have no stored vectors yet (an interrupted ingest): nothing to train on."""


class DeployError(RuntimeError):
    """The trained version cannot be served as trained; nothing was switched."""


@dataclass(frozen=True)
class Live:
    """The running stack a deployment acts on."""

    artifacts: Path
    repo: Path
    render: RenderOptions
    triton_urls: tuple[str, ...]
    index_address: str
    collection: str
    serving_file: str
    state_url: str
    gateway_pages: tuple[str, ...]
    """Each gateway's HTTP root (``http://host:port/``), asked which versions it serves."""

    @classmethod
    def of(cls, stack: Any) -> Live:
        """From an ``operations.assembly.Stack`` whose Tritons, index and gateways are started."""
        gateways = list(stack.gateways)
        config = gateways[0].config
        return cls(
            artifacts=Path(stack.artifacts),
            repo=Path(stack.triton.repo),
            render=stack.render,
            triton_urls=tuple(t.grpc_url for t in stack.tritons),
            index_address=config.index_address,
            collection=config.pipeline.collection,
            serving_file=config.serving_file,
            state_url=getattr(config, "state_url", ""),
            gateway_pages=tuple(
                f"http://127.0.0.1:{g.config.http_port}/" for g in gateways if g.config.http_port > 0
            ),
        )


def catalog_products(catalog: Path) -> list[Product]:
    return [p for p in read_catalog(catalog) if isinstance(p, Product)]


async def stored_vectors(
    index_address: str, collection: str, ids: Sequence[str], spaces: Sequence[str], batch: int = 256
) -> dict[str, np.ndarray]:
    """Each space's stored vector of every product, rows in ``ids`` order (the towers' output: they
    L2-normalise inside the graph, and the index keeps inner-product vectors normalised)."""
    from gateway.index_backends import open_index

    index = open_index(index_address, collection)
    got: dict[str, dict[str, np.ndarray]] = {}
    try:
        for start in range(0, len(ids), batch):
            for pid, (_, vectors) in (await index.get(ids[start : start + batch], 60.0)).items():
                got[pid] = vectors
    finally:
        await index.close()
    missing = [pid for pid in ids if pid not in got or any(s not in got[pid] for s in spaces)]
    if missing:
        raise NotIngested(f"{len(missing)} catalog products have no stored vectors yet (first: {missing[0]})")
    return {s: np.stack([got[pid][s] for pid in ids]).astype(np.float32) for s in spaces}


def next_version(artifacts: Path) -> int:
    """One past every version the artifacts hold: versions are never overwritten."""
    from adapt.serving import VERSIONS_DIR

    root = artifacts / VERSIONS_DIR
    found = [int(d.name) for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []
    return max([BASE_VERSION, *found]) + 1


def export(artifacts: Path, version: int, heads: Any, cross_encoder: Any, source: dict[str, Any]) -> None:
    """The trained models that won as ``version`` of the encoders and/or the cross-encoder."""
    from adapt.serving import export_version

    if heads is None and cross_encoder is None:
        return
    export_version(heads, artifacts, str(version), source, measure=False, cross_encoder=cross_encoder)


def _head(heads: Any, image: np.ndarray, title: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        return (
            heads.image(torch.from_numpy(image)).numpy().astype(np.float32),
            heads.text(torch.from_numpy(title)).numpy().astype(np.float32),
        )


async def _filled(live: Live, version: int, catalog: Path) -> bool:
    """Whether ``version``'s spaces hold the catalog's vectors: the first and the last product's adapted
    title vector (written last) are there."""
    from gateway.index_backends import open_index
    from vitrine.items import IMAGE, TITLE, encoder_space

    products = catalog_products(catalog)
    ends = list(dict.fromkeys([products[0].id, products[-1].id]))
    index = open_index(live.index_address, live.collection)
    try:
        if encoder_space(TITLE, version) not in await index.spaces():
            return False
        got = await index.get(ends, 30.0)
    finally:
        await index.close()
    spaces = (encoder_space(IMAGE, version), encoder_space(TITLE, version))
    return all(pid in got and all(s in got[pid][1] for s in spaces) for pid in ends)


async def _check_fused(live: Live, version: int, catalog: Path, heads: Any, sample: Sequence[str]) -> float:
    """Smallest cosine, over ``sample`` products, between the head over the stored vectors and the
    fused towers over the product's photo and title, served by Triton as ``version``."""
    from gateway.triton_client import TritonModels
    from vitrine.catalog import resolve_image
    from vitrine.items import IMAGE, TITLE

    products = {p.id: p for p in catalog_products(catalog)}
    base = await stored_vectors(live.index_address, live.collection, list(sample), (IMAGE, TITLE))
    image, title = _head(heads, base[IMAGE], base[TITLE])
    models = TritonModels(live.triton_urls[0])
    worst = 1.0
    try:
        for i, pid in enumerate(sample):
            photo = resolve_image(products[pid], catalog.parent)
            assert photo is not None
            served_image = await models.embed_image(photo.read_bytes(), 60.0, version)
            served_title, _ = await models.embed_text(products[pid].title, 60.0, version)
            worst = min(worst, float(served_image @ image[i]), float(served_title @ title[i]))
    finally:
        await models.close()
    return worst


async def fill_spaces(live: Live, version: int, catalog: Path, heads: Any) -> int:
    """The adapted spaces of ``version`` filled from the stored base vectors; returns products written.
    Refuses (``DeployError``) when the fused towers disagree with the head on the catalog's own data."""
    from gateway.index_backends import open_index
    from vitrine.items import IMAGE, TITLE, encoder_space

    ids = [p.id for p in catalog_products(catalog)]
    worst = await _check_fused(live, version, catalog, heads, ids[:2])
    if worst < MIN_COSINE:
        raise DeployError(
            f"fused towers of version {version} differ from head(stored vector): cosine {worst:.5f}"
        )
    base = await stored_vectors(live.index_address, live.collection, ids, (IMAGE, TITLE))
    image, title = _head(heads, base[IMAGE], base[TITLE])
    index = open_index(live.index_address, live.collection)
    try:
        missing = await index.upsert_vectors(
            encoder_space(IMAGE, version), dict(zip(ids, image, strict=True)), 120.0
        )
        missing += await index.upsert_vectors(
            encoder_space(TITLE, version), dict(zip(ids, title, strict=True)), 120.0
        )
    finally:
        await index.close()
    if missing:
        raise DeployError(f"{len(set(missing))} products vanished while their adapted vectors were written")
    return len(ids)


async def _load(live: Live, encoder_version: int, reranker_version: int) -> None:
    """Every Triton replica serves the versions (the spaces of an adapted encoder exist)."""
    from gateway.triton_client import TritonModels
    from operations import rollout

    for url in live.triton_urls:
        if encoder_version != BASE_VERSION:
            target = rollout.RolloutTarget(url, live.index_address, live.collection, Path(live.serving_file))
            await rollout.prepare_spaces(target, encoder_version)
        if reranker_version != BASE_VERSION:
            models = TritonModels(url)
            try:
                if await rollout.load_reranker(models, reranker_version) != reranker_version:
                    raise DeployError(
                        f"Triton at {url} does not serve cross-encoder version {reranker_version}"
                    )
            finally:
                await models.close()


def _switch(live: Live, change: Any) -> dict[str, Any]:
    from operations.rollout import serving_pointer

    pointer = serving_pointer(Path(live.serving_file), live.state_url)
    try:
        return pointer.update(change)
    finally:
        pointer.close()


def serving(page: str, timeout: float = 10.0) -> dict[str, Any]:
    """A gateway's ``/v1/serving``: the versions it serves and its re-rank default."""
    with urllib.request.urlopen(f"{page}v1/serving", timeout=timeout) as reply:
        return dict(json.loads(reply.read()))


def wait_served(live: Live, encoder_version: int, reranker_version: int, timeout_s: float = 60.0) -> None:
    """Until every gateway answers with the versions (each follows the pointer within a health interval)."""
    deadline = time.monotonic() + timeout_s
    for page in live.gateway_pages:
        while True:
            try:
                got = serving(page)
                if (got["encoder_version"], got["reranker_version"]) == (encoder_version, reranker_version):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DeployError(
                    f"gateway {page} does not serve versions {encoder_version}/{reranker_version}"
                )
            time.sleep(0.2)


async def deploy(
    live: Live, catalog: Path, encoder_version: int, reranker_version: int, heads: Any
) -> dict[str, Any]:
    """Serve ``encoder_version`` and ``reranker_version`` (1: the exported models); idempotent."""
    from model_repository.render import render_repository

    t0 = time.perf_counter()
    render_repository(live.artifacts, live.repo, live.render)
    await _load(live, encoder_version, reranker_version)
    done: dict[str, Any] = {"filled": 0}
    if encoder_version != BASE_VERSION and not await _filled(live, encoder_version, catalog):
        _switch(live, lambda state: {**state, "pending_version": encoder_version})
        await asyncio.sleep(SETTLE_S)
        done["filled"] = await fill_spaces(live, encoder_version, catalog, heads)

    def switch(state: dict[str, Any]) -> dict[str, Any]:
        now = (
            int(state.get("encoder_version", BASE_VERSION)),
            int(state.get("reranker_version", BASE_VERSION)),
        )
        if now == (encoder_version, reranker_version) and "pending_version" not in state:
            return state
        history = [*state.get("history", [])]
        if now != (encoder_version, reranker_version):
            history.append({"encoder_version": now[0], "reranker_version": now[1]})
        rest = {k: v for k, v in state.items() if k not in ("pending_version", "history")}
        return {
            **rest,
            "encoder_version": encoder_version,
            "reranker_version": reranker_version,
            "history": history,
            "switched_at": time.time(),
            "switched_by": "vitrine up (trained models that beat the exported ones on held-out data)",
        }

    await asyncio.to_thread(_switch, live, switch)
    await asyncio.to_thread(wait_served, live, encoder_version, reranker_version)
    done["seconds"] = round(time.perf_counter() - t0, 1)
    return done
