"""Bad input gets a precise status and message, changes nothing, and the service keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from index_service.config import MAX_BATCH, MAX_K, MAX_PAYLOAD_BYTES, MAX_QUERIES
from tests.index_service.builders import ids_of, item, items, search_request, spec
from vitrine.index.v2 import index_pb2 as pb

DIM = 8
Code = grpc.StatusCode


@pytest.fixture
async def stub(index_stub):
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("c", DIM)))
    base = np.random.default_rng(3).standard_normal((20, DIM)).astype(np.float32)
    await index_stub.Upsert(pb.UpsertRequest(collection="c", items=items(base)))
    return index_stub


def _q(vec: list[float], **kw: object) -> pb.SearchRequest:
    return pb.SearchRequest(collection="c", queries=[pb.Query(vector=vec)], **kw)  # type: ignore[arg-type]


def _item(i: int, vec: list[float] | None = None, **kw: object) -> pb.Item:
    return item(f"new{i}", vec if vec is not None else [0.1] * DIM, **kw)


GOOD = [0.5] * DIM
UNSET = object()

CASES = [
    (
        "wrong-dim-upsert",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[_item(0, [1.0] * 3)]),
        Code.INVALID_ARGUMENT,
        "wrong dimension",
    ),
    ("wrong-dim-query", "Search", _q([1.0] * 5, k=3), Code.INVALID_ARGUMENT, "wrong dimension"),
    (
        "nan-upsert",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[_item(0, [float("nan")] * DIM)]),
        Code.INVALID_ARGUMENT,
        "NaN or infinity",
    ),
    (
        "inf-query",
        "Search",
        _q([float("inf")] + [0.0] * (DIM - 1), k=3),
        Code.INVALID_ARGUMENT,
        "NaN or infinity",
    ),
    ("k-zero", "Search", _q(GOOD, k=0), Code.INVALID_ARGUMENT, "k must be between 1"),
    ("k-above-limit", "Search", _q(GOOD, k=MAX_K + 1), Code.INVALID_ARGUMENT, "k must be between 1"),
    (
        "unknown-collection-search",
        "Search",
        pb.SearchRequest(collection="nope", queries=[pb.Query(vector=GOOD)], k=1),
        Code.NOT_FOUND,
        "'nope' does not exist",
    ),
    (
        "unknown-collection-upsert",
        "Upsert",
        pb.UpsertRequest(collection="nope", items=[_item(0)]),
        Code.NOT_FOUND,
        "'nope' does not exist",
    ),
    (
        "unknown-collection-drop",
        "DropCollection",
        pb.DropCollectionRequest(name="nope"),
        Code.NOT_FOUND,
        "'nope' does not exist",
    ),
    (
        "duplicate-ids",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[_item(0), _item(1), _item(0)]),
        Code.INVALID_ARGUMENT,
        "duplicate id 'new0'",
    ),
    (
        "oversized-batch",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[_item(i) for i in range(MAX_BATCH + 1)]),
        Code.INVALID_ARGUMENT,
        f"exceeds the limit of {MAX_BATCH}",
    ),
    (
        "too-many-queries",
        "Search",
        pb.SearchRequest(collection="c", queries=[pb.Query(vector=GOOD)] * (MAX_QUERIES + 1), k=1),
        Code.INVALID_ARGUMENT,
        f"exceed the limit of {MAX_QUERIES}",
    ),
    (
        "oversized-payload",
        "Upsert",
        pb.UpsertRequest(
            collection="c", items=[_item(0, payload=pb.Payload(description="x" * MAX_PAYLOAD_BYTES))]
        ),
        Code.INVALID_ARGUMENT,
        "more than the limit",
    ),
    (
        "empty-filter-clause",
        "Search",
        _q(GOOD, k=3, filter=pb.Filter(all=pb.FilterList())),
        Code.INVALID_ARGUMENT,
        "malformed filter",
    ),
    (
        "filter-range-without-bounds",
        "Search",
        _q(GOOD, k=3, filter=pb.Filter(range=pb.NumberRange(field="price"))),
        Code.INVALID_ARGUMENT,
        "has no bounds",
    ),
    (
        "filter-nested-empty",
        "Search",
        _q(GOOD, k=3, filter=pb.Filter(any=pb.FilterList(filters=[pb.Filter()]))),
        Code.INVALID_ARGUMENT,
        "empty clause at filter.any[0]",
    ),
    (
        "filter-unknown-attribute",
        "Search",
        _q(GOOD, k=3, filter=pb.Filter(range=pb.NumberRange(field="weight", lt=3))),
        Code.INVALID_ARGUMENT,
        "unknown attribute 'weight'",
    ),
    (
        "filter-number-field-as-keyword",
        "Search",
        _q(GOOD, k=3, filter=pb.Filter(keyword=pb.KeywordIn(field="price", values=["1"]))),
        Code.INVALID_ARGUMENT,
        "unknown attribute 'price'",
    ),
    (
        "upsert-unknown-attribute",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[_item(0, numbers={"weight": 2.0})]),
        Code.INVALID_ARGUMENT,
        "unknown attribute 'weight'",
    ),
    (
        "empty-id",
        "Upsert",
        pb.UpsertRequest(collection="c", items=[item("", GOOD)]),
        Code.INVALID_ARGUMENT,
        "id must not be empty",
    ),
    ("empty-upsert", "Upsert", pb.UpsertRequest(collection="c"), Code.INVALID_ARGUMENT, "at least one item"),
    (
        "no-queries",
        "Search",
        pb.SearchRequest(collection="c", k=1),
        Code.INVALID_ARGUMENT,
        "at least one query",
    ),
    (
        "create-existing",
        "CreateCollection",
        pb.CreateCollectionRequest(spec=spec("c", DIM)),
        Code.ALREADY_EXISTS,
        "'c' already exists",
    ),
    (
        "create-bad-dim",
        "CreateCollection",
        pb.CreateCollectionRequest(spec=spec("d", 0)),
        Code.INVALID_ARGUMENT,
        "dim must be between",
    ),
    (
        "create-pq-not-dividing",
        "CreateCollection",
        pb.CreateCollectionRequest(spec=spec("d", 10, kind=pb.INDEX_KIND_IVF_PQ, pq_m=3)),
        Code.INVALID_ARGUMENT,
        "must divide dim",
    ),
    (
        "create-bad-name",
        "CreateCollection",
        pb.CreateCollectionRequest(spec=spec("a/b", DIM)),
        Code.INVALID_ARGUMENT,
        "collection name",
    ),
    (
        "create-no-metric",
        "CreateCollection",
        pb.CreateCollectionRequest(
            spec=pb.CollectionSpec(name="d", vectors=[pb.VectorSpec(name="v", dim=4)])
        ),
        Code.INVALID_ARGUMENT,
        "metric",
    ),
    (
        "delete-duplicates",
        "Delete",
        pb.DeleteRequest(collection="c", ids=["p1", "p1"]),
        Code.INVALID_ARGUMENT,
        "duplicate ids",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_is_refused_precisely_and_changes_nothing(
    stub, method, request_, code, message
) -> None:
    before = await stub.ListCollections(pb.ListCollectionsRequest())
    probe = search_request("c", np.ones((1, DIM), dtype=np.float32), 20)
    before_hits = ids_of(await stub.Search(probe))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_)
    assert err.value.code() == code, err.value.details()
    assert message in (err.value.details() or "")

    after = await stub.ListCollections(pb.ListCollectionsRequest())
    assert after == before
    assert ids_of(await stub.Search(probe)) == before_hits  # still serving, same state
    missing = await stub.Get(pb.GetRequest(collection="c", ids=["new0", "new1"]))
    assert list(missing.missing_ids) == ["new0", "new1"]


async def test_zero_vector_cannot_be_normalised_for_inner_product(index_stub) -> None:
    await index_stub.CreateCollection(
        pb.CreateCollectionRequest(spec=spec("ip", 4, metric=pb.METRIC_INNER_PRODUCT))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.Upsert(pb.UpsertRequest(collection="ip", items=[item("z", [0.0] * 4)]))
    assert err.value.code() == Code.INVALID_ARGUMENT and "all zeros" in (err.value.details() or "")
    stats = await index_stub.GetStats(pb.GetStatsRequest(name="ip"))
    assert stats.count == 0


async def test_oversized_message_is_refused_by_transport(index_stub) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("big", 4096)))
    huge = [item(f"x{i}", [0.1] * 4096, payload=pb.Payload(description="y" * 60_000)) for i in range(1000)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.Upsert(pb.UpsertRequest(collection="big", items=huge))
    assert err.value.code() == Code.RESOURCE_EXHAUSTED
    assert (await index_stub.GetStats(pb.GetStatsRequest(name="big"))).count == 0
