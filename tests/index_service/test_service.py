"""The API end to end over real gRPC: lifecycle, writes, streaming, snapshots and restarts, coalescing,
health, reflection and metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from benchmarks.datasets import clustered, exact_knn, queries_like
from tests.index_service.builders import ids_of, item, items, load, search_request, spec, vector_of
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

DIM = 16


async def test_collection_lifecycle(index_stub) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("b", DIM)))
    created = await index_stub.CreateCollection(
        pb.CreateCollectionRequest(
            spec=spec("a", DIM, kind=pb.INDEX_KIND_HNSW, metric=pb.METRIC_INNER_PRODUCT)
        )
    )
    assert created.stats.spec.vectors[0].index.hnsw_m == 32  # defaults are filled in and stored explicitly
    listed = await index_stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.spec.name for c in listed.collections] == ["a", "b"]
    await index_stub.DropCollection(pb.DropCollectionRequest(name="a"))
    listed = await index_stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.spec.name for c in listed.collections] == ["b"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.GetStats(pb.GetStatsRequest(name="a"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upsert_replaces_delete_removes_and_writes_are_visible_at_once(index_stub) -> None:
    base = clustered(200, DIM, seed=1)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await load(index_stub, "c", base)

    moved = item("p5", -base[5], keywords={"category": "hats"}, payload=pb.Payload(title="new"))
    reply = await index_stub.Upsert(pb.UpsertRequest(collection="c", items=[moved]))
    assert (reply.upserted, reply.count) == (1, 200)
    hit = (
        (await index_stub.Search(search_request("c", -base[5:6], 1, include_payload=True))).results[0].hits[0]
    )
    assert (hit.id, hit.item.payload.title) == ("p5", "new")
    got = await index_stub.Get(pb.GetRequest(collection="c", ids=["p5"], include_vectors=True))
    np.testing.assert_allclose(vector_of(got.items[0]), -base[5], rtol=1e-6)
    assert dict(got.items[0].keywords) == {"category": "hats"}

    deleted = await index_stub.Delete(pb.DeleteRequest(collection="c", ids=["p7", "never-existed"]))
    assert (deleted.deleted, deleted.count) == (1, 199)
    top = await index_stub.Search(search_request("c", base[7:8], 3))
    assert "p7" not in [h.id for h in top.results[0].hits]
    assert len(top.results[0].hits) == 3


async def test_search_returns_attributes_and_payload_only_when_asked(index_stub) -> None:
    base = clustered(50, DIM, seed=2)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await load(index_stub, "c", base)
    bare = await index_stub.Search(search_request("c", base[3:4], 1))
    assert bare.results[0].hits[0].id == "p3" and not bare.results[0].hits[0].HasField("item")
    full = await index_stub.Search(
        search_request("c", base[3:4], 1, include_payload=True, include_attributes=True)
    )
    hit = full.results[0].hits[0].item
    assert hit.payload.image_uri == "s3://images/3.jpg"
    assert hit.numbers["price"] == float(3 * 37) and hit.keywords["category"] == "coats"
    assert not hit.vectors


async def test_streaming_upsert_loads_in_batches(index_stub) -> None:
    base = clustered(2500, DIM, seed=3)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("s", DIM)))

    async def batches():
        for start in range(0, len(base), 1000):
            yield pb.UpsertRequest(collection="s", items=items(base[start : start + 1000], start))

    reply = await index_stub.UpsertStream(batches())
    assert (reply.upserted, reply.count) == (2500, 2500)
    found = await index_stub.Search(search_request("s", base[[0, 1234, 2499]], 1))
    assert [r.hits[0].id for r in found.results] == ["p0", "p1234", "p2499"]


@pytest.mark.parametrize(
    ("kind", "index"),
    [(pb.INDEX_KIND_FLAT, {}), (pb.INDEX_KIND_IVF_FLAT, {"nlist": 8}), (pb.INDEX_KIND_HNSW, {"hnsw_m": 16})],
)
async def test_snapshot_then_restart_serves_identical_results(index_factory, tmp_path, kind, index) -> None:
    base = clustered(1500, DIM, seed=4)
    queries = queries_like(base, 10, seed=5)
    data_dir = tmp_path / "persisted"
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM, kind=kind, **index)))
    await load(stub, "c", base[:1000])
    snap = await stub.Snapshot(pb.SnapshotRequest(name="c"))
    assert snap.collections[0].vectors[0].snapshot_slot == 1000
    await load(
        stub, "c", base[1000:], batch=500, offset=1000
    )  # a tail after the snapshot, replayed on restart
    await stub.Delete(pb.DeleteRequest(collection="c", ids=["p3", "p1200"]))
    params = pb.SearchParams(nprobe=4, ef_search=64)
    before = await stub.Search(search_request("c", queries, 10, params=params))
    stats_before = await stub.GetStats(pb.GetStatsRequest(name="c"))
    await server.stop(None)

    _, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    after = await stub.Search(search_request("c", queries, 10, params=params))
    stats_after = await stub.GetStats(pb.GetStatsRequest(name="c"))
    assert ids_of(after) == ids_of(before)
    assert stats_after.count == stats_before.count == 1498
    assert stats_after.vectors[0].snapshot_slot == 1000


async def test_snapshot_compacts_deleted_vectors(index_stub) -> None:
    base = clustered(400, DIM, seed=6)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await load(index_stub, "c", base)
    await index_stub.Delete(pb.DeleteRequest(collection="c", ids=[f"p{i}" for i in range(200)]))
    assert (await index_stub.GetStats(pb.GetStatsRequest(name="c"))).vectors[0].index_total == 400
    snap = await index_stub.Snapshot(pb.SnapshotRequest())
    assert (snap.collections[0].count, snap.collections[0].vectors[0].index_total) == (200, 200)
    reply = await index_stub.Search(search_request("c", base[:5], 1))
    assert all(int(h.id[1:]) >= 200 for r in reply.results for h in r.hits)


@pytest.mark.parametrize("kind", [pb.INDEX_KIND_HNSW, pb.INDEX_KIND_FLAT])
@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_single_queries_match_one_batch(index_factory, coalesce, kind) -> None:
    """HNSW collections merge concurrent single queries (when coalescing is on), Flat ones never do:
    either way each caller gets exactly its own results."""
    base = clustered(3000, DIM, seed=8)
    queries = queries_like(base, 64, seed=9)
    server, stub = await index_factory(coalesce=coalesce)
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM, kind=kind)))
    await load(stub, "c", base)
    flt = pb.Filter(range=pb.NumberRange(field="price", lt=500))
    for f in (None, flt):
        extra = {"filter": f} if f is not None else {}
        singles = await asyncio.gather(
            *(stub.Search(search_request("c", q[None], 5, **extra)) for q in queries)
        )
        batch = await stub.Search(search_request("c", queries, 5, **extra))
        assert [ids_of(s)[0] for s in singles] == ids_of(batch)
    price = np.array([(i * 37) % 1000 for i in range(len(base))])
    matching = np.flatnonzero(price < 500)
    assert ids_of(batch) == matching[exact_knn(base[matching], queries, 5, False)[1]].tolist()
    merged = _histogram_count(server, "vitrine_index_search_batch_queries", above=1)
    assert (merged > 0) == (coalesce and kind == pb.INDEX_KIND_HNSW)


def _histogram_count(server, name: str, above: float) -> float:
    """FAISS calls that carried more than ``above`` queries, from the server's own registry."""
    from prometheus_client import generate_latest

    text = generate_latest(server.registry).decode()
    total = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name}_count"))
    at_most = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(f'{name}_bucket{{le="{above:.1f}"}}')
    )
    return total - at_most - 2  # the two 64-query batch calls


async def test_searches_run_concurrently_with_writes(index_stub) -> None:
    base = clustered(2000, DIM, seed=10)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await load(index_stub, "c", base[:1000])

    async def writer() -> None:
        for start in range(1000, 2000, 100):
            await index_stub.Upsert(
                pb.UpsertRequest(collection="c", items=items(base[start : start + 100], start))
            )
            # visible to a search issued after the acknowledgement
            seen = await index_stub.Search(search_request("c", base[start + 99 : start + 100], 1))
            assert seen.results[0].hits[0].id == f"p{start + 99}"

    async def reader() -> int:
        done = 0
        for i in range(60):
            reply = await index_stub.Search(search_request("c", base[i % 1000 : i % 1000 + 1], 1))
            assert reply.results[0].hits[0].id == f"p{i % 1000}"
            done += 1
        return done

    results = await asyncio.gather(writer(), reader(), reader())
    assert results[1:] == [60, 60]


async def test_subprocess_server_health_reflection_and_metrics(tmp_path) -> None:
    from operations.servers import index_server

    proc = index_server(tmp_path / "d", metrics_port=0)
    with proc:
        async with grpc.aio.insecure_channel(proc.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="vitrine.index.v2.IndexService")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            services = [
                s.name
                async for r in refl.ServerReflectionInfo(ask())
                for s in r.list_services_response.service
            ]
            assert "vitrine.index.v2.IndexService" in services

            stub = index_pb2_grpc.IndexServiceStub(channel)
            await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("m", 4)))
            await stub.Upsert(pb.UpsertRequest(collection="m", items=items(np.eye(4, dtype=np.float32))))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Search(search_request("m", np.ones((1, 4), dtype=np.float32), 0))
        assert proc.metrics_port
        text = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{proc.metrics_port}/metrics")
    assert 'vitrine_index_vectors{collection="m"} 4.0' in text
    assert 'vitrine_index_requests_total{code="INVALID_ARGUMENT",method="Search"} 1.0' in text
    assert 'vitrine_index_requests_total{code="OK",method="Upsert"} 1.0' in text
    assert 'vitrine_index_request_seconds_bucket{le="0.5",method="Upsert"}' in text


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_session_index_server_fixture_serves(index_server) -> None:
    with grpc.insecure_channel(index_server.address) as channel:
        stub = index_pb2_grpc.IndexServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("fixture-check", 4)))
        try:
            stub.Upsert(
                pb.UpsertRequest(collection="fixture-check", items=items(np.eye(4, dtype=np.float32)))
            )
            reply = stub.Search(search_request("fixture-check", np.eye(4, dtype=np.float32)[2:3], 1))
            assert reply.results[0].hits[0].id == "p2"
        finally:
            stub.DropCollection(pb.DropCollectionRequest(name="fixture-check"))
    assert (index_server.data_dir / "index.db").exists()


@pytest.mark.gpu
async def test_gpu_copy_returns_the_cpu_results(index_factory) -> None:
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS reports no GPU")
    base = clustered(5000, DIM, seed=11)
    queries = queries_like(base, 16, seed=12)
    _, gpu = await index_factory(device="gpu")
    for kind in (pb.INDEX_KIND_FLAT, pb.INDEX_KIND_IVF_FLAT):
        name = f"g{kind}"
        await gpu.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM, kind=kind, nlist=16)))
        await load(gpu, name, base)
        stats = await gpu.GetStats(pb.GetStatsRequest(name=name))
        assert stats.device == "gpu"
        reply = await gpu.Search(search_request(name, queries, 10, params=pb.SearchParams(nprobe=16)))
        assert ids_of(reply) == exact_knn(base, queries, 10, False)[1].tolist()
        await gpu.Delete(pb.DeleteRequest(collection=name, ids=["p0"]))  # the copy refreshes after a write
        reply = await gpu.Search(search_request(name, base[:1], 1))
        assert reply.results[0].hits[0].id != "p0"


async def test_overload_is_refused_with_resource_exhausted_not_queued(index_factory) -> None:
    _, stub = await index_factory(max_concurrent_rpcs=1)
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("o", 4)))
    release = asyncio.Event()

    async def held_open():
        await release.wait()
        yield pb.UpsertRequest(collection="o", items=items(np.eye(4, dtype=np.float32)))

    for _attempt in range(50):
        stream = stub.UpsertStream(held_open())  # occupies the only slot until released...
        refused = False
        for _ in range(200):
            if stream.done():  # ...unless it lost the race for the slot to a probe: start it again
                break
            try:
                await stub.GetStats(pb.GetStatsRequest(name="o"))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused = True
                break
        if refused:
            break
        assert stream.done(), "calls beyond the concurrency limit were served"
    else:
        pytest.fail("the held stream never got the slot")
    release.set()
    assert (await stream).count == 4
    assert (await stub.GetStats(pb.GetStatsRequest(name="o"))).count == 4
