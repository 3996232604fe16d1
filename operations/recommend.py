"""Recommender operations: demo events, loading events, training, evaluation and deploying while serving.

Deploying version ``V`` of a trained recommender, in an order that never fails a request:

1. the item vectors go into a new optional index space ``rec.V`` (``AddVectorSpace`` + ``UpsertVectors``;
   searches of ``rec.V-1`` are untouched);
2. the user tower is rendered as version ``V`` of Triton's ``user_tower`` (assembled aside, renamed into
   place) and Triton is asked to load it; the model keeps its two latest versions, so ``V-1`` answers
   until ``V`` is ready and after;
3. the gateway reads the newest served version (cached for ``rec_version_ttl_s``) and pairs the tower's
   version ``V`` with the space ``rec.V``; requests already using ``V-1`` finish on ``V-1``;
4. versions older than ``V-1`` (repository directories and index spaces) are removed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.events import Event, read_events

EVENTS_PER_MESSAGE = 500
KEEP_VERSIONS = 2


def _say(message: str) -> None:
    print(f"[vitrine] {message}", file=sys.stderr, flush=True)


def generate_events(catalog: Path, out: Path, users: int, seed: int = 0, end: float | None = None) -> int:
    """Seeded demo behaviour over a catalog file, written as the JSONL import format."""
    import time

    from demo.behaviour import generate_behaviour
    from vitrine.catalog import Product, read_catalog
    from vitrine.events import write_events

    products = [p for p in read_catalog(catalog) if isinstance(p, Product)]
    events = generate_behaviour(products, users, seed=seed, end=time.time() if end is None else end)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_events(out, events)


def _messages(events: Iterator[Event]) -> Iterator[Any]:
    from vitrine.gateway.v1 import gateway_pb2 as pb

    batch: list[Any] = []
    for e in events:
        batch.append(
            pb.Event(
                event_id=e.event_id,
                user_id=e.user_id,
                session_id=e.session_id,
                item_id=e.item_id,
                type=e.type.value,
                ts=e.ts,
                device=e.device,
                query=e.query,
            )
        )
        if len(batch) >= EVENTS_PER_MESSAGE:
            yield pb.RecordEventsRequest(events=batch)
            batch = []
    if batch:
        yield pb.RecordEventsRequest(events=batch)


def load_events(connection: Any, path: Path, timeout: float = 600.0) -> tuple[int, list[Any]]:
    """Streams a JSONL (or events-store) file to the gateway's RecordEvents; returns (recorded, errors)."""
    from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

    with connection.channel() as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        resp = stub.RecordEvents(
            _messages(read_events(path)), timeout=timeout, metadata=connection.metadata()
        )
    return int(resp.recorded), list(resp.errors)


def item_table(
    index_address: str, collection: str, catalog: Path, vocab: dict[str, list[str]] | None = None
) -> Any:
    from gateway.index_backends import is_milvus
    from recommend.items import from_index
    from vitrine.catalog import Product, read_catalog

    ids = [p.id for p in read_catalog(catalog) if isinstance(p, Product)]
    if is_milvus(index_address):
        return asyncio.run(_milvus_item_table(index_address, collection, ids, vocab))
    return from_index(index_address, collection, ids, vocab=vocab)


async def _milvus_item_table(
    index_address: str, collection: str, ids: list[str], vocab: dict[str, list[str]] | None, batch: int = 256
) -> Any:
    """``recommend.items.from_index`` for a Milvus index: the same products and content vectors, read
    through the gateway's Milvus backend."""
    from gateway.index_backends import open_index
    from recommend.items import build_table
    from vitrine.items import IMAGE, TITLE

    index = open_index(index_address, collection)
    products, content = [], {}
    try:
        for start in range(0, len(ids), batch):
            for pid, (product, vectors) in (await index.get(ids[start : start + batch], 60.0)).items():
                products.append(product)
                if IMAGE in vectors and TITLE in vectors:
                    content[pid] = np.concatenate([vectors[IMAGE], vectors[TITLE]])
    finally:
        await index.close()
    if not products:
        raise ValueError(f"none of {len(ids)} catalog ids is in collection {collection!r} at {index_address}")
    return build_table(products, content, vocab)


def train(
    events: Path,
    catalog: Path,
    index_address: str,
    collection: str,
    out: Path,
    tiny: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    from recommend.data import split
    from recommend.train import TrainSpec
    from recommend.train import train as run

    table = item_table(index_address, collection, catalog)
    data = split(read_events(events), table.index)
    spec = TrainSpec.tiny(seed) if tiny else TrainSpec(seed=seed)
    return run(table, data, spec, out, extra={"events": str(events), "catalog": str(catalog)})


def evaluate(events: Path, catalog: Path, index_address: str, collection: str, artifacts: Path) -> str:
    """The comparison table on the held-out sessions, with the trained model of ``artifacts``."""
    import torch

    from recommend.data import split
    from recommend.evaluate import compare, render_table
    from recommend.model import TowerSpec
    from recommend.train import TrainSpec, build_model

    manifest = json.loads((artifacts / "manifest.json").read_text())
    # the model's vocabularies, so attribute ids mean what they meant in training
    table = item_table(index_address, collection, catalog, manifest["vocab"])
    spec = manifest["spec"]
    model = build_model(table, TrainSpec(tower=TowerSpec(**spec["tower"])))
    model.load_state_dict(torch.load(artifacts / "model.pt"))
    model.eval()
    data = split(read_events(events), table.index)
    header = (
        f"{len(data.test)} held-out users (last session), {len(table)} items, "
        f"{len(data.train)} training examples; two-tower weights: trained here "
        f"(version {manifest['version']})\n\n"
    )
    return header + render_table(compare(model, table, data))


# ---- deploy ---------------------------------------------------------------------------------------------


def served_versions(repo: Path) -> list[int]:
    from vitrine.contracts import Model

    model_dir = repo / Model.USER_TOWER.value
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


async def _write_space(
    index_address: str, collection: str, space: str, ids: list[str], vectors: np.ndarray
) -> None:
    from gateway.index_backends import open_index
    from vitrine.contracts import REC_DIM

    client = open_index(index_address, collection)
    try:
        await client.add_space(space, REC_DIM, timeout=60.0)
        missing = await client.upsert_vectors(space, dict(zip(ids, vectors, strict=True)), timeout=300.0)
        if missing:
            _say(f"{len(missing)} trained items are no longer in the catalog (skipped)")
    finally:
        await client.close()


async def _index_versions(index_address: str, collection: str) -> list[int]:
    """The recommender versions whose ``rec.N`` spaces the collection holds."""
    from gateway.index_backends import open_index
    from vitrine.items import REC

    client = open_index(index_address, collection)
    try:
        names = await client.spaces()
    finally:
        await client.close()
    return [
        int(n.split(".", 1)[1]) for n in names if n.startswith(REC + ".") and n.split(".", 1)[1].isdigit()
    ]


async def _drop_spaces(index_address: str, collection: str, keep: set[str]) -> None:
    from gateway.index_backends import open_index
    from vitrine.items import REC

    client = open_index(index_address, collection)
    try:
        for space in await client.spaces():
            if space.startswith(REC + ".") and space not in keep:
                await client.drop_space(space)
    finally:
        await client.close()


def deploy(artifacts: Path, repo: Path, triton_url: str, index_address: str, collection: str) -> int:
    """Deploys a trained recommender as the next version while serving; returns the version."""
    import tritonclient.grpc as triton_grpc

    from model_repository.render import RenderOptions, render_version
    from model_repository.spec import USER_TOWER_SPEC
    from vitrine.contracts import Model
    from vitrine.items import rec_space

    ids = json.loads((artifacts / "item_ids.json").read_text())
    vectors = np.load(artifacts / "item_vectors.npy")
    # Past the repository's versions and the index's: a repository rendered anew (a re-export) over an
    # index that kept its ``rec.N`` spaces must not reuse N.
    version = (
        max([*served_versions(repo), *asyncio.run(_index_versions(index_address, collection))], default=0) + 1
    )
    asyncio.run(_write_space(index_address, collection, rec_space(version), ids, vectors))
    render_version(USER_TOWER_SPEC, artifacts, repo, version, RenderOptions())
    client = triton_grpc.InferenceServerClient(triton_url)
    try:
        client.load_model(Model.USER_TOWER.value)
    finally:
        client.close()
    kept = served_versions(repo)[-KEEP_VERSIONS:]
    for old in served_versions(repo):
        if old not in kept:
            shutil.rmtree(repo / Model.USER_TOWER.value / str(old), ignore_errors=True)
    asyncio.run(_drop_spaces(index_address, collection, {rec_space(v) for v in kept}))
    return version


def render_recommendations(connection: Any, user_id: str, top_k: int = 5) -> str:
    """One shopper's recommendations as a small table, with the reasons."""
    from vitrine.gateway.v1 import gateway_pb2 as pb
    from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

    with connection.channel() as channel:
        resp = pb_grpc.ProductSearchStub(channel).Recommend(
            pb.RecommendRequest(user_id=user_id, top_k=top_k), timeout=60, metadata=connection.metadata()
        )
    lines = [f"recommended for {user_id} ({resp.strategy}, model version {resp.model_version}):"]
    for i, r in enumerate(resp.items, 1):
        lines.append(f"  {i:>2}. {r.product.id}  {r.product.title[:60]:<60}  {r.reason[:70]}")
    return "\n".join(lines)
