"""Property: no request a client can send makes the index service blame itself.

Hypothesis generates malformed and extreme requests of every IndexService RPC (names and ids of any
length and alphabet, vectors with NaN, infinities and wrong dimensions, every numeric parameter up to
2^32-1, deep filters, undeclared attributes, streams, and raw bytes that are not a request at all) and
sends them to a real server. Whatever the status, it is never UNKNOWN or INTERNAL, its message stays
under the cap, and a good search succeeds right after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.index_service.builders import items, spec
from vitrine.errors import MAX_MESSAGE_CHARS
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

DIM = 8
SERVICE = "/vitrine.index.v2.IndexService/"
BLAMES_SERVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

EXTREMES = [0, 1, 8, 4097, 65_537, 2**31 - 1, 2**31, 2**32 - 1]
"""FAISS takes int32: the values around and above 2^31 matter most."""
uint32 = st.one_of(st.sampled_from(EXTREMES), st.integers(0, 2**32 - 1))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
names = st.one_of(
    st.sampled_from(["c", "h", "alias", "", "nope", "v", "price", "x" * 129, "a/b"]),
    st.text(max_size=12),
    st.text(min_size=500, max_size=2000, alphabet="xy\u00e9\U0001f600"),
)
targets = names.filter(lambda n: n not in ("c", "h"))  # the collections holding data stay
vectors = st.one_of(
    st.lists(floats, min_size=DIM, max_size=DIM),
    st.lists(floats, max_size=12),
    st.just([0.0] * DIM),
)
space_vectors = st.dictionaries(
    st.sampled_from(["v", "rec", "x" * 70]), st.builds(pb.Vector, values=vectors), max_size=3
)


def _filters() -> st.SearchStrategy[pb.Filter]:
    leaves = st.one_of(
        st.builds(
            lambda f, v: pb.Filter(keyword=pb.KeywordIn(field=f, values=v)),
            names,
            st.lists(st.text(max_size=5), max_size=3),
        ),
        st.builds(lambda a: pb.Filter(tags=pb.TagMatch(any=a)), st.lists(st.text(max_size=5), max_size=3)),
        st.builds(
            lambda f, lo, hi: pb.Filter(range=pb.NumberRange(field=f, gte=lo, lt=hi)),
            st.sampled_from(["price", "category", ""]),
            st.floats(),
            st.floats(),
        ),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(lambda c: pb.Filter(all=pb.FilterList(filters=c)), st.lists(children, max_size=3)),
            st.builds(lambda c: pb.Filter(any=pb.FilterList(filters=c)), st.lists(children, max_size=3)),
            st.builds(lambda c: pb.Filter(**{"not": c}), children),
        ),
        max_leaves=12,
    )


index_specs = st.builds(
    pb.IndexSpec,
    kind=st.integers(0, 6),
    nlist=uint32,
    pq_m=uint32,
    pq_nbits=uint32,
    hnsw_m=uint32,
    ef_construction=uint32,
    train_min=uint32,
)
vector_specs = st.builds(
    pb.VectorSpec,
    name=names,
    dim=st.one_of(st.integers(0, 16), st.sampled_from([4096, 4097, 2**32 - 1])),
    metric=st.integers(0, 3),
    index=index_specs,
    optional=st.booleans(),
)
item_strategy = st.builds(
    pb.Item,
    id=names,
    vectors=space_vectors,
    numbers=st.dictionaries(st.sampled_from(["price", "weight", ""]), st.floats(), max_size=2),
    keywords=st.dictionaries(st.sampled_from(["category", "brand", "nope"]), st.text(max_size=8), max_size=2),
    tags=st.lists(st.text(max_size=8), max_size=3),
    payload=st.builds(pb.Payload, title=st.text(max_size=50)),
)
search_params = st.builds(pb.SearchParams, nprobe=uint32, ef_search=uint32, exact=st.booleans())

REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateCollection": st.builds(
        lambda n, v, s: pb.CreateCollectionRequest(spec=pb.CollectionSpec(name=n, vectors=v, schema=s)),
        names,
        st.lists(vector_specs, max_size=3),
        st.builds(
            pb.AttributeSchema,
            number_fields=st.lists(names, max_size=2),
            keyword_fields=st.lists(names, max_size=2),
            non_negative_fields=st.lists(names, max_size=2),
        ),
    ),
    "DropCollection": st.builds(pb.DropCollectionRequest, name=targets),
    "ListCollections": st.just(pb.ListCollectionsRequest()),
    "Upsert": st.builds(pb.UpsertRequest, collection=names, items=st.lists(item_strategy, max_size=4)),
    "Delete": st.builds(pb.DeleteRequest, collection=targets, ids=st.lists(names, max_size=4)),
    "Get": st.builds(
        pb.GetRequest, collection=names, ids=st.lists(names, max_size=4), include_vectors=st.booleans()
    ),
    "Search": st.builds(
        pb.SearchRequest,
        collection=names,
        vector=st.sampled_from(["", "v", "rec", "nope"]),
        queries=st.lists(st.builds(pb.Query, vector=vectors), max_size=3),
        k=uint32,
        filter=st.one_of(st.none(), _filters()),
        params=search_params,
        include_payload=st.booleans(),
        include_attributes=st.booleans(),
    ),
    "GetStats": st.builds(pb.GetStatsRequest, name=names),
    "Snapshot": st.builds(pb.SnapshotRequest, name=st.sampled_from(["c", "nope", "x" * 3000])),
    "AddVectorSpace": st.builds(pb.AddVectorSpaceRequest, collection=names, vector=vector_specs),
    "DropVectorSpace": st.builds(pb.DropVectorSpaceRequest, collection=names, vector=names),
    "UpsertVectors": st.builds(
        pb.UpsertVectorsRequest,
        collection=names,
        vector=st.sampled_from(["", "v", "rec", "nope"]),
        items=st.lists(
            st.builds(pb.ItemVector, id=names, vector=st.builds(pb.Vector, values=vectors)), max_size=4
        ),
    ),
    "SetAlias": st.builds(pb.SetAliasRequest, alias=targets, collection=names),
    "DeleteAlias": st.builds(pb.DeleteAliasRequest, alias=names),
    "ListAliases": st.just(pb.ListAliasesRequest()),
}
UNARY = sorted(REQUESTS)

# Requests that are valid but for one extreme part, so the checks deep inside are reached too.
good_vector = st.lists(st.floats(-10, 10, width=32), min_size=DIM, max_size=DIM).filter(any)
NEAR_VALID: list[tuple[str, st.SearchStrategy[Any]]] = [
    (
        "Search",
        st.builds(
            pb.SearchRequest,
            collection=st.sampled_from(["h", "h", "c", "alias"]),
            queries=st.lists(st.builds(pb.Query, vector=good_vector), min_size=1, max_size=2),
            k=st.integers(1, 20),
            filter=st.one_of(st.none(), st.none(), st.none(), _filters()),
            params=st.one_of(
                st.builds(pb.SearchParams, ef_search=uint32), st.builds(pb.SearchParams, nprobe=uint32)
            ),
        ),
    ),
    (
        "CreateCollection",
        st.builds(
            lambda n, v: pb.CreateCollectionRequest(spec=pb.CollectionSpec(name=n, vectors=[v])),
            st.from_regex(r"[a-z]{1,8}", fullmatch=True),
            st.builds(
                pb.VectorSpec,
                name=st.just("v"),
                dim=st.integers(1, 16),
                metric=st.integers(1, 2),
                index=index_specs,
            ),
        ),
    ),
    (
        "Upsert",
        st.builds(
            lambda i, v, p: pb.UpsertRequest(
                collection="h",
                items=[pb.Item(id=i, vectors={"v": pb.Vector(values=v)}, numbers={"price": p})],
            ),
            st.text(min_size=1, max_size=8),
            vectors,
            st.floats(),
        ),
    ),
]

near_valid = st.sampled_from(range(len(NEAR_VALID))).flatmap(
    lambda i: st.tuples(st.just(NEAR_VALID[i][0]), NEAR_VALID[i][1])
)
calls = st.one_of(
    near_valid,
    near_valid,  # drawn as often as the wholly random requests together
    st.tuples(st.just("typed"), st.sampled_from(UNARY)).flatmap(
        lambda t: st.tuples(st.just(t[1]), REQUESTS[t[1]])
    ),
    st.tuples(st.just("UpsertStream"), st.lists(REQUESTS["Upsert"], max_size=3)),
    st.tuples(st.sampled_from([*UNARY, "UpsertStream"]), st.binary(max_size=64)).map(
        lambda t: ("raw:" + t[0], t[1])
    ),
)


def _query(**params: int) -> tuple[str, pb.SearchRequest]:
    request = pb.SearchRequest(collection="h", queries=[pb.Query(vector=[0.5] * DIM)], k=3)
    request.params.CopyFrom(pb.SearchParams(**params))
    return "Search", request


def _create(**index: int) -> tuple[str, pb.CreateCollectionRequest]:
    kind = pb.INDEX_KIND_IVF_PQ if "pq_nbits" in index or "pq_m" in index else pb.INDEX_KIND_HNSW
    return "CreateCollection", pb.CreateCollectionRequest(spec=spec("e", DIM, kind=kind, **index))


SEEDS = [
    *(_query(ef_search=v) for v in (2**31 - 1, 2**31, 2**32 - 1)),
    _query(nprobe=2**32 - 1),
    *(_create(**{field: 2**31}) for field in ("hnsw_m", "ef_construction", "pq_nbits", "pq_m", "nlist")),
    ("raw:UpsertStream", b"\x0a\x02\xff\xfe"),
]
"""Always tried besides the generated cases: Hypothesis mutates what it has seen and rarely reaches the
edges of a 32-bit field inside an otherwise valid request on its own."""


def _check(call: Callable[[], Any]) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
        assert code not in BLAMES_SERVER, (code, details)
        assert len(details) <= MAX_MESSAGE_CHARS, len(details)
        assert "class '" not in details and "Traceback" not in details, details


def _run_properties(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = index_pb2_grpc.IndexServiceStub(channel)
        good = pb.SearchRequest(collection="c", queries=[pb.Query(vector=[0.5] * DIM)], k=1)

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(calls)
        def property_(case: tuple[str, Any]) -> None:
            method, request = case
            if method.startswith("raw:"):
                name = method[4:]
                if name == "UpsertStream":
                    raw_stream = channel.stream_unary(SERVICE + name)
                    _check(lambda: raw_stream(iter([request, request]), timeout=10))
                else:
                    raw = channel.unary_unary(SERVICE + name)
                    _check(lambda: raw(request, timeout=10))
            elif method == "UpsertStream":
                _check(lambda: stub.UpsertStream(iter(request), timeout=10))
            else:
                _check(lambda: getattr(stub, method)(request, timeout=10))
            stub.Search(good, timeout=10)  # the service keeps serving: raises if it does not

        for seed in SEEDS:
            property_ = example(seed)(property_)
        property_()


async def test_no_malformed_or_extreme_request_gets_unknown_or_internal(index_factory) -> None:
    server, stub = await index_factory(brute_force_max=0)  # searches go through the FAISS indexes
    base = np.random.default_rng(11).standard_normal((20, DIM)).astype(np.float32)
    for name, kind in (("c", pb.INDEX_KIND_FLAT), ("h", pb.INDEX_KIND_HNSW)):
        await stub.CreateCollection(pb.CreateCollectionRequest(spec=spec(name, DIM, kind=kind)))
        await stub.Upsert(pb.UpsertRequest(collection=name, items=items(base)))
    await stub.SetAlias(pb.SetAliasRequest(alias="alias", collection="c"))
    # Hypothesis drives a blocking client from a thread while this loop serves the in-process server.
    await asyncio.to_thread(_run_properties, f"127.0.0.1:{server.port}")
