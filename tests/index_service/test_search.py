"""Search correctness against brute force: exact ids for Flat, recall@10 for approximate indexes, and
filtered searches that return the true top k among matching items."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from benchmarks.datasets import clustered, exact_knn, normalize, queries_like, recall_at
from tests.index_service.builders import attribute_columns, ids_of, load, search_request, spec
from vitrine.index.v2 import index_pb2 as pb

DIM = 32
N = 3000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    base = clustered(N, DIM, seed=7, latent=8, clusters=16)
    return base, queries_like(base, 20, seed=8, noise=0.3)


def _numpy_knn(base: np.ndarray, queries: np.ndarray, k: int, ip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth in plain numpy (float64), independent of FAISS."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if ip:
        scores = q @ b.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = (q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None, :]
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("metric", [pb.METRIC_L2, pb.METRIC_INNER_PRODUCT])
async def test_flat_search_returns_brute_force_ids(index_stub, data, metric) -> None:
    base, queries = data
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("flat", DIM, metric=metric)))
    await load(index_stub, "flat", base)
    reply = await index_stub.Search(search_request("flat", queries, 10))

    ip = metric == pb.METRIC_INNER_PRODUCT
    truth_scores, truth = _numpy_knn(
        normalize(base) if ip else base, normalize(queries) if ip else queries, 10, ip
    )
    assert ids_of(reply) == truth.tolist()
    scores = np.array([[h.score for h in r.hits] for r in reply.results])
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-4, atol=1e-4)
    assert reply.exact


@pytest.mark.parametrize(
    ("kind", "index", "params", "floor"),
    [
        (pb.INDEX_KIND_IVF_FLAT, {"nlist": 16}, pb.SearchParams(nprobe=4), 0.8),
        (pb.INDEX_KIND_IVF_PQ, {"nlist": 16, "pq_m": 8, "pq_nbits": 6}, pb.SearchParams(nprobe=8), 0.4),
        (pb.INDEX_KIND_HNSW, {"hnsw_m": 16}, pb.SearchParams(ef_search=64), 0.9),
    ],
)
async def test_approximate_indexes_report_recall_against_exact(
    index_stub, data, kind, index, params, floor
) -> None:
    base, queries = data
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("ann", DIM, kind=kind, **index)))
    await load(index_stub, "ann", base)
    stats = await index_stub.GetStats(pb.GetStatsRequest(name="ann"))
    assert stats.vectors[0].trained and stats.count == N and stats.vectors[0].index_total == N

    reply = await index_stub.Search(search_request("ann", queries, 10, params=params))
    _, truth = exact_knn(base, queries, 10, False)
    recall = recall_at(ids_of(reply), truth, 10)
    print(f"recall@10 {pb.IndexKind.Name(kind)}: {recall:.3f}")
    assert recall >= floor
    assert not reply.exact
    assert all(len(r.hits) == 10 for r in reply.results)

    forced = await index_stub.Search(search_request("ann", queries, 10, params=pb.SearchParams(exact=True)))
    assert ids_of(forced) == truth.tolist() and forced.exact


async def test_ivf_searches_exactly_until_trained(index_stub, data) -> None:
    base, queries = data
    await index_stub.CreateCollection(
        pb.CreateCollectionRequest(
            spec=spec("ivf", DIM, kind=pb.INDEX_KIND_IVF_FLAT, nlist=8, train_min=2000)
        )
    )
    await load(index_stub, "ivf", base[:1000])
    stats = await index_stub.GetStats(pb.GetStatsRequest(name="ivf"))
    assert not stats.vectors[0].trained and stats.count == 1000
    reply = await index_stub.Search(search_request("ivf", queries, 5))
    assert ids_of(reply) == exact_knn(base[:1000], queries, 5, False)[1].tolist() and reply.exact

    await load(index_stub, "ivf", base)  # crosses train_min: trained once, then indexed incrementally
    stats = await index_stub.GetStats(pb.GetStatsRequest(name="ivf"))
    space = stats.vectors[0]
    assert space.trained and space.nlist == 8 and space.index_total == N


def _negate(flt: pb.Filter) -> pb.Filter:
    out = pb.Filter()
    getattr(out, "not").CopyFrom(flt)  # `not` is a Python keyword
    return out


def _filters() -> dict[str, tuple[pb.Filter, Callable[..., np.ndarray]]]:
    """Filters with a numpy predicate over (price, category, brand, tags) computing the same thing."""
    price_range = pb.Filter(range=pb.NumberRange(field="price", gte=100, lt=700))
    shoes_or_hats = pb.Filter(keyword=pb.KeywordIn(field="category", values=["shoes", "hats"]))
    one_brand = pb.Filter(keyword=pb.KeywordIn(field="brand", values=["brand7"]))
    on_sale = pb.Filter(tags=pb.TagMatch(any=["sale"]))
    red_leather = pb.Filter(tags=pb.TagMatch(all=["red", "leather"]))
    return {
        "unselective-range": (price_range, lambda p, c, b, t: (p >= 100) & (p < 700)),
        "and": (
            pb.Filter(all=pb.FilterList(filters=[price_range, shoes_or_hats, on_sale])),
            lambda p, c, b, t: (p >= 100) & (p < 700) & np.isin(c, ["shoes", "hats"]) & _has(t, "sale"),
        ),
        "or": (
            pb.Filter(any=pb.FilterList(filters=[one_brand, red_leather])),
            lambda p, c, b, t: (b == "brand7") | (_has(t, "red") & _has(t, "leather")),
        ),
        "not": (
            _negate(shoes_or_hats),
            lambda p, c, b, t: ~np.isin(c, ["shoes", "hats"]),
        ),
        "selective": (
            pb.Filter(
                all=pb.FilterList(
                    filters=[one_brand, pb.Filter(range=pb.NumberRange(field="price", lte=500))]
                )
            ),
            lambda p, c, b, t: (b == "brand7") & (p <= 500),
        ),
    }


def _has(tags: list[set[str]], tag: str) -> np.ndarray:
    return np.array([tag in t for t in tags])


@pytest.mark.parametrize("kind", [pb.INDEX_KIND_FLAT, pb.INDEX_KIND_IVF_FLAT, pb.INDEX_KIND_HNSW])
@pytest.mark.parametrize("name", list(_filters()))
async def test_filtered_search_returns_true_top_k_among_matches(index_factory, data, kind, name) -> None:
    """brute_force_max is tiny here so unselective filters go through the FAISS ID-selector path."""
    base, queries = data
    _, stub = await index_factory(brute_force_max=50)
    index = {"nlist": 16} if kind == pb.INDEX_KIND_IVF_FLAT else {}
    await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("f", DIM, kind=kind, **index)))
    await load(stub, "f", base)
    flt, predicate = _filters()[name]
    price, category, brand, tags = attribute_columns(N)
    matching = np.flatnonzero(predicate(price, category, brand, tags))
    assert len(matching) >= 10

    reply = await stub.Search(search_request("f", queries, 10, filter=flt, params=pb.SearchParams(nprobe=2)))
    _, sub = exact_knn(base[matching], queries, 10, False)
    truth = matching[sub]
    got = ids_of(reply)
    assert all(len(row) == 10 for row in got), "a filtered search must not fall short of k"
    assert all(set(row) <= set(matching.tolist()) for row in got)
    if kind == pb.INDEX_KIND_FLAT or len(matching) <= 50:
        assert got == truth.tolist()
    else:
        assert recall_at(got, truth, 10) >= 0.6


async def test_filter_matching_fewer_than_k_returns_all_matches(index_stub, data) -> None:
    base, queries = data
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec("few", DIM)))
    await load(index_stub, "few", base)
    flt = pb.Filter(range=pb.NumberRange(field="price", gte=0, lt=3))  # price = 37*i mod 1000
    price, *_ = attribute_columns(N)
    matching = set(np.flatnonzero(price < 3).tolist())
    reply = await index_stub.Search(search_request("few", queries[:2], 50, filter=flt))
    assert [set(r) for r in ids_of(reply)] == [matching, matching]

    none = pb.Filter(keyword=pb.KeywordIn(field="category", values=["no-such-category"]))
    reply = await index_stub.Search(search_request("few", queries[:2], 5, filter=none))
    assert [len(r.hits) for r in reply.results] == [0, 0]


async def test_ivf_with_few_lists_probed_never_falls_short_of_k(index_stub, data) -> None:
    base, queries = data
    await index_stub.CreateCollection(
        pb.CreateCollectionRequest(spec=spec("ivf", DIM, kind=pb.INDEX_KIND_IVF_FLAT, nlist=32))
    )
    await load(index_stub, "ivf", base)
    reply = await index_stub.Search(
        search_request("ivf", queries[:4], 1000, params=pb.SearchParams(nprobe=1))
    )
    assert [len(r.hits) for r in reply.results] == [1000] * 4
    assert all(len({h.id for h in r.hits}) == 1000 for r in reply.results)
