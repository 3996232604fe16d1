"""Acknowledged writes survive kill -9: a stream of upserts and deletes, SIGKILL at random points,
restart, and every acknowledged write is there, atomically, with the index consistent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from index_service.process import IndexServiceProcess
from tests.index_service.builders import spec
from vitrine.index.v1 import index_pb2 as pb
from vitrine.index.v1 import index_pb2_grpc

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
                items=[pb.Item(id=i, vector=v.tolist(), numbers={"price": p}) for i, (v, p) in new.items()],
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
        present = {item.id: item for item in got.items}
        if op == "delete":
            landed = not present
            assert landed or set(present) == {i for i in ids if i in model.state[name]}
        else:
            landed = all(
                np.allclose(present[i].vector, new[i][0], atol=1e-6) for i in ids if i in present
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
            for item in got.items:
                vec, price = state[item.id]
                np.testing.assert_allclose(item.vector, vec, atol=1e-6)
                assert item.numbers["price"] == price
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
    proc = IndexServiceProcess(
        tmp_path / "data", extra_args=("--snapshot-every", "150", "--brute-force-max", "0")
    )
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
