"""Acknowledged writes survive kill -9: a stream of upserts and deletes, SIGKILL at random points,
restart, and every acknowledged write is there, atomically, with the index consistent."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from operations.servers import index_server
from tests.index_service.builders import item, multi_spec, spec, vector_of, vector_spec
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

DIM = 16
COLLECTIONS = {"flat": pb.INDEX_KIND_FLAT, "hnsw": pb.INDEX_KIND_HNSW}


@dataclass
class Model:
    """What the client knows was acknowledged: id -> (vector, price) per collection."""

    state: dict[str, dict[str, tuple[np.ndarray, float]]] = field(
        default_factory=lambda: {name: {} for name in COLLECTIONS}
    )
    inflight: tuple[str, str, list[str], dict[str, tuple[np.ndarray, float]]] | None = None


def _writer(stub: index_pb2_grpc.IndexServiceStub, model: Model, rng: np.random.Generator, acked: list[int],
            kill_at: int, killed: threading.Event, kill: Callable[[], None],
            killers: list[threading.Thread]) -> None:  # fmt: skip
    next_id = sum(len(s) for s in model.state.values()) * 10 + int(rng.integers(1_000_000))
    while True:
        name = str(rng.choice(list(COLLECTIONS)))
        existing = list(model.state[name])
        if existing and rng.random() < 0.3:
            ids = [
                str(x)
                for x in rng.choice(existing, size=min(len(existing), int(rng.integers(1, 6))), replace=False)
            ]
            model.inflight = (name, "delete", ids, {})
            request: object = pb.DeleteRequest(collection=name, ids=ids)
            call = stub.Delete
        else:
            n = int(rng.integers(1, 20))
            replace = (
                [str(x) for x in rng.choice(existing, size=min(len(existing), n // 3), replace=False)]
                if existing
                else []
            )
            ids = replace + [f"i{next_id + j}" for j in range(n - len(replace))]
            next_id += n
            new = {
                i: (rng.standard_normal(DIM).astype(np.float32), float(rng.integers(0, 1000))) for i in ids
            }
            model.inflight = (name, "upsert", ids, new)
            request = pb.UpsertRequest(
                collection=name,
                items=[item(i, v, numbers={"price": p}) for i, (v, p) in new.items()],
            )
            call = stub.Upsert
        try:
            call(request, timeout=30)
        except grpc.RpcError:
            assert killed.is_set(), "only the kill may fail a write"
            return
        _apply(model, *model.inflight)
        model.inflight = None
        acked[0] += 1
        if acked[0] == kill_at:
            killer = threading.Thread(target=kill)  # lands while the next write is in flight
            killer.start()
            killers.append(killer)


def _apply(
    model: Model, name: str, op: str, ids: list[str], new: dict[str, tuple[np.ndarray, float]]
) -> None:
    if op == "delete":
        for i in ids:
            model.state[name].pop(i, None)
    else:
        model.state[name].update(new)


def _verify(stub: index_pb2_grpc.IndexServiceStub, model: Model) -> None:
    if model.inflight is not None:
        # The write in flight at the kill was not acknowledged: it may or may not have landed, but all
        # of it or none of it.
        name, op, ids, new = model.inflight
        got = stub.Get(pb.GetRequest(collection=name, ids=ids, include_vectors=True))
        present = {it.id: it for it in got.items}
        if op == "delete":
            landed = not present
            assert landed or set(present) == {i for i in ids if i in model.state[name]}
        else:
            landed = all(
                np.allclose(vector_of(present[i]), new[i][0], atol=1e-6) for i in ids if i in present
            ) and len(present) == len(ids)
        if landed:
            _apply(model, name, op, ids, new)
        model.inflight = None
    for name, state in model.state.items():
        stats = stub.GetStats(pb.GetStatsRequest(name=name))
        assert stats.count == len(state)
        ids = list(state)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            got = stub.Get(pb.GetRequest(collection=name, ids=chunk, include_vectors=True))
            assert not got.missing_ids
            for it in got.items:
                vec, price = state[it.id]
                np.testing.assert_allclose(vector_of(it), vec, atol=1e-6)
                assert it.numbers["price"] == price
        for start in range(0, len(ids), 256):  # the index agrees with the item store: each item finds itself
            sample = ids[start : start + 256]
            reply = stub.Search(
                pb.SearchRequest(
                    collection=name,
                    queries=[pb.Query(vector=state[i][0].tolist()) for i in sample],
                    k=1,
                    params=pb.SearchParams(ef_search=128),
                )
            )
            assert [r.hits[0].id for r in reply.results] == sample


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9_at_random_points(tmp_path) -> None:
    rng = np.random.default_rng(2024)
    # Frequent snapshots so kills also land around snapshot writes and restarts replay a tail; no brute
    # force, so every search goes through the recovered FAISS index.
    proc = index_server(tmp_path / "data", snapshot_every=150, brute_force_max=0)
    model = Model()
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            for name, kind in COLLECTIONS.items():
                stub.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM, kind=kind)))
        for round_ in range(5):
            kill_at = int(rng.integers(5, 60))
            killed = threading.Event()

            def kill(killed: threading.Event = killed) -> None:
                killed.set()
                proc.kill()

            killers: list[threading.Thread] = []

            with grpc.insecure_channel(proc.address) as channel:
                stub = index_pb2_grpc.IndexServiceStub(channel)
                _writer(stub, model, rng, [0], kill_at, killed, kill, killers)
            for killer in killers:
                killer.join()
            proc.start()  # same data directory: recovery from the database and the snapshots
            with grpc.insecure_channel(proc.address) as channel:
                stub = index_pb2_grpc.IndexServiceStub(channel)
                _verify(stub, model)
            assert sum(len(s) for s in model.state.values()) > round_ * 5
    finally:
        proc.kill()
        proc.close()  # the launcher's own log directory


# ---- named vectors: one item per product, every space written in one transaction ----

PRODUCTS = [f"q{i}" for i in range(40)]
IMAGE_DIM, TITLE_DIM = 8, 6
PRODUCT_SPACES = {
    "image": vector_spec(IMAGE_DIM),
    "title": vector_spec(TITLE_DIM, kind=pb.INDEX_KIND_HNSW, hnsw_m=8),
}


def _versioned(pid: str, version: int) -> pb.Item:
    """Every part of the product encodes its version: both vectors (coordinate 1), price and payload."""
    n = int(pid[1:])
    image = [float(n), float(version)] + [0.5] * (IMAGE_DIM - 2)
    title = [float(version), float(n)] + [0.25] * (TITLE_DIM - 2)
    return pb.Item(
        id=pid,
        vectors={"image": pb.Vector(values=image), "title": pb.Vector(values=title)},
        numbers={"price": float(version)},
        payload=pb.Payload(title=f"v{version}"),
    )


def _versions(it: pb.Item) -> tuple[int, int, int, int]:
    return (
        int(it.vectors["image"].values[1]),
        int(it.vectors["title"].values[0]),
        int(it.numbers["price"]),
        int(it.payload.title[1:]),
    )


@pytest.mark.slow
def test_spaces_of_a_product_never_diverge_across_kill_9(tmp_path) -> None:
    """A stream of upserts rewriting the same products with new versions, SIGKILL mid-stream, restart:
    every product is absent or has one version in every space and its payload, and every acknowledged
    write is there (or the unacknowledged one in flight at the kill, which may have landed whole)."""
    rng = np.random.default_rng(77)
    proc = index_server(tmp_path / "data", snapshot_every=60, brute_force_max=0)
    acked: dict[str, int] = {}
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(spec=multi_spec("products", PRODUCT_SPACES)))
        version = 0
        for _round in range(4):
            kill_at = int(rng.integers(3, 40))
            killed = threading.Event()
            inflight: dict[str, int] = {}

            def kill(killed: threading.Event = killed) -> None:
                killed.set()
                proc.kill()

            killer: threading.Thread | None = None
            with grpc.insecure_channel(proc.address) as channel:
                stub = index_pb2_grpc.IndexServiceStub(channel)
                for written in itertools.count(1):
                    version += 1
                    ids = [str(x) for x in rng.choice(PRODUCTS, size=int(rng.integers(1, 12)), replace=False)]
                    inflight = dict.fromkeys(ids, version)
                    request = pb.UpsertRequest(
                        collection="products", items=[_versioned(i, version) for i in ids]
                    )
                    try:
                        stub.Upsert(request, timeout=30)
                    except grpc.RpcError:
                        assert killed.is_set(), "only the kill may fail a write"
                        break
                    acked.update(inflight)
                    inflight = {}
                    if written == kill_at:
                        killer = threading.Thread(target=kill)  # lands while the next write is in flight
                        killer.start()
                    assert written < 10_000, "the kill never landed"
            assert killer is not None
            killer.join()
            proc.start()
            with grpc.insecure_channel(proc.address) as channel:
                stub = index_pb2_grpc.IndexServiceStub(channel)
                got = stub.Get(pb.GetRequest(collection="products", ids=PRODUCTS, include_vectors=True))
                present = {it.id: it for it in got.items}
                assert set(acked) <= set(present), "an acknowledged write was lost"
                assert set(present) <= set(acked) | set(inflight)
                for pid, it in present.items():
                    image_v, title_v, price_v, payload_v = _versions(it)
                    assert image_v == title_v == price_v == payload_v, (pid, _versions(it))
                    allowed = {acked.get(pid), inflight.get(pid)} - {None}
                    assert image_v in allowed, (pid, image_v, allowed)
                    acked[pid] = image_v  # the in-flight write may have landed (whole)
                for space in PRODUCT_SPACES:  # each space's recovered index agrees with the stored items
                    reply = stub.Search(
                        pb.SearchRequest(
                            collection="products",
                            vector=space,
                            queries=[pb.Query(vector=present[p].vectors[space].values) for p in present],
                            k=1,
                            params=pb.SearchParams(ef_search=64),
                        )
                    )
                    assert [r.hits[0].id for r in reply.results] == list(present), space
    finally:
        proc.kill()
        proc.close()  # the launcher's own log directory


def test_snapshots_per_space_survive_kill_9_with_identical_exact_results(tmp_path) -> None:
    """Snapshot (one file and watermark per space), more writes and a delete, kill -9, restart: the
    tail is replayed into every space and exact searches answer exactly as before."""
    rng = np.random.default_rng(5)
    vectors = {
        "image": rng.standard_normal((600, IMAGE_DIM)).astype(np.float32),
        "title": rng.standard_normal((600, TITLE_DIM)).astype(np.float32),
    }

    def batch(start: int, stop: int) -> pb.UpsertRequest:
        return pb.UpsertRequest(
            collection="products",
            items=[
                pb.Item(id=f"p{i}", vectors={s: pb.Vector(values=v[i].tolist()) for s, v in vectors.items()})
                for i in range(start, stop)
            ],
        )

    def searches(stub: index_pb2_grpc.IndexServiceStub) -> dict[str, list[list[str]]]:
        out = {}
        for space, v in vectors.items():
            reply = stub.Search(
                pb.SearchRequest(
                    collection="products",
                    vector=space,
                    queries=[pb.Query(vector=q.tolist()) for q in v[::37]],
                    k=10,
                    params=pb.SearchParams(exact=True),
                )
            )
            out[space] = [[h.id for h in r.hits] for r in reply.results]
        return out

    proc = index_server(tmp_path / "data", snapshot_every=0)
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(spec=multi_spec("products", PRODUCT_SPACES)))
            stub.Upsert(batch(0, 400))
            snap = stub.Snapshot(pb.SnapshotRequest(name="products"))
            assert [(v.name, v.snapshot_slot) for v in snap.collections[0].vectors] == [
                ("image", 400),
                ("title", 400),
            ]
            stub.Upsert(batch(400, 600))
            stub.Delete(pb.DeleteRequest(collection="products", ids=["p1", "p450"]))
            before = searches(stub)
        proc.kill()
        proc.start()
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            stats = stub.GetStats(pb.GetStatsRequest(name="products"))
            assert stats.count == 598
            assert [(v.name, v.snapshot_slot) for v in stats.vectors] == [("image", 400), ("title", 400)]
            assert searches(stub) == before
            assert "p1" not in {i for rows in before.values() for row in rows for i in row}
    finally:
        proc.kill()
        proc.close()  # the launcher's own log directory


def test_a_delete_through_an_alias_survives_kill_9(tmp_path) -> None:
    """A delete addressed to an alias is stored under the collection the alias names, so the restart
    replays it there: the deleted item stays deleted."""
    proc = index_server(tmp_path / "data", snapshot_every=0)
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("products-v1", 4)))
            stub.SetAlias(pb.SetAliasRequest(alias="products", collection="products-v1"))
            stub.Upsert(
                pb.UpsertRequest(collection="products", items=[item(f"p{i}", [i, 1, 0, 0]) for i in range(3)])
            )
            assert stub.Delete(pb.DeleteRequest(collection="products", ids=["p1"])).deleted == 1
        proc.kill()
        proc.start()
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            got = stub.Get(pb.GetRequest(collection="products", ids=["p0", "p1", "p2"]))
            assert sorted(i.id for i in got.items) == ["p0", "p2"]
            assert stub.GetStats(pb.GetStatsRequest(name="products-v1")).count == 2
    finally:
        proc.kill()
        proc.close()
