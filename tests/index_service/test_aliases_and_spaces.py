"""Spaces added to a live collection, filled by UpsertVectors, and aliases re-pointed atomically.

A space added after creation is optional: items gain vectors in it one space at a time, searches on it
see only those items, and a product upsert that does not name it keeps the vector. An alias resolves at
call time, so a search through it re-pointed mid-stream answers wholly from one collection or the other.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest

from benchmarks.datasets import clustered, exact_knn
from operations.servers import index_server
from tests.index_service.builders import ids_of, item, items, spec, vector_spec
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

DIM, REC_DIM, N = 8, 6, 300
Code = grpc.StatusCode


def _rec_spec(kind: int = pb.INDEX_KIND_FLAT, **index: int) -> pb.VectorSpec:
    vs = vector_spec(REC_DIM, kind=kind, **index)
    vs.name = "rec"
    return vs


def _vectors(pairs: dict[str, np.ndarray]) -> list[pb.ItemVector]:
    return [pb.ItemVector(id=i, vector=pb.Vector(values=v.tolist())) for i, v in pairs.items()]


def _search(name: str, space: str, queries: np.ndarray, k: int, **kw: object) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=name,
        vector=space,
        queries=[pb.Query(vector=q.tolist()) for q in queries],
        k=k,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def catalog(index_stub):
    """Collection "c": N items with one required space "v"; returns (stub, base vectors)."""
    base = clustered(N, DIM, seed=41)
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await index_stub.Upsert(pb.UpsertRequest(collection="c", items=items(base)))
    return index_stub, base


async def test_a_space_added_live_is_filled_by_upsert_vectors_and_searched_among_items_that_have_one(
    catalog,
) -> None:
    stub, _ = catalog
    stats = await stub.AddVectorSpace(pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec()))
    assert [(v.name, v.count) for v in stats.vectors] == [("v", N), ("rec", 0)]
    assert stats.spec.vectors[1].optional
    rec = clustered(N, REC_DIM, seed=42)
    half = {f"p{i}": rec[i] for i in range(0, N, 2)}  # even items only
    reply = await stub.UpsertVectors(
        pb.UpsertVectorsRequest(
            collection="c", vector="rec", items=_vectors({**half, "ghost": rec[1], "nope": rec[3]})
        )
    )
    assert reply.upserted == len(half) and list(reply.missing_ids) == ["ghost", "nope"]
    stats = await stub.GetStats(pb.GetStatsRequest(name="c"))
    assert [(v.name, v.count, v.index_total) for v in stats.vectors] == [
        ("v", N, N),
        ("rec", len(half), len(half)),
    ]
    assert stats.count == N

    queries = rec[[1, 2, 77]]
    evens = np.arange(0, N, 2)
    truth = evens[exact_knn(rec[evens], queries, 10, False)[1]]
    for params in (pb.SearchParams(), pb.SearchParams(exact=True)):
        got = await stub.Search(_search("c", "rec", queries, 10, params=params))
        assert ids_of(got) == truth.tolist()
    # a filter plus the space: still only items with a rec vector
    flt = pb.Filter(keyword=pb.KeywordIn(field="category", values=["shoes"]))
    got = await stub.Search(_search("c", "rec", queries, 5, filter=flt, include_attributes=True))
    assert all(int(h.id[1:]) % 2 == 0 and h.item.keywords["category"] == "shoes" for h in got.results[0].hits)

    many = await stub.Get(pb.GetRequest(collection="c", ids=["p0", "p1"], include_vectors=True))
    assert [sorted(it.vectors) for it in many.items] == [["rec", "v"], ["v"]]
    np.testing.assert_allclose(many.items[0].vectors["rec"].values, rec[0], rtol=1e-6)


async def test_an_upsert_vectors_batch_is_validated_whole_before_anything_is_written(catalog) -> None:
    stub, _ = catalog
    await stub.AddVectorSpace(pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec()))
    good = np.ones(REC_DIM, dtype=np.float32)
    bad_batches: list[tuple[dict[str, np.ndarray], str]] = [
        ({"p0": good, "p1": np.full(REC_DIM, np.nan)}, "vector 1 contains NaN or infinity"),
        ({"p0": good, "p1": np.ones(REC_DIM + 1)}, f"has dim={REC_DIM}"),
        ({"p0": good, "": good}, "item 1: id must not be empty"),
    ]
    for batch, message in bad_batches:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertVectors(
                pb.UpsertVectorsRequest(collection="c", vector="rec", items=_vectors(batch))
            )
        assert err.value.code() == Code.INVALID_ARGUMENT and message in (err.value.details() or "")
    dup = [pb.ItemVector(id="p0", vector=pb.Vector(values=good.tolist()))] * 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertVectors(pb.UpsertVectorsRequest(collection="c", vector="rec", items=dup))
    assert err.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertVectors(pb.UpsertVectorsRequest(collection="c", vector="nope", items=dup[:1]))
    assert err.value.code() == Code.INVALID_ARGUMENT and "no vector space 'nope'" in (
        err.value.details() or ""
    )
    got = await stub.Get(pb.GetRequest(collection="c", ids=["p0", "p1"], include_vectors=True))
    assert [sorted(it.vectors) for it in got.items] == [["v"], ["v"]]  # nothing of any batch landed
    assert (await stub.GetStats(pb.GetStatsRequest(name="c"))).vectors[1].count == 0


async def test_an_upsert_that_omits_an_optional_space_keeps_the_vector_and_one_naming_it_replaces_it(
    catalog,
) -> None:
    stub, base = catalog
    await stub.AddVectorSpace(
        pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec(pb.INDEX_KIND_HNSW, hnsw_m=8))
    )
    rec = clustered(N, REC_DIM, seed=43)
    await stub.UpsertVectors(
        pb.UpsertVectorsRequest(
            collection="c", vector="rec", items=_vectors({f"p{i}": rec[i] for i in range(N)})
        )
    )
    # a metadata update of p5 (new price, same required vector, no rec vector): rec is kept
    await stub.Upsert(pb.UpsertRequest(collection="c", items=[item("p5", base[5], numbers={"price": 1.5})]))
    got = await stub.Get(pb.GetRequest(collection="c", ids=["p5"], include_vectors=True))
    np.testing.assert_allclose(got.items[0].vectors["rec"].values, rec[5], rtol=1e-6)
    assert got.items[0].numbers["price"] == 1.5
    reply = await stub.Search(_search("c", "rec", rec[[5]], 1, params=pb.SearchParams(ef_search=64)))
    assert reply.results[0].hits[0].id == "p5"
    # naming the space replaces the vector, by Upsert or by UpsertVectors (the item moves to a new slot)
    moved = -rec[7]
    await stub.Upsert(
        pb.UpsertRequest(
            collection="c",
            items=[
                pb.Item(id="p5", vectors={"v": pb.Vector(values=base[5]), "rec": pb.Vector(values=moved)})
            ],
        )
    )
    await stub.UpsertVectors(
        pb.UpsertVectorsRequest(collection="c", vector="rec", items=_vectors({"p6": moved}))
    )
    reply = await stub.Search(_search("c", "rec", moved[None], 2, params=pb.SearchParams(exact=True)))
    assert sorted(h.id for h in reply.results[0].hits) == ["p5", "p6"]
    reply = await stub.Search(_search("c", "rec", rec[[5, 6]], 1, params=pb.SearchParams(ef_search=64)))
    assert [r.hits[0].id for r in reply.results] != ["p5", "p6"]  # the old vectors are gone
    reply = await stub.Search(_search("c", "v", base[[5, 6]], 1))
    assert ids_of(reply) == [[5], [6]]  # the other space still finds them
    stats = await stub.GetStats(pb.GetStatsRequest(name="c"))
    assert [(v.name, v.count) for v in stats.vectors] == [("v", N), ("rec", N)]
    # deleting an item deletes its optional vectors: recreated without one, it has none
    await stub.Delete(pb.DeleteRequest(collection="c", ids=["p9"]))
    await stub.Upsert(pb.UpsertRequest(collection="c", items=[item("p9", base[9])]))
    got = await stub.Get(pb.GetRequest(collection="c", ids=["p9"], include_vectors=True))
    assert sorted(got.items[0].vectors) == ["v"]


async def test_adding_and_dropping_spaces_is_refused_precisely(catalog) -> None:
    stub, _ = catalog
    await stub.AddVectorSpace(pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec()))
    cases = [
        (
            stub.AddVectorSpace,
            pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec()),
            Code.ALREADY_EXISTS,
        ),
        (stub.AddVectorSpace, pb.AddVectorSpaceRequest(collection="zz", vector=_rec_spec()), Code.NOT_FOUND),
        (
            stub.AddVectorSpace,
            pb.AddVectorSpaceRequest(
                collection="c", vector=pb.VectorSpec(name="x", dim=0, metric=pb.METRIC_L2)
            ),
            Code.INVALID_ARGUMENT,
        ),
        (
            stub.DropVectorSpace,
            pb.DropVectorSpaceRequest(collection="c", vector="v"),
            Code.FAILED_PRECONDITION,
        ),
        (stub.DropVectorSpace, pb.DropVectorSpaceRequest(collection="c", vector="nope"), Code.NOT_FOUND),
    ]
    for call, request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request)
        assert err.value.code() == code, (request, err.value.details())
    stats = await stub.DropVectorSpace(pb.DropVectorSpaceRequest(collection="c", vector="rec"))
    assert [v.name for v in stats.vectors] == ["v"] and [v.name for v in stats.spec.vectors] == ["v"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Search(_search("c", "rec", np.ones((1, REC_DIM)), 1))
    assert err.value.code() == Code.INVALID_ARGUMENT


async def test_optional_vectors_written_around_a_snapshot_survive_a_restart(index_factory, tmp_path) -> None:
    """Vectors added in place below a snapshot's watermark are replayed; so are moved and kept ones."""
    data_dir = tmp_path / "persisted"
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    base = clustered(N, DIM, seed=44)
    rec = clustered(N, REC_DIM, seed=45)
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    await stub.Upsert(pb.UpsertRequest(collection="c", items=items(base)))
    await stub.AddVectorSpace(
        pb.AddVectorSpaceRequest(collection="c", vector=_rec_spec(pb.INDEX_KIND_HNSW, hnsw_m=8))
    )
    first = {f"p{i}": rec[i] for i in range(100)}
    await stub.UpsertVectors(pb.UpsertVectorsRequest(collection="c", vector="rec", items=_vectors(first)))
    await stub.Snapshot(pb.SnapshotRequest(name="c"))
    later = {f"p{i}": rec[i] for i in range(100, 200)}  # in place, below the watermark
    await stub.UpsertVectors(pb.UpsertVectorsRequest(collection="c", vector="rec", items=_vectors(later)))
    await stub.UpsertVectors(
        pb.UpsertVectorsRequest(collection="c", vector="rec", items=_vectors({"p3": -rec[3]}))
    )
    await stub.Upsert(pb.UpsertRequest(collection="c", items=[item("p4", base[4], numbers={"price": 2.0})]))
    queries = rec[:200:7]
    before = await stub.Search(_search("c", "rec", queries, 5, params=pb.SearchParams(ef_search=128)))
    exact_before = await stub.Search(_search("c", "rec", queries, 5, params=pb.SearchParams(exact=True)))
    assert ids_of(before) == ids_of(exact_before)
    await server.stop(None)

    _, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    stats = await stub.GetStats(pb.GetStatsRequest(name="c"))
    assert [(v.name, v.count, v.index_total) for v in stats.vectors] == [("v", N, N + 2), ("rec", 200, 202)]
    assert stats.spec.vectors[1].optional
    after = await stub.Search(_search("c", "rec", queries, 5, params=pb.SearchParams(ef_search=128)))
    assert ids_of(after) == ids_of(before)
    got = await stub.Get(pb.GetRequest(collection="c", ids=["p3", "p4", "p250"], include_vectors=True))
    np.testing.assert_allclose(got.items[0].vectors["rec"].values, -rec[3], rtol=1e-6)
    np.testing.assert_allclose(got.items[1].vectors["rec"].values, rec[4], rtol=1e-6)
    assert sorted(got.items[2].vectors) == ["v"]


# ---- aliases ----


async def test_aliases_are_created_repointed_listed_and_guard_their_collections(index_stub) -> None:
    stub = index_stub
    for name in ("a", "b"):
        await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM)))
    assert (await stub.SetAlias(pb.SetAliasRequest(alias="live", collection="a"))).previous == ""
    assert (await stub.SetAlias(pb.SetAliasRequest(alias="live", collection="b"))).previous == "a"
    await stub.SetAlias(pb.SetAliasRequest(alias="old", collection="a"))
    listed = await stub.ListAliases(pb.ListAliasesRequest())
    assert [(a.alias, a.collection) for a in listed.aliases] == [("live", "b"), ("old", "a")]
    # every collection RPC accepts the alias
    await stub.Upsert(pb.UpsertRequest(collection="live", items=[item("x", [1.0] * DIM)]))
    assert (await stub.GetStats(pb.GetStatsRequest(name="live"))).spec.name == "b"
    got = await stub.Get(pb.GetRequest(collection="live", ids=["x"]))
    assert [it.id for it in got.items] == ["x"]
    refusals = [
        (stub.CreateCollection, pb.CreateCollectionRequest(spec=spec("live", DIM)), Code.ALREADY_EXISTS),
        (stub.SetAlias, pb.SetAliasRequest(alias="a", collection="b"), Code.ALREADY_EXISTS),
        (stub.SetAlias, pb.SetAliasRequest(alias="x", collection="live"), Code.INVALID_ARGUMENT),
        (stub.SetAlias, pb.SetAliasRequest(alias="x", collection="nope"), Code.NOT_FOUND),
        (stub.SetAlias, pb.SetAliasRequest(alias="bad/name", collection="a"), Code.INVALID_ARGUMENT),
        (stub.DropCollection, pb.DropCollectionRequest(name="b"), Code.FAILED_PRECONDITION),
        (stub.DropCollection, pb.DropCollectionRequest(name="live"), Code.FAILED_PRECONDITION),
        (stub.DeleteAlias, pb.DeleteAliasRequest(alias="nope"), Code.NOT_FOUND),
    ]
    for call, request, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request)
        assert err.value.code() == code, (request, err.value.details())
    await stub.DeleteAlias(pb.DeleteAliasRequest(alias="live"))
    await stub.DropCollection(pb.DropCollectionRequest(name="b"))
    listed = await stub.ListAliases(pb.ListAliasesRequest())
    assert [(a.alias, a.collection) for a in listed.aliases] == [("old", "a")]


async def test_a_search_through_an_alias_repointed_meanwhile_never_mixes_collections(index_factory) -> None:
    """A thread searches through the alias without pause while it flips between a Flat and an HNSW
    collection (coalesced single queries and multi-query calls): no call fails, and each response comes
    wholly from one collection."""
    server, stub = await index_factory(threads=2)
    vectors = clustered(400, DIM, seed=46)
    for name, collection in (("a", spec("a", DIM)), ("b", spec("b", DIM, kind=pb.INDEX_KIND_HNSW, hnsw_m=8))):
        await stub.CreateCollection(pb.CreateCollectionRequest(spec=collection))
        await stub.Upsert(pb.UpsertRequest(collection=name, items=items(vectors, prefix=name)))
    await stub.SetAlias(pb.SetAliasRequest(alias="live", collection="a"))
    stop = threading.Event()
    seen: list[set[str]] = []
    errors: list[BaseException] = []

    def searcher(nq: int) -> None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                sync = index_pb2_grpc.IndexServiceStub(channel)
                i = 0
                while not stop.is_set():
                    queries = vectors[[(i + j) % 400 for j in range(nq)]]
                    reply = sync.Search(_search("live", "", queries, 5), timeout=10)
                    seen.append({h.id[0] for r in reply.results for h in r.hits})
                    i += 1
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(nq,)) for nq in (1, 1, 4)]
    for t in threads:
        t.start()
    try:
        for flip in range(40):
            await stub.SetAlias(pb.SetAliasRequest(alias="live", collection="ab"[(flip + 1) % 2]))
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join)
    assert not errors, errors
    assert len(seen) > 40
    assert all(s in ({"a"}, {"b"}) for s in seen), [s for s in seen if len(s) != 1][:3]
    assert {"a"} in seen and {"b"} in seen


def test_aliases_and_added_spaces_survive_kill_9(tmp_path) -> None:
    proc = index_server(tmp_path / "data", snapshot_every=0)
    rec = clustered(50, REC_DIM, seed=47)
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            for name in ("v1", "v2"):
                stub.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM)))
                stub.Upsert(pb.UpsertRequest(collection=name, items=items(clustered(50, DIM, seed=48))))
            stub.AddVectorSpace(pb.AddVectorSpaceRequest(collection="v2", vector=_rec_spec()))
            stub.UpsertVectors(
                pb.UpsertVectorsRequest(
                    collection="v2", vector="rec", items=_vectors({"p1": rec[1], "p2": rec[2]})
                )
            )
            stub.SetAlias(pb.SetAliasRequest(alias="live", collection="v1"))
            stub.SetAlias(pb.SetAliasRequest(alias="live", collection="v2"))
        proc.kill()
        proc.start()
        with grpc.insecure_channel(proc.address) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            listed = stub.ListAliases(pb.ListAliasesRequest())
            assert [(a.alias, a.collection) for a in listed.aliases] == [("live", "v2")]
            reply = stub.Search(_search("live", "rec", rec[[2]], 2))
            assert [h.id for h in reply.results[0].hits] == ["p2", "p1"]
            with pytest.raises(grpc.RpcError) as err:
                stub.DropCollection(pb.DropCollectionRequest(name="v2"))
            assert err.value.code() == Code.FAILED_PRECONDITION
    finally:
        proc.kill()
        proc.close()
