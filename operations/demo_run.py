"""The demo steps of ``vitrine up``: models exported, a catalog generated and ingested, example searches
and recommendations printed. Each step is skipped when its result is already there, so a second ``up``
is fast. They speak to the stack through addresses only (``operations.stack`` assembles it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operations.client import CatalogRow, IngestSummary


def say(message: str) -> None:
    print(f"[vitrine] {message}", file=sys.stderr, flush=True)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "!" * width, file=sys.stderr)
    for line in lines:
        print(f"! {line:<{width - 4}} !", file=sys.stderr)
    print("!" * width + "\n", file=sys.stderr, flush=True)


def _valid_export(artifacts: Path, size: str) -> dict[str, object] | None:
    manifest = artifacts / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
        models = data["models"]
        if data.get("size") != size:
            return None
        from export.specs import TOWERS

        if {t.model.value for t in TOWERS} <= set(models) and all(
            (artifacts / m["path"]).is_file() for m in models.values()
        ):
            return dict(data)  # an export from before a tower existed (e.g. the MiniLM) is redone
    except (KeyError, TypeError, ValueError):
        return None
    return None


def export_models(artifacts: Path, size: str, source: str, device: str = "cpu") -> dict[str, object]:
    manifest = _valid_export(artifacts, size)
    if manifest is None:
        say(f"exporting models ({size}, source {source}) to {artifacts}: a few minutes on CPU")
        cmd = [
            sys.executable,
            "-m",
            "export",
            "--source",
            source,
            "--size",
            size,
            "--out",
            str(artifacts),
        ]
        if device == "gpu":  # the PyTorch fp16 path, for GPU hosts without onnxruntime-gpu
            cmd.append("--torch-fp16")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        manifest = _valid_export(artifacts, size)
        if manifest is None:
            raise RuntimeError(f"export finished but {artifacts}/manifest.json is not a valid {size} export")
    else:
        say(f"models already exported in {artifacts}")
    models: dict[str, dict[str, str]] = manifest["models"]  # type: ignore[assignment]
    weights = {name: m.get("weights", "?") for name, m in models.items()}
    if any(w != "pretrained" for w in weights.values()):
        banner(
            [
                "NO PRETRAINED CHECKPOINT WAS REACHABLE: some models run with SEEDED RANDOM WEIGHTS.",
                *(f"  {name}: {w}" for name, w in weights.items()),
                "Latency is real (same architecture, same compute); search QUALITY IS MEANINGLESS.",
                "Give real checkpoints with: vitrine up --source <hub id or local directory>",
            ]
        )
    else:
        say("models: pretrained weights")
    return manifest


@dataclass(frozen=True)
class DemoCatalog:
    """The demo catalog's file, its size, and its rows as their photos are drawn (None when every photo
    was already on disk)."""

    path: Path
    total: int
    rows: Iterator[CatalogRow] | None = None


def demo_catalog(var: Path, products: int, seed: int) -> DemoCatalog:
    """The catalog is written at once; its photos are drawn as ``rows`` is read, so ingestion stores each
    product as soon as its photo exists instead of waiting for all of them. The stamp is written after
    the last photo, so a run stopped half-way draws the missing ones next time (and only those)."""
    from demo.catalog import render_images, write_rows
    from vitrine.catalog import iter_catalog

    out = var / "catalog"
    stamp = out / ".generated"
    wanted = f"{products}:{seed}"
    catalog = out / "catalog.jsonl"
    if catalog.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        say(f"demo catalog already generated ({products} products in {out})")
        return DemoCatalog(catalog, products)
    say(f"generating a demo catalog of {products} products in {out} (photos drawn while they are ingested)")
    stamp.unlink(missing_ok=True)
    catalog = write_rows(out, products, seed=seed)

    def rows() -> Iterator[CatalogRow]:
        for row, _ in zip(iter_catalog(catalog), render_images(out, products, seed), strict=True):
            yield row
        stamp.write_text(wanted)

    return DemoCatalog(catalog, products, rows())


@dataclass
class _Progress:
    stored: int = 0
    rows: int = 0
    rate: float = 0.0
    done: bool = False
    searched: bool = False

    def due(self) -> bool:
        return self.done or (self.stored > 0 and not self.searched)


def ingest_while_serving(
    run: Callable[[Callable[[IngestSummary], None]], IngestSummary],
    total: int,
    first_search: Callable[[int], None],
    every_s: float = 10.0,
) -> IngestSummary:
    """``run(on_batch)`` (an ingest) in a background thread while this one reports: ``first_search`` is
    called with the number of products stored as soon as the first batch is stored (ingestion goes on
    meanwhile), then a progress line every ``every_s`` seconds; returns the summary once ingestion ends.
    A failed ingest raises here."""
    progress = _Progress()
    cond = threading.Condition()
    outcome: list[IngestSummary | BaseException] = []

    def on_batch(summary: IngestSummary) -> None:
        with cond:
            progress.stored, progress.rows, progress.rate = summary.upserted, summary.rows, summary.rate
            cond.notify_all()

    def work() -> None:
        try:
            outcome.append(run(on_batch))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)
        finally:
            with cond:
                progress.done = True
                cond.notify_all()

    thread = threading.Thread(target=work, name="ingest", daemon=True)
    thread.start()
    while True:
        with cond:
            cond.wait_for(progress.due, timeout=every_s)
            stored, rows, rate, done = progress.stored, progress.rows, progress.rate, progress.done
            search_now = stored > 0 and not progress.searched
            progress.searched = progress.searched or search_now
        if search_now:
            first_search(stored)
        elif done:
            break
        else:
            say(f"indexing: {stored} of {total} products stored ({rows} rows read, {rate:.1f} products/s)")
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def ingested_count(index_address: str, collection: str) -> int:
    import grpc

    from gateway.index_backends import count_items, is_milvus

    if is_milvus(index_address):
        return asyncio.run(count_items(index_address, collection))

    from vitrine.index.v2 import index_pb2, index_pb2_grpc

    with grpc.insecure_channel(index_address) as channel:
        try:
            stats = index_pb2_grpc.IndexServiceStub(channel).GetStats(
                index_pb2.GetStatsRequest(name=collection), timeout=10
            )
        except grpc.RpcError:
            return 0
        return int(stats.count)


def demo_searches(
    address: str, catalog: Path, rerank: bool = False, why: str = "", image: bool = True
) -> None:
    """A text search (re-ranked only when the served cross-encoder is trained: ``vitrine.reranking``)
    and, with ``image``, an image search."""
    from operations.client import Connection, render_results, search_request
    from vitrine.catalog import Product, read_catalog
    from vitrine.gateway.v1 import gateway_pb2_grpc

    first = next(p for p in read_catalog(catalog) if isinstance(p, Product))
    conn = Connection(address)
    with conn.channel() as channel:
        stub = gateway_pb2_grpc.ProductSearchStub(channel)
        text = "red leather ankle boots"
        resp = stub.Search(
            search_request(text, top_k=5, rerank=rerank, depth=50 if rerank else 0), timeout=120
        )
        how = "re-ranked, depth 50" if rerank else f"not re-ranked: {why or 'off by default'}"
        print("\n" + render_results(resp, f'text search: "{text}" ({how})') + "\n", flush=True)
        if image:
            photo = catalog.parent / first.image_uri
            resp = stub.Search(search_request(image=str(photo), top_k=5), timeout=120)
            print(render_results(resp, f"image search: {photo.name} ({first.title})") + "\n", flush=True)


def demo_recommendations(
    var: Path,
    catalog: Path,
    *,
    products: int,
    seed: int,
    users: int,
    tiny: bool,
    repo: Path,
    triton_urls: list[str],
    index_address: str,
    collection: str,
    gateway_address: str,
) -> None:
    """A demo history loaded, a recommender trained and deployed (each once, the user tower loaded on
    every Triton replica), one user's recommendations."""
    from operations import recommend as rec
    from operations.client import Connection

    events = var / "events" / "demo.jsonl"
    users = users or max(20, products // 2)
    stamp = var / "events" / ".loaded"
    wanted = f"{products}:{seed}:{users}"
    if not (stamp.is_file() and stamp.read_text() == wanted and events.is_file()):
        say(f"generating a demo history of {users} shoppers over the catalog")
        n = rec.generate_events(catalog, events, users, seed=seed)
        recorded, errors = rec.load_events(Connection(gateway_address), events)
        say(f"recorded {recorded} of {n} events ({len(errors)} refused or already recorded)")
        stamp.write_text(wanted)
    else:
        say("demo history already recorded")
    artifacts = var / "recommender"
    if not (artifacts / "manifest.json").is_file():
        t0 = time.monotonic()
        say(f"training the recommender ({'tiny' if tiny else 'default'} two-tower, CPU)")
        manifest = rec.train(events, catalog, index_address, collection, artifacts, tiny=tiny)
        test = manifest["metrics"]["test"]
        say(
            f"recommender trained in {time.monotonic() - t0:.0f} s: held-out NDCG@10 "
            f"{test.get('ndcg@10', 0):.3f}, HitRate@10 {test.get('hitrate@10', 0):.3f} (trained here)"
        )
    if not rec.served_versions(repo):
        version = rec.deploy(artifacts, repo, triton_urls[0], index_address, collection)
        for url in triton_urls[1:]:
            load_user_tower(url)
        say(f"recommender version {version} deployed (user tower on Triton, item vectors in the index)")
    print("\n" + rec.render_recommendations(Connection(gateway_address), "u00000") + "\n", flush=True)


def load_user_tower(triton_url: str) -> None:
    """Another replica over the same repository loads the versions written there."""
    import tritonclient.grpc as triton_grpc

    from vitrine.contracts import Model

    client = triton_grpc.InferenceServerClient(triton_url)
    try:
        client.load_model(Model.USER_TOWER.value)
    finally:
        client.close()
