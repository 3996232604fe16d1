"""The lexical space: BM25 with SQLite FTS5 in the index's own database, beside the vector spaces.

In-process engine for filters, deletes, restart, hostile text and the schema migration; a real index
service process for kill -9 (a product is in every space or in none).
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from demo.catalog import generate_catalog
from index_service import codec, convert
from index_service.engine import Engine
from index_service.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from index_service.model import LexicalField, LexicalSpec, LexicalTokenizer
from index_service.storage import SCHEMA_VERSION
from operations.servers import index_server
from tests.index_service.builders import multi_spec, vector_spec
from vitrine import items
from vitrine.filters import FieldFilter, matches
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc

ATTRIBUTES = ("color", "material", "pattern")
PRODUCTS = [p for p, _ in generate_catalog(120, seed=3)]
BY_ID = {p.id: p for p in PRODUCTS}
FILTERS = [
    (FieldFilter("color", ("red",)),),
    (FieldFilter("brand", (PRODUCTS[0].brand,)), FieldFilter("price", max=150.0)),
    (FieldFilter("category", (PRODUCTS[1].category[-1],)),),
    (FieldFilter("category", ("Fashion",)), FieldFilter("material", ("leather", "suede"))),
    (FieldFilter("price", min=80.0),),
]
QUERIES = ["red leather boots", "wireless headphones", PRODUCTS[7].title, "ceramic mug for tea"]
HOSTILE = [
    "title:x OR NEAR(",
    'NEAR("a" "b", 2) AND NOT c*',
    '"',
    "*",
    "^red",
    "f0:red OR f1:boots",
    "{f0 f1}: boots",
    "'; DROP TABLE items; --",
    "(((((",
    "boots\x00leather",
    "AND OR NOT",
    "💥 ünïcödé ß",
    "x" * 1024,
    " ".join(f"w{i}" for i in range(300))[:1024],
]


def _engine(path: Path, tokenizer: int = LexicalTokenizer.UNSPECIFIED) -> Engine:
    engine = Engine(str(path))
    engine.load()
    spec = codec.spec_of(items.collection_spec("shop", ATTRIBUTES))
    spec = dataclasses.replace(  # the catalog's own schema and lexical fields, one small vector space
        spec,
        vectors=spec.vectors[:1],
        lexical=tuple(LexicalSpec(lex.name, tokenizer, lex.fields) for lex in spec.lexical),
    )
    if not engine.registry.handles():
        engine.registry.create(spec)
    return engine


def _write(engine: Engine, products: list, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    engine.writes.upsert(
        "shop",
        [
            convert.item_of(
                items.item_of(p, {items.IMAGE: rng.standard_normal(items.SPACES[items.IMAGE])}, ATTRIBUTES)
            )
            for p in products
        ],
    )


def _search(engine: Engine, text: str, k: int = 200, filters: tuple = (), prefix: bool = False) -> list:
    flt = items.index_filter(filters)
    domain = convert.filter_of(flt) if flt is not None else None
    engine.reads.prepare_text_search("shop", items.LEXICAL, [text], 0, k, domain)
    (hits,) = engine.reads.search_text("shop", items.LEXICAL, [text], k, domain, prefix)
    return [(h.id, h.score) for h in hits]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = _engine(tmp_path_factory.mktemp("lexical"))
    _write(engine, PRODUCTS)
    yield engine
    engine.close()


@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_filtered_search_is_the_ranked_list_restricted_to_what_matches_admits(shop: Engine, filters) -> None:
    admitted = {p.id for p in PRODUCTS if matches(p, filters)}
    assert 0 < len(admitted) < len(PRODUCTS)
    for text in QUERIES:
        ranked = [pid for pid, _ in _search(shop, text, k=1000)]
        expected = [pid for pid in ranked if pid in admitted]
        filtered = [pid for pid, _ in _search(shop, text, k=1000, filters=filters)]
        assert filtered == expected, (text, filters)
        assert [pid for pid, _ in _search(shop, text, k=3, filters=filters)] == expected[:3]


def test_a_product_is_found_by_its_words_best_first(shop: Engine) -> None:
    target = PRODUCTS[7]
    hits = _search(shop, target.title, k=5)
    assert hits[0][0] == target.id
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    brand_hits = {pid for pid, _ in _search(shop, target.brand, k=1000)}
    assert {p.id for p in PRODUCTS if p.brand == target.brand} <= brand_hits


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_is_words_never_fts5_syntax(shop: Engine, text: str) -> None:
    hits = _search(shop, text)  # no exception: quoted words, never operators or column filters
    assert all(pid in BY_ID for pid, _ in hits)


def test_operators_in_the_text_are_plain_words(shop: Engine) -> None:
    assert _search(shop, "title:red OR NEAR(boots") == _search(shop, "title red or near boots")
    assert _search(shop, "!!! ((( ***") == []


def test_text_limits_are_invalid_argument(shop: Engine) -> None:
    for text in ("", "x" * 1025):
        with pytest.raises(InvalidArgument, match="1-1024 characters"):
            shop.reads.prepare_text_search("shop", items.LEXICAL, [text], 0, 10, None)
    with pytest.raises(InvalidArgument, match="is lexical"):
        shop.reads.prepare_text_search("shop", items.LEXICAL, ["boots"], 1, 10, None)
    with pytest.raises(InvalidArgument, match="is lexical"):
        shop.reads.prepare_search(
            "shop", items.LEXICAL, [np.ones(3, np.float32)], 10, None, convert.params_of(pb.SearchParams())
        )


def test_deleted_and_replaced_products_never_come_back_across_restart(tmp_path: Path) -> None:
    engine = _engine(tmp_path, LexicalTokenizer.UNICODE61)
    _write(engine, PRODUCTS[:40])
    gone, renamed = PRODUCTS[3], PRODUCTS[4]
    assert gone.id in {pid for pid, _ in _search(engine, gone.title)}
    engine.writes.delete("shop", [gone.id])
    _write(engine, [dataclasses.replace(renamed, title="zzyzx lamp")])
    before = {text: _search(engine, text) for text in (gone.title, renamed.title, "zzyzx", *QUERIES)}
    assert engine.reads.stats("shop").lexical[0].count == 39  # rows in the FTS5 table: one per live item
    assert gone.id not in {pid for hits in before.values() for pid, _ in hits}
    assert [pid for pid, _ in before["zzyzx"]] == [renamed.id]
    engine.writes.snapshot("shop")
    engine.close()
    again = _engine(tmp_path, LexicalTokenizer.UNICODE61)
    try:
        assert {text: _search(again, text) for text in before} == before  # ids and scores, identically
        assert again.reads.stats("shop").lexical[0].count == 39
    finally:
        again.close()


def test_a_schema_3_data_directory_opens_and_gains_a_filled_lexical_space(tmp_path: Path) -> None:
    """Version 3 had no lexical spaces: a collection without one, at user_version 3, is its layout."""
    engine = Engine(str(tmp_path))
    engine.load()
    spec = codec.spec_of(items.collection_spec("shop", ATTRIBUTES))
    engine.registry.create(dataclasses.replace(spec, vectors=spec.vectors[:1], lexical=()))
    _write(engine, PRODUCTS[:30])
    engine.close()
    with sqlite3.connect(tmp_path / "index.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        db.execute("PRAGMA user_version=3")
    engine = Engine(str(tmp_path))
    engine.load()
    try:
        lexical = codec.lexical_spec_of(items.lexical_spec())
        stats = engine.registry.add_lexical("shop", lexical)
        assert stats.lexical[0].count == 30 and stats.spec.lexical[0].tokenizer == LexicalTokenizer.TRIGRAM
        assert _search(engine, PRODUCTS[5].title, k=1)[0][0] == PRODUCTS[5].id  # filled from stored records
        with pytest.raises(AlreadyExists):
            engine.registry.add_lexical("shop", lexical)
        with pytest.raises(AlreadyExists):
            engine.registry.add_lexical("shop", LexicalSpec(items.IMAGE, 0, (LexicalField("title"),)))
        with pytest.raises(FailedPrecondition, match="is lexical"):
            engine.registry.drop_space("shop", items.LEXICAL)
        _write(engine, PRODUCTS[30:32])
        assert _search(engine, PRODUCTS[31].title, k=1)[0][0] == PRODUCTS[31].id
    finally:
        engine.close()
    with sqlite3.connect(tmp_path / "index.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4


# ---- kill -9: a product is in every space, lexical included, or in none ----

IDS = [f"q{i}" for i in range(30)]


def _product(pid: str, version: int) -> pb.Item:
    """Both vectors and the words encode the version: ``v<version>`` in the title."""
    n = int(pid[1:])
    return pb.Item(
        id=pid,
        vectors={
            "image": pb.Vector(values=[float(n), float(version), 0.5, 0.5]),
            "title": pb.Vector(values=[float(version), float(n), 0.25]),
        },
        payload=pb.Payload(title=f"{pid} v{version} every"),
    )


@pytest.mark.slow
def test_lexical_and_vector_spaces_never_diverge_across_kill_9(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    proc = index_server(tmp_path / "data", snapshot_every=40, brute_force_max=0)
    collection = multi_spec("products", {"image": vector_spec(4), "title": vector_spec(3)})
    collection.lexical.append(
        pb.LexicalSpec(
            name="words", tokenizer=pb.LEXICAL_TOKENIZER_UNICODE61, fields=[pb.LexicalField(source="title")]
        )
    )
    acked: dict[str, int] = {}  # id -> version; 0 = deleted
    proc.start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            index_pb2_grpc.IndexServiceStub(channel).CreateCollection(
                pb.CreateCollectionRequest(spec=collection)
            )
        version = 0
        for _round in range(3):
            kill_at = int(rng.integers(3, 25))
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
                    ids = [str(x) for x in rng.choice(IDS, size=int(rng.integers(1, 8)), replace=False)]
                    delete = rng.random() < 0.25
                    inflight = dict.fromkeys(ids, 0 if delete else version)
                    try:
                        if delete:
                            stub.Delete(pb.DeleteRequest(collection="products", ids=ids), timeout=30)
                        else:
                            items_ = [_product(i, version) for i in ids]
                            stub.Upsert(pb.UpsertRequest(collection="products", items=items_), timeout=30)
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
                _verify(index_pb2_grpc.IndexServiceStub(channel), acked, inflight)
    finally:
        proc.kill()
        proc.close()


def _verify(stub: index_pb2_grpc.IndexServiceStub, acked: dict[str, int], inflight: dict[str, int]) -> None:
    got = stub.Get(pb.GetRequest(collection="products", ids=IDS, include_vectors=True))
    present = {it.id: it for it in got.items}
    for pid in IDS:
        allowed = {acked.get(pid, 0), *([inflight[pid]] if pid in inflight else [])}
        version = int(present[pid].vectors["image"].values[1]) if pid in present else 0
        assert version in allowed, (pid, version, allowed)
        acked[pid] = version  # the in-flight write may have landed (whole)

    def lexical(texts: list[str]) -> list[list[str]]:
        reply = stub.Search(
            pb.SearchRequest(
                collection="products", vector="words", queries=[pb.Query(text=t) for t in texts], k=1000
            )
        )
        return [[h.id for h in r.hits] for r in reply.results]

    stats = stub.GetStats(pb.GetStatsRequest(name="products"))
    assert stats.count == stats.lexical[0].count == len(present)  # FTS5 rows, counted in the table
    (everyone,) = lexical(["every"])
    assert sorted(everyone) == sorted(present), "the lexical space holds exactly the live products"
    if present:
        found = lexical([f"{pid} v{acked[pid]}" for pid in present])
        for pid, hits in zip(present, found, strict=True):
            it = present[pid]
            assert int(it.vectors["title"].values[0]) == acked[pid] == int(it.payload.title.split()[1][1:])
            assert hits[0] == pid, (pid, hits)  # its own id and version words rank it first
            assert not [h for h in hits if acked.get(h, 0) == 0], "a deleted product came back"


# ---- over gRPC: statuses, and a catalog created before lexical spaces gains one ----


async def test_a_catalog_without_a_lexical_space_gains_a_filled_one(
    index_stub: index_pb2_grpc.IndexServiceStub,
) -> None:
    from gateway.index_client import IndexRetriever

    old = items.collection_spec("old", ATTRIBUTES)
    del old.lexical[:]  # as the gateway created catalogs before lexical spaces
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=old))
    vectors = {space: np.ones(dim, np.float32) for space, dim in items.SPACES.items()}
    await index_stub.Upsert(
        pb.UpsertRequest(
            collection="old", items=[items.item_of(p, vectors, ATTRIBUTES) for p in PRODUCTS[:20]]
        )
    )
    retriever = IndexRetriever("127.0.0.1:1", "old", ATTRIBUTES)  # its channel is never used:
    retriever.stub = index_stub  # the calls go to this test's in-process server
    try:
        await retriever.ensure_collection()
        stats = await index_stub.GetStats(pb.GetStatsRequest(name="old"))
        assert [(lex.name, lex.count) for lex in stats.lexical] == [(items.LEXICAL, 20)]
        (hits,) = await retriever.search_text(items.LEXICAL, [PRODUCTS[9].title], 3, (), 10.0)
        assert hits[0].id == PRODUCTS[9].id and hits[0].product.title == PRODUCTS[9].title
        retriever._ensured = False
        await retriever.ensure_collection()  # a second gateway finds it there
    finally:
        await retriever.close()


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r.queries[0], "text", "x" * 1025), grpc.StatusCode.INVALID_ARGUMENT, "1-1024"),
        (lambda r: r.queries[0].vector.extend([1.0]), grpc.StatusCode.INVALID_ARGUMENT, "is lexical"),
        (lambda r: setattr(r, "k", 0), grpc.StatusCode.INVALID_ARGUMENT, "k must be"),
        (
            lambda r: r.filter.keyword.CopyFrom(pb.KeywordIn(field="nope", values=["x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nope",
        ),
        (lambda r: setattr(r, "collection", "missing"), grpc.StatusCode.NOT_FOUND, "missing"),
    ],
    ids=["long text", "vector", "k", "filter field", "collection"],
)
async def test_bad_lexical_searches_get_precise_statuses(
    index_stub: index_pb2_grpc.IndexServiceStub, mutate, code, message
) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=items.collection_spec("c", ATTRIBUTES)))
    request = pb.SearchRequest(collection="c", vector=items.LEXICAL, queries=[pb.Query(text="boots")], k=5)
    assert not (await index_stub.Search(request)).results[0].hits  # empty collection: no hits, no error
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.Search(request)
    assert err.value.code() == code and message in (err.value.details() or "")


@pytest.mark.parametrize(
    ("lexical", "code", "message"),
    [
        (
            pb.LexicalSpec(name="w", fields=[pb.LexicalField(source="body")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "'body'",
        ),
        (pb.LexicalSpec(name="w"), grpc.StatusCode.INVALID_ARGUMENT, "fields"),
        (
            pb.LexicalSpec(name="w", tokenizer=9, fields=[pb.LexicalField(source="title")]),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "tokenizer",
        ),
        (
            pb.LexicalSpec(name="w", fields=[pb.LexicalField(source="title", weight=-1)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "weight",
        ),
        (
            pb.LexicalSpec(name="w~x", fields=[pb.LexicalField(source="title")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name",
        ),
        (
            pb.LexicalSpec(name=items.LEXICAL, fields=[pb.LexicalField(source="title")]),
            grpc.StatusCode.ALREADY_EXISTS,
            "already",
        ),
        (
            pb.LexicalSpec(name=items.IMAGE, fields=[pb.LexicalField(source="title")]),
            grpc.StatusCode.ALREADY_EXISTS,
            "already",
        ),
    ],
    ids=["source", "no fields", "tokenizer", "weight", "name", "taken", "vector's name"],
)
async def test_bad_lexical_spaces_get_precise_statuses(
    index_stub: index_pb2_grpc.IndexServiceStub, lexical: pb.LexicalSpec, code, message
) -> None:
    await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=items.collection_spec("c", ATTRIBUTES)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.AddLexicalSpace(pb.AddLexicalSpaceRequest(collection="c", lexical=lexical))
    assert err.value.code() == code and message in (err.value.details() or ""), err.value.details()
    spec = items.collection_spec("d", ATTRIBUTES)
    spec.lexical.append(lexical)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        code = grpc.StatusCode.INVALID_ARGUMENT  # declared twice in one spec
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await index_stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
    assert err.value.code() == code
