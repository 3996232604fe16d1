"""Named vectors: one item per product with a vector in every space, each space its own FAISS index.

Searches name a space and find that space's exact neighbours; filters select the same items in every
space; Get returns every vector; an upsert missing a space, naming an unknown one or carrying a wrong
dimension is refused whole; snapshots are per space and a restart serves identical results.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from benchmarks.datasets import clustered, exact_knn, normalize, queries_like
from tests.index_service.builders import attribute_columns, ids_of, multi_spec, vector_spec
from vitrine.index.v2 import index_pb2 as pb

N = 600
IMAGE_DIM, TITLE_DIM, REC_DIM = 12, 8, 6
SPACES = {
    "image": vector_spec(IMAGE_DIM, metric=pb.METRIC_INNER_PRODUCT),
    "title": vector_spec(TITLE_DIM),
    "rec": vector_spec(REC_DIM, kind=pb.INDEX_KIND_HNSW, hnsw_m=16),
}
Code = grpc.StatusCode


def _vectors(n: int = N) -> dict[str, np.ndarray]:
    return {
        "image": normalize(clustered(n, IMAGE_DIM, seed=21)),
        "title": clustered(n, TITLE_DIM, seed=22),
        "rec": clustered(n, REC_DIM, seed=23),
    }


def _items(vectors: dict[str, np.ndarray], start: int = 0, stop: int | None = None) -> list[pb.Item]:
    stop = len(next(iter(vectors.values()))) if stop is None else stop
    price, category, brand, tags = attribute_columns(stop)
    return [
        pb.Item(
            id=f"p{i}",
            vectors={name: pb.Vector(values=v[i].tolist()) for name, v in vectors.items()},
            numbers={"price": float(price[i])},
            keywords={"category": str(category[i]), "brand": str(brand[i])},
            tags=sorted(tags[i]),
            payload=pb.Payload(title=f"product {i}"),
        )
        for i in range(start, stop)
    ]


async def _create(stub, name: str = "m", spaces: dict[str, pb.VectorSpec] = SPACES) -> None:
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=multi_spec(name, spaces)))


async def _load(stub, vectors: dict[str, np.ndarray], name: str = "m", batch: int = 200) -> None:
    n = len(vectors["image"])
    for start in range(0, n, batch):
        await stub.Upsert(
            pb.UpsertRequest(collection=name, items=_items(vectors, start, min(n, start + batch)))
        )


def _search(space: str, queries: np.ndarray, k: int, name: str = "m", **kw: object) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=name,
        vector=space,
        queries=[pb.Query(vector=q.tolist()) for q in queries],
        k=k,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def loaded(index_stub):
    vectors = _vectors()
    await _create(index_stub)
    await _load(index_stub, vectors)
    return index_stub, vectors


async def test_each_space_finds_its_own_exact_neighbours(loaded) -> None:
    stub, vectors = loaded
    for space, inner in (("image", True), ("title", False), ("rec", False)):
        queries = queries_like(vectors[space], 8, seed=31)
        if inner:
            queries = normalize(queries)
        params = pb.SearchParams(exact=True) if space == "rec" else pb.SearchParams()
        reply = await stub.Search(_search(space, queries, 10, params=params))
        assert reply.exact
        assert ids_of(reply) == exact_knn(vectors[space], queries, 10, inner)[1].tolist(), space
    # the spaces are really different: the same items ranked by image and by title disagree
    probe = _search("image", vectors["image"][:1], 10)
    by_title = _search("title", vectors["title"][:1], 10)
    assert ids_of(await stub.Search(probe))[0][0] == ids_of(await stub.Search(by_title))[0][0] == 0
    assert ids_of(await stub.Search(probe)) != ids_of(await stub.Search(by_title))


async def test_filters_apply_alike_in_every_space(loaded) -> None:
    stub, vectors = loaded
    price, category, _, tags = attribute_columns(N)
    flt = pb.Filter(
        all=pb.FilterList(
            filters=[
                pb.Filter(range=pb.NumberRange(field="price", lt=600)),
                pb.Filter(keyword=pb.KeywordIn(field="category", values=["shoes", "hats"])),
            ]
        )
    )
    matching = np.flatnonzero((price < 600) & np.isin(category, ["shoes", "hats"]))
    assert 0 < len(matching) < N
    for space, inner in (("image", True), ("title", False), ("rec", False)):
        queries = vectors[space][[5, 50, 500]]
        reply = await stub.Search(_search(space, queries, 7, filter=flt, include_attributes=True))
        truth = matching[exact_knn(vectors[space][matching], queries, 7, inner)[1]]
        assert ids_of(reply) == truth.tolist(), space
        for hit in (h for r in reply.results for h in r.hits):
            assert hit.item.numbers["price"] < 600 and hit.item.keywords["category"] in ("shoes", "hats")
    tagged = pb.Filter(tags=pb.TagMatch(all=["red", "sale"]))
    with_tags = np.flatnonzero([{"red", "sale"} <= t for t in tags])
    for space, inner in (("image", True), ("title", False)):
        reply = await stub.Search(_search(space, vectors[space][:2], 5, filter=tagged))
        truth = with_tags[exact_knn(vectors[space][with_tags], vectors[space][:2], 5, inner)[1]]
        assert ids_of(reply) == truth.tolist()


async def test_get_returns_every_named_vector_and_one_payload(loaded) -> None:
    stub, vectors = loaded
    got = await stub.Get(pb.GetRequest(collection="m", ids=["p3", "nope", "p7"], include_vectors=True))
    assert [it.id for it in got.items] == ["p3", "p7"] and list(got.missing_ids) == ["nope"]
    for it, i in zip(got.items, (3, 7), strict=True):
        assert set(it.vectors) == {"image", "title", "rec"}
        for space in SPACES:
            np.testing.assert_allclose(it.vectors[space].values, vectors[space][i], rtol=1e-6)
        assert it.payload.title == f"product {i}"
    bare = await stub.Get(pb.GetRequest(collection="m", ids=["p3"]))
    assert not bare.items[0].vectors
    stats = await stub.GetStats(pb.GetStatsRequest(name="m"))
    assert stats.count == N
    assert [(v.name, v.dim, v.index_total) for v in stats.vectors] == [
        ("image", IMAGE_DIM, N),
        ("title", TITLE_DIM, N),
        ("rec", REC_DIM, N),
    ]


async def test_replace_and_delete_move_every_space_together(loaded) -> None:
    stub, vectors = loaded
    moved = {name: -v[10:11] for name, v in vectors.items()}
    item = _items(moved, 0, 1)[0]
    item.id = "p10"
    await stub.Upsert(pb.UpsertRequest(collection="m", items=[item]))
    for space in ("image", "title"):
        reply = await stub.Search(_search(space, moved[space], 1))
        assert reply.results[0].hits[0].id == "p10"
    await stub.Delete(pb.DeleteRequest(collection="m", ids=["p10", "p11"]))
    for space in SPACES:
        reply = await stub.Search(_search(space, vectors[space][[10, 11]], 3))
        assert not {"p10", "p11"} & {h.id for r in reply.results for h in r.hits}
    assert (await stub.GetStats(pb.GetStatsRequest(name="m"))).count == N - 2


def _item(**vectors: list[float]) -> pb.Item:
    return pb.Item(id="new", vectors={k: pb.Vector(values=v) for k, v in vectors.items()})


FULL = {"image": [0.3] * IMAGE_DIM, "title": [0.2] * TITLE_DIM, "rec": [0.1] * REC_DIM}

BAD = [
    (
        "missing-space",
        _item(image=FULL["image"], rec=FULL["rec"]),
        "item 1 ('new'): no vector for space 'title'",
    ),
    ("unknown-space", _item(**FULL, colour=[1.0]), "item 1 ('new'): unknown vector space 'colour'"),
    (
        "wrong-dim-in-one-space",
        _item(**{**FULL, "title": [1.0] * (TITLE_DIM + 1)}),
        f"upsert, vector 'title': wrong dimension, space 'title' of collection 'm' has dim={TITLE_DIM}",
    ),
    (
        "nan-in-one-space",
        _item(**{**FULL, "rec": [float("nan")] * REC_DIM}),
        "vector 'rec': vector 1 contains NaN or infinity",
    ),
    (
        "zero-vector-inner-product-space",
        _item(**{**FULL, "image": [0.0] * IMAGE_DIM}),
        "vector 'image': vector 1 is all zeros",
    ),
]


@pytest.mark.parametrize(("item", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_an_item_missing_or_misshaping_a_space_is_refused_whole(loaded, item, message) -> None:
    stub, _ = loaded
    good = _items(_vectors(), 0, 1)[0]
    good.id = "also-new"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Upsert(pb.UpsertRequest(collection="m", items=[good, item]))
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert message in (err.value.details() or ""), err.value.details()
    got = await stub.Get(pb.GetRequest(collection="m", ids=["new", "also-new"]))
    assert list(got.missing_ids) == ["new", "also-new"]  # nothing of the batch was written
    assert (await stub.GetStats(pb.GetStatsRequest(name="m"))).count == N


@pytest.mark.parametrize(
    ("space", "dim", "code", "message"),
    [
        ("", IMAGE_DIM, Code.INVALID_ARGUMENT, "has 3 vector spaces; name one of ['image', 'title', 'rec']"),
        ("colour", IMAGE_DIM, Code.INVALID_ARGUMENT, "no vector space 'colour'"),
        ("title", IMAGE_DIM, Code.INVALID_ARGUMENT, f"space 'title' of collection 'm' has dim={TITLE_DIM}"),
    ],
)
async def test_a_search_must_name_an_existing_space_of_the_right_dim(loaded, space, dim, code, message):
    stub, _ = loaded
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Search(_search(space, np.ones((1, dim), dtype=np.float32), 3))
    assert err.value.code() == code and message in (err.value.details() or ""), err.value.details()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.CollectionSpec(name="x"), "at least one vector space"),
        (
            multi_spec("x", {"a": vector_spec(4), "b": vector_spec(0)}),
            "vector space 'b': dim must be between",
        ),
        (multi_spec("x", {"a/b": vector_spec(4)}), "vector space name 'a/b'"),
        (
            pb.CollectionSpec(name="x", vectors=[pb.VectorSpec(name="a", dim=4, metric=pb.METRIC_L2)] * 2),
            "vector space 'a' is declared twice",
        ),
    ],
)
async def test_a_collection_spec_declares_valid_unique_spaces(index_stub, spec, message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
    assert err.value.code() == Code.INVALID_ARGUMENT and message in (err.value.details() or "")
    assert not (await index_stub.ListCollections(pb.ListCollectionsRequest())).collections


async def test_snapshots_per_space_then_more_writes_then_restart_serve_identical_results(
    index_factory, tmp_path
) -> None:
    """In-process restart (stop, start): each space's snapshot file and watermark are recorded, a tail
    written after them is replayed into every space, and exact results are the same before and after.
    The kill -9 variant is in test_durability.py."""
    spaces = {**SPACES, "ivf": vector_spec(TITLE_DIM, kind=pb.INDEX_KIND_IVF_FLAT, nlist=8)}
    vectors = {**_vectors(1000), "ivf": clustered(1000, TITLE_DIM, seed=24)}
    data_dir = tmp_path / "persisted"
    server, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    await _create(stub, spaces=spaces)
    head = {k: v[:700] for k, v in vectors.items()}
    await _load(stub, head)
    snap = await stub.Snapshot(pb.SnapshotRequest(name="m"))
    assert [(v.name, v.snapshot_slot) for v in snap.collections[0].vectors] == [
        (name, 700) for name in spaces
    ]
    snapshots = sorted(p.name for p in (data_dir / "snapshots").iterdir())
    assert snapshots == sorted(f"m~{name}~700.faiss" for name in spaces)
    await stub.Upsert(pb.UpsertRequest(collection="m", items=_items(vectors, 700, 1000)))
    await stub.Delete(pb.DeleteRequest(collection="m", ids=["p3", "p800"]))
    before = {s: await stub.Search(_search(s, vectors[s][:20], 10)) for s in spaces}
    await server.stop(None)

    _, stub = await index_factory(data_dir=data_dir, snapshot_every=0)
    stats = await stub.GetStats(pb.GetStatsRequest(name="m"))
    assert stats.count == 998
    assert [(v.name, v.snapshot_slot, v.trained) for v in stats.vectors] == [
        (name, 700, True) for name in spaces
    ]
    for s in spaces:
        after = await stub.Search(_search(s, vectors[s][:20], 10))
        assert ids_of(after) == ids_of(before[s]), s
