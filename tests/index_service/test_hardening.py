"""Client mistakes get a precise status and a bounded message; the service keeps serving and restarting.

Every numeric parameter has bounds and nothing beyond them is stored or reaches FAISS.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from index_service.config import (
    MAX_DIM,
    MAX_EF_CONSTRUCTION,
    MAX_EF_SEARCH,
    MAX_HNSW_M,
    MAX_NLIST,
    MAX_NPROBE,
    MAX_PQ_NBITS,
    MAX_TRAIN_MIN,
)
from tests.index_service.builders import items, spec
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

DIM = 8
Code = grpc.StatusCode
HNSW, IVF, PQ = pb.INDEX_KIND_HNSW, pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_IVF_PQ

OUT_OF_BOUNDS = [
    ("dim", spec("x", MAX_DIM + 1), "dim must be between 1 and"),
    ("nlist", spec("x", DIM, kind=IVF, nlist=MAX_NLIST + 1), "nlist must be between 0 and"),
    ("train_min", spec("x", DIM, kind=IVF, train_min=MAX_TRAIN_MIN + 1), "train_min must be between"),
    ("pq_nbits", spec("x", DIM, kind=PQ, pq_nbits=MAX_PQ_NBITS + 1), "pq_nbits must be between 0 and"),
    ("pq_m", spec("x", DIM, kind=PQ, pq_m=DIM * 2), f"pq_m must be between 0 and {DIM}"),
    ("pq_m-divides", spec("x", DIM, kind=PQ, pq_m=3), "pq_m=3 must divide dim=8"),
    ("hnsw_m", spec("x", DIM, kind=HNSW, hnsw_m=MAX_HNSW_M + 1), "hnsw_m must be between 2 and"),
    ("hnsw_m-one", spec("x", DIM, kind=HNSW, hnsw_m=1), "hnsw_m must be between 2 and"),
    (
        "ef_construction",
        spec("x", DIM, kind=HNSW, ef_construction=MAX_EF_CONSTRUCTION + 1),
        "ef_construction must be between 0 and",
    ),
    ("ef_construction-uint32", spec("x", DIM, kind=HNSW, ef_construction=2**32 - 1), "ef_construction"),
]


@pytest.mark.parametrize(
    ("request_spec", "message"), [c[1:] for c in OUT_OF_BOUNDS], ids=[c[0] for c in OUT_OF_BOUNDS]
)
async def test_index_parameters_beyond_their_bounds_are_refused_and_nothing_is_stored(
    index_stub, request_spec, message
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=request_spec))
    assert err.value.code() == Code.INVALID_ARGUMENT and message in (err.value.details() or "")
    assert not (await index_stub.ListCollections(pb.ListCollectionsRequest())).collections
    # the name is free: the same collection with sane parameters is created
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("x", DIM, kind=HNSW)))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (pb.SearchParams(ef_search=MAX_EF_SEARCH + 1), "ef_search must be between 0 and"),
        (pb.SearchParams(ef_search=2**32 - 1), "ef_search must be between 0 and"),
        (pb.SearchParams(nprobe=MAX_NPROBE + 1), "nprobe must be between 0 and"),
    ],
)
async def test_search_parameters_beyond_their_bounds_are_invalid_argument_not_internal(
    index_stub, params, message
) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("h", DIM, kind=HNSW, hnsw_m=8)))
    vectors = np.random.default_rng(1).standard_normal((50, DIM)).astype(np.float32)
    await index_stub.Upsert(pb.UpsertRequest(collection="h", items=items(vectors)))
    query = pb.SearchRequest(
        collection="h", queries=[pb.Query(vector=vectors[0].tolist())], k=3, params=params
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.Search(query)
    assert err.value.code() == Code.INVALID_ARGUMENT and message in (err.value.details() or "")
    query.params.CopyFrom(pb.SearchParams(ef_search=MAX_EF_SEARCH, nprobe=MAX_NPROBE))
    reply = await index_stub.Search(query)
    assert reply.results[0].hits[0].id == "p0"


# ---- requests grpcio cannot decode ----

SERVICE = "/vitrine.index.v2.IndexService/"


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_filter(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = _field(3, inner)  # Filter.not
    return inner


UNDECODABLE = [
    ("garbage", b"\xff\xff\xff\xff\x0f\x01", "not protobuf wire format"),
    ("truncated", _field(1, b"abc")[:-1], "not protobuf wire format"),
    ("invalid-utf8", _field(1, b"\xff\xfe"), "not valid UTF-8"),
]


async def _refused(call: object, data: object, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(data, timeout=5)  # type: ignore[operator]
    details = err.value.details() or ""
    assert err.value.code() == Code.INVALID_ARGUMENT, details
    assert message in details and "class" not in details and "Error" not in details, details


@pytest.mark.parametrize(("data", "message"), [u[1:] for u in UNDECODABLE], ids=[u[0] for u in UNDECODABLE])
async def test_undecodable_requests_are_invalid_argument_saying_why(index_factory, data, message) -> None:
    server, stub = await index_factory()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in ("Search", "Upsert", "Get", "CreateCollection", "SetAlias", "UpsertVectors"):
            await _refused(channel.unary_unary(SERVICE + method), data, message)  # raw bytes on the wire
        # UpsertStream reports an undecodable message as it reports a bad item, and goes on
        stream = channel.stream_unary(
            SERVICE + "UpsertStream", response_deserializer=pb.UpsertResponse.FromString
        )
        reply = await stream(iter([data]), timeout=5)
        assert (reply.upserted, reply.refused, reply.errors[0].position) == (0, 1, 0)
        assert message in reply.errors[0].message and "stream message 0" in reply.errors[0].message
        # a filter nested past protobuf's recursion limit
        await _refused(
            channel.unary_unary(SERVICE + "Search"), _field(4, _deep_filter(200)), "nested more than"
        )
    assert not (await stub.ListCollections(pb.ListCollectionsRequest())).collections  # still serving


# ---- messages repeat a bounded amount of what the caller sent ----


async def test_long_ids_and_names_come_back_truncated_in_bounded_messages(index_stub) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    long = "x" * 10_000
    cases = [
        index_stub.Upsert(pb.UpsertRequest(collection="c", items=[pb.Item(id=long)])),
        index_stub.Upsert(pb.UpsertRequest(collection=long, items=[pb.Item(id="a")])),
        index_stub.Get(pb.GetRequest(collection=long, ids=["a"])),
        index_stub.Search(
            pb.SearchRequest(collection="c", vector=long, queries=[pb.Query(vector=[0.0] * DIM)], k=1)
        ),
        index_stub.Upsert(
            pb.UpsertRequest(
                collection="c",
                items=[
                    pb.Item(id=long[:500], vectors={"v": pb.Vector(values=[1.0] * DIM)}, numbers={long: 1.0})
                ],
            )
        ),
    ]
    echoed = []
    for call in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        details = err.value.details() or ""
        assert err.value.code() in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), details
        assert len(details) < 1024 and "x" * 81 not in details, details
        echoed.append(details)
    assert sum("(10000 characters)" in d for d in echoed) == 4, echoed


# ---- restarts keep the IVF retraining rule ----


async def test_ivf_keeps_retraining_at_8x_growth_across_a_restart_from_a_snapshot(
    index_factory, tmp_path
) -> None:
    """Trained at 1,000 items (25 lists), grown to 1,500 and snapshotted, restarted, grown to 8,000: the
    index retrains (205 lists) because the restart restored the size it was trained on, not 1,500."""
    data_dir = tmp_path / "ivf"
    vectors = np.random.default_rng(7).standard_normal((8000, DIM)).astype(np.float32)
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("ivf", DIM, kind=IVF)))

    async def grow(stub: object, start: int, stop: int) -> pb.VectorStats:
        for at in range(start, stop, 1000):
            batch = items(vectors[at : min(stop, at + 1000)], start=at)
            await stub.Upsert(pb.UpsertRequest(collection="ivf", items=batch))  # type: ignore[attr-defined]
        return (await stub.GetStats(pb.GetStatsRequest(name="ivf"))).vectors[0]  # type: ignore[attr-defined]

    assert (await grow(stub, 0, 1000)).nlist == 25
    assert (await grow(stub, 1000, 1500)).nlist == 25
    await stub.Snapshot(pb.SnapshotRequest(name="ivf"))
    await server.stop(None)
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    assert (await grow(stub, 1500, 7999)).nlist == 25  # 7,999 < 8 x 1,000
    assert (await grow(stub, 7999, 8000)).nlist == 205  # retrained at 8 x 1,000
    await stub.Snapshot(pb.SnapshotRequest(name="ivf"))
    await server.stop(None)
    _, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    stats = await stub.GetStats(pb.GetStatsRequest(name="ivf"))
    assert (stats.count, stats.vectors[0].nlist) == (8000, 205)
    query = pb.SearchRequest(collection="ivf", queries=[pb.Query(vector=vectors[4321].tolist())], k=1)
    assert (await stub.Search(query)).results[0].hits[0].id == "p4321"


# ---- a restart always succeeds on the service's own data ----


async def test_a_refused_create_persists_nothing_and_a_broken_collection_does_not_stop_the_others(
    index_factory, tmp_path
) -> None:
    data_dir = tmp_path / "restart"
    vectors = np.random.default_rng(9).standard_normal((300, DIM)).astype(np.float32)
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateCollection(
            pb.CreateCollectionRequest(spec=spec("h", DIM, kind=HNSW, ef_construction=2**31))
        )
    assert err.value.code() == Code.INVALID_ARGUMENT
    for name in ("good", "bad"):
        await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM, kind=HNSW, hnsw_m=8)))
        await stub.Upsert(pb.UpsertRequest(collection=name, items=items(vectors)))
    await stub.Snapshot(pb.SnapshotRequest())
    await server.stop(None)
    # damage what a crash or a bad disk could: one collection's spec, the other's snapshot file
    with sqlite3.connect(data_dir / "index.db") as db:
        db.execute("UPDATE collections SET spec = ? WHERE name = 'bad'", (b"\xff\xff\xff",))
    (good_snapshot,) = (data_dir / "snapshots").glob("good~*")
    good_snapshot.write_bytes(b"not a faiss index")

    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.spec.name for c in listed.collections] == ["good"]  # "h" was never stored
    query = pb.SearchRequest(collection="good", queries=[pb.Query(vector=vectors[42].tolist())], k=1)
    assert (await stub.Search(query)).results[0].hits[0].id == "p42"  # index rebuilt from the items
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetStats(pb.GetStatsRequest(name="bad"))
    assert err.value.code() == Code.FAILED_PRECONDITION
    assert "could not be loaded at start" in (err.value.details() or "")
    await stub.DropCollection(pb.DropCollectionRequest(name="bad"))
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("bad", DIM)))
    await server.stop(None)
    _, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [(c.spec.name, c.count) for c in listed.collections] == [("bad", 0), ("good", 300)]


# ---- the streaming upsert contract ----


def _priced(item_id: str, price: float, value: float = 1.0, dim: int = DIM) -> pb.Item:
    return pb.Item(id=item_id, vectors={"v": pb.Vector(values=[value] * dim)}, numbers={"price": price})


@pytest.fixture
async def priced(index_factory):
    server, stub = await index_factory()
    collection = spec("s", DIM)
    collection.schema.non_negative_fields.append("price")
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=collection))
    return server, stub


async def test_a_stream_reports_bad_items_by_stream_position_and_stores_the_rest(priced) -> None:
    server, stub = priced
    messages = [
        pb.UpsertRequest(
            collection="s",
            items=[
                _priced("p0", 1),
                _priced("p1", float("nan")),
                _priced("p2", 2, 0.1),
                _priced("p2", 3, 0.2),
            ],
        ).SerializeToString(),
        pb.UpsertRequest(
            collection="s", items=[_priced("p3", -1), _priced("p2", 4, 0.3), _priced("p4", 1, dim=DIM + 1)]
        ).SerializeToString(),
        b"\xff\xff\xff\xff\x0f",  # undecodable: reported, counted as no items
        pb.UpsertRequest(collection="s", items=[_priced("p5", 0, value=-1.0)]).SerializeToString(),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = channel.stream_unary(
            SERVICE + "UpsertStream", response_deserializer=pb.UpsertResponse.FromString
        )
        reply = await stream(iter(messages), timeout=10)
    assert (reply.upserted, reply.count, reply.refused) == (4, 3, 4)
    assert [(e.position, e.id) for e in reply.errors] == [(1, "p1"), (4, "p3"), (6, "p4"), (7, "")]
    messages_by_position = {e.position: e.message for e in reply.errors}
    assert "item 1 ('p1'): number 'price' is not finite" in messages_by_position[1]
    assert "item 4 ('p3'): number 'price' is negative" in messages_by_position[4]
    assert "item 6 ('p4')" in messages_by_position[6] and "wrong dimension" in messages_by_position[6]
    assert "stream message 2: request is not a valid" in messages_by_position[7]
    got = await stub.Get(
        pb.GetRequest(collection="s", ids=["p0", "p1", "p2", "p3", "p4", "p5"], include_vectors=True)
    )
    assert [it.id for it in got.items] == ["p0", "p2", "p5"]
    assert got.items[1].numbers["price"] == 4 and got.items[1].vectors["v"].values[0] == pytest.approx(0.3)


@pytest.mark.parametrize("split", [False, True], ids=["one-message", "two-messages"])
async def test_the_later_of_two_items_with_one_id_wins_however_the_stream_is_split(priced, split) -> None:
    _, stub = priced
    first, second = _priced("d", 1, 0.1), _priced("d", 2, 0.2)
    messages = (
        [pb.UpsertRequest(collection="s", items=[first]), pb.UpsertRequest(collection="s", items=[second])]
        if split
        else [pb.UpsertRequest(collection="s", items=[first, second])]
    )
    reply = await stub.UpsertStream(iter(messages))
    assert reply.count == 1 and not reply.errors
    got = await stub.Get(pb.GetRequest(collection="s", ids=["d"]))
    assert got.items[0].numbers["price"] == 2


async def test_a_stream_that_fails_says_in_its_trailing_metadata_what_was_stored(priced) -> None:
    _, stub = priced
    messages = [
        pb.UpsertRequest(collection="s", items=[_priced("a", 1), _priced("b", -5)]),
        pb.UpsertRequest(collection="s", items=[_priced("c", 1)]),
        pb.UpsertRequest(collection="nope", items=[_priced("d", 1)]),
        pb.UpsertRequest(collection="s", items=[_priced("e", 1)]),
    ]
    call = stub.UpsertStream(iter(messages))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == Code.NOT_FOUND
    assert "stream message 2" in (err.value.details() or "") and "2 items committed" in (
        err.value.details() or ""
    )
    trailing = dict(err.value.trailing_metadata() or ())
    assert (trailing["vitrine-upserted"], trailing["vitrine-stream-position"]) == ("2", "3")
    got = await stub.Get(pb.GetRequest(collection="s", ids=["a", "b", "c", "d", "e"]))
    assert [it.id for it in got.items] == ["a", "c"]


# ---- API keys with read and write scopes ----


async def test_api_keys_with_read_and_write_scopes(index_factory, tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nread+write:admin-key\n")
    server, _ = await index_factory(
        api_keys=("read:reader-key", "write:writer-key"), api_keys_file=str(key_file)
    )

    def stub_with(key: str | None) -> tuple[grpc.aio.Channel, Any, list[tuple[str, str]]]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        return (
            channel,
            index_pb2_grpc.IndexServiceStub(channel),
            [("authorization", f"Bearer {key}")] if key else [],
        )

    create = pb.CreateCollectionRequest(spec=spec("k", DIM))
    upsert = pb.UpsertRequest(collection="k", items=[_priced("a", 1)])
    search = pb.SearchRequest(collection="k", queries=[pb.Query(vector=[1.0] * DIM)], k=1)
    expected = {
        None: (Code.UNAUTHENTICATED, Code.UNAUTHENTICATED),
        "wrong-key": (Code.UNAUTHENTICATED, Code.UNAUTHENTICATED),
        "reader-key": (Code.OK, Code.PERMISSION_DENIED),
        "writer-key": (Code.PERMISSION_DENIED, Code.OK),
        "admin-key": (Code.OK, Code.OK),
    }
    channel, stub, md = stub_with("admin-key")
    await stub.CreateCollection(create, metadata=md)  # type: ignore[attr-defined]
    await channel.close()
    for key, (read_code, write_code) in expected.items():
        channel, stub, md = stub_with(key)
        for call, request, code in (
            (stub.Search, search, read_code),  # type: ignore[attr-defined]
            (stub.Upsert, upsert, write_code),  # type: ignore[attr-defined]
            (stub.UpsertStream, iter([upsert]), write_code),  # type: ignore[attr-defined]
        ):
            try:
                await call(request, metadata=md)
                got = Code.OK
            except grpc.aio.AioRpcError as exc:
                got = exc.code()
                assert "key" in (exc.details() or "") and (key is None or key not in (exc.details() or ""))
            assert got == code, (key, call, got)
        # an undecodable request without a key is refused for the key, not decoded
        if key is None:
            raw = channel.unary_unary(SERVICE + "Search")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff", timeout=5)
            assert err.value.code() == Code.UNAUTHENTICATED
        await channel.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # health stays open
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
