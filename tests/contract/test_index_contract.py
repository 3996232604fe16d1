"""One contract, both index backends: the FAISS index service (``IndexRetriever``) and Milvus
(``MilvusIndex`` on milvus-lite). The same seeded catalog, the same queries and filters (hostile values
included), the same expected ids (brute force over the products in hand with ``vitrine.filters.matches``),
the same statuses on bad input, and acknowledged writes surviving kill -9 of the process that wrote them.
Flat (exact) search on both, so results are compared exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.errors import GatewayError
from gateway.index_backends import IndexBackend, open_index
from gateway.types import Record
from operations import servers
from operations.launcher import ChildServer
from tests.contract.catalog import HOSTILE, records
from vitrine.errors import MAX_MESSAGE_CHARS
from vitrine.filters import FieldFilter, matches
from vitrine.items import IMAGE, OPTIONAL_SPACES, SPACES, TITLE

pytest.importorskip("milvus_lite", reason="pip install milvus-lite (pyproject's dependencies)")

BACKENDS = ("faiss", "milvus-lite")
ATTRIBUTES = ("color",)
N = 60
Open = Callable[..., Awaitable[IndexBackend]]
_names = itertools.count()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def milvus_lite_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded milvus-lite for the module (it starts in about a second), stopped at its end."""
    from milvus_lite.server_manager import server_manager_instance

    path = tmp_path_factory.mktemp("milvus") / "contract.db"
    yield path
    server_manager_instance.release_server(str(path))


@pytest.fixture(scope="module", params=BACKENDS)
def address(request: pytest.FixtureRequest, index_server: servers.IndexServer, milvus_lite_file: Path) -> str:
    return index_server.address if request.param == "faiss" else f"milvus-lite:{milvus_lite_file}"


async def _catalog(index: IndexBackend) -> list[Record]:
    recs = records(N, seed=7)
    await index.upsert(recs[:30], 30.0)
    await index.upsert(recs[30:], 30.0)
    return recs


@pytest.fixture(scope="module")
async def shared(address: str) -> AsyncIterator[tuple[IndexBackend, list[Record]]]:
    """One catalog per backend for the tests that only read it (refused writes leave it as it was)."""
    index = open_index(address, f"shared_{os.getpid()}", ATTRIBUTES)
    await index.ensure_collection(30.0)
    yield index, await _catalog(index)
    await index.close()


@pytest.fixture
async def open_backend(address: str) -> AsyncIterator[Open]:
    """Opens a fresh catalog (a collection of its own) on the parametrized backend."""
    opened: list[IndexBackend] = []

    async def open_(prefix: str = "c") -> IndexBackend:
        index = open_index(address, f"{prefix}{next(_names)}_{os.getpid()}", ATTRIBUTES)
        await index.ensure_collection(30.0)
        opened.append(index)
        return index

    yield open_
    for index in opened:
        await index.close()


@pytest.fixture
async def catalog(open_backend: Open) -> tuple[IndexBackend, list[Record]]:
    """A catalog of the test's own, for the tests that change it."""
    index = await open_backend()
    return index, await _catalog(index)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def brute_force(
    recs: list[Record], space: str, query: np.ndarray, k: int, filters: list[FieldFilter]
) -> list[str]:
    scored = [
        (float(_unit(r.vectors[space]) @ _unit(query)), r.product.id)
        for r in recs
        if matches(r.product, filters)
    ]
    return [pid for _, pid in sorted(scored, reverse=True)[:k]]


FILTERS = [
    [],
    [FieldFilter("category", ("Shoes",))],
    [FieldFilter("category", ("Fashion > Bags", 'Odd"Cat'))],
    [FieldFilter("price", min=5.0, max=20.0)],
    [FieldFilter("price", max=0.0)],
    [FieldFilter("brand", ("acme",)), FieldFilter("price", min=10.0)],
    [FieldFilter("color", HOSTILE[:2])],
    [FieldFilter("color", ("a\\b", 'x"y')), FieldFilter("category", ("Fashion",))],
    *([FieldFilter("brand", (h,))] for h in HOSTILE),
    [FieldFilter("brand", ('" or 1==1 or "acme',))],
    [FieldFilter("category", ("Sub\\Cat",))],
]


async def test_search_returns_the_exact_neighbours_under_every_filter(shared) -> None:
    index, recs = shared
    rng = np.random.default_rng(1)
    for space, flt in [*((TITLE, f) for f in FILTERS[:4]), *((IMAGE, f) for f in FILTERS)]:
        query = rng.standard_normal(512).astype(np.float32)
        (hits,) = await index.search(space, [query], 10, flt, 30.0)
        assert [h.id for h in hits] == brute_force(recs, space, query, 10, flt), (space, flt)
        want = {r.product.id: float(_unit(r.vectors[space]) @ _unit(query)) for r in recs}
        assert all(math.isclose(h.score, want[h.id], abs_tol=1e-4) for h in hits)
        assert all(h.product == next(r.product for r in recs if r.product.id == h.id) for h in hits)


async def test_a_hostile_filter_value_selects_only_its_own_products(shared) -> None:
    index, recs = shared
    query = recs[0].vectors[IMAGE]
    for value in HOSTILE:
        (hits,) = await index.search(IMAGE, [query], 100, [FieldFilter("brand", (value,))], 30.0)
        assert sorted(h.id for h in hits) == sorted(r.product.id for r in recs if r.product.brand == value)
        assert hits, value
    for value in ('" or 1==1 or "x', "acme' or '1'='1", "acme\\", '"]) or (["'):
        (hits,) = await index.search(IMAGE, [query], 100, [FieldFilter("brand", (value,))], 30.0)
        assert hits == [], value


async def test_get_and_delete_round_trip(catalog) -> None:
    index, recs = catalog
    by_id = {r.product.id: r for r in recs}
    found = await index.get(["p1", "p4", "missing", "p1"], 30.0)
    assert sorted(found) == ["p1", "p4"]
    for pid, (product, vectors) in found.items():
        assert product == by_id[pid].product
        assert sorted(vectors) == [IMAGE, TITLE]
        np.testing.assert_allclose(vectors[IMAGE], _unit(by_id[pid].vectors[IMAGE]), atol=1e-6)
    assert await index.delete(["p1", "missing"], 30.0) == 1
    assert await index.delete(["p1"], 30.0) == 0
    assert "p1" not in await index.get(["p1"], 30.0)
    (hits,) = await index.search(IMAGE, [by_id["p1"].vectors[IMAGE]], 5, [], 30.0)
    assert "p1" not in [h.id for h in hits]
    changed = Record(
        by_id["p4"].product.__class__(**{**by_id["p4"].product.__dict__, "title": "renamed"}),
        by_id["p4"].vectors,
    )
    await index.upsert([changed], 30.0)
    assert (await index.get(["p4"], 30.0))["p4"][0].title == "renamed"


async def test_an_optional_space_is_searched_among_the_items_that_have_one_and_kept_by_upserts(
    catalog,
) -> None:
    index, recs = catalog
    rng = np.random.default_rng(3)
    await index.add_space("rec.1", 8)
    with pytest.raises(GatewayError, match="already"):
        await index.add_space("rec.1", 8)
    assert await index.spaces() == [*SPACES, *OPTIONAL_SPACES, "rec.1"]
    vecs = {f"p{i}": rng.standard_normal(8).astype(np.float32) for i in range(5)}
    assert await index.upsert_vectors("rec.1", {**vecs, "ghost": np.ones(8, np.float32)}, 30.0) == ["ghost"]
    await index.upsert(recs[:2], 30.0)  # a product upsert that does not name rec.1 keeps its vector
    query = rng.standard_normal(8).astype(np.float32)
    (hits,) = await index.search("rec.1", [query], 10, [], 30.0)
    expected = sorted(vecs, key=lambda pid: -float(_unit(vecs[pid]) @ _unit(query)))
    assert [h.id for h in hits] == expected
    (hits,) = await index.search("rec.1", [query], 10, [FieldFilter("category", ("Shoes",))], 30.0)
    assert [h.id for h in hits] == [pid for pid in expected if "Shoes" in recs[int(pid[1:])].product.category]
    assert sorted((await index.get(["p0"], 30.0))["p0"][1]) == sorted([IMAGE, TITLE, "rec.1"])
    only = await index.get(["p0", "p1"], 30.0, spaces=("rec.1",))  # the vectors asked for, and no other
    assert {pid: sorted(v) for pid, (_, v) in only.items()} == {"p0": ["rec.1"], "p1": ["rec.1"]}
    np.testing.assert_allclose(only["p0"][1]["rec.1"], _unit(vecs["p0"]), atol=1e-6)
    bare = await index.get(["p0", "p7"], 30.0, spaces=())
    assert {pid: (p.id, v) for pid, (p, v) in bare.items()} == {"p0": ("p0", {}), "p7": ("p7", {})}
    await index.drop_space("rec.1")
    assert await index.spaces() == [*SPACES, *OPTIONAL_SPACES]
    assert len(await index.get([r.product.id for r in recs], 30.0)) == N


async def _status(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(GatewayError) as info:
        await call
    message = str(info.value)
    assert len(message) <= MAX_MESSAGE_CHARS
    return info.value.code, message


async def test_bad_input_gets_the_same_precise_status_on_both(shared) -> None:
    index, recs = shared
    q = np.ones(512, np.float32)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    cases = {
        "unknown space": (index.search("colour", [q], 5, [], 30.0), bad, "colour"),
        "wrong dimension": (index.search(IMAGE, [np.ones(3, np.float32)], 5, [], 30.0), bad, "dim"),
        "NaN query": (index.search(IMAGE, [np.full(512, np.nan, np.float32)], 5, [], 30.0), bad, "NaN"),
        "zero query": (index.search(IMAGE, [np.zeros(512, np.float32)], 5, [], 30.0), bad, "zero"),
        "k = 0": (index.search(IMAGE, [q], 0, [], 30.0), bad, "k must be"),
        "k too large": (index.search(IMAGE, [q], 10_001, [], 30.0), bad, "k must be"),
        "missing space": (index.upsert([Record(recs[0].product, {IMAGE: q})], 30.0), bad, "title"),
        "undeclared space": (
            index.upsert([Record(recs[0].product, {**recs[0].vectors, "x" * 5000: q})], 30.0), bad, "unknown",
        ),
        "a NaN vector": (
            index.upsert([Record(recs[0].product, {IMAGE: q, TITLE: q * np.inf})], 30.0), bad, "NaN",
        ),
        "duplicate delete ids": (index.delete(["p2", "p2"], 30.0), bad, "duplicate"),
        "duplicate upsert ids": (index.upsert([recs[3], recs[3]], 30.0), bad, "duplicate"),
        "an empty upsert": (index.upsert([], 30.0), bad, "at least one"),
        "an unknown space's vectors": (index.upsert_vectors("rec.9", {"p0": np.ones(8)}, 30.0), bad, "rec.9"),
    }  # fmt: skip
    for name, (call, code, needle) in cases.items():
        got, message = await _status(call)
        assert (got, needle in message) == (code, True), (name, got, message)
    assert "x" * 300 not in (await _status(index.search("x" * 5000, [q], 5, [], 30.0)))[1]
    # the stored catalog is untouched by the refused writes
    assert len(await index.get([r.product.id for r in recs], 30.0)) == N


def _acked(writer: subprocess.Popen[str], batches: int) -> list[str]:
    assert writer.stdout is not None
    ids: list[str] = []
    deadline = time.monotonic() + 60
    while batches and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, "writer exited before acknowledging"
        if line.startswith("acked "):
            ids += line.split()[1:]
            batches -= 1
    return ids


async def _get(address: str, ids: list[str]) -> dict[str, object]:
    index = open_index(address, "durable", ATTRIBUTES)
    try:
        return dict(await index.get(ids, 30.0))
    finally:
        await index.close()


def _service(backend: str, tmp_path: Path) -> tuple[str, ChildServer | None]:
    """The index the writer writes to, and the server process that holds its data (None: the writer
    embeds it)."""
    if backend != "faiss":
        return f"milvus-lite:{tmp_path / 'kill.db'}", None
    service = servers.index_server(tmp_path / "index")
    service.start()
    return service.address, service


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_rows_survive_kill_9_of_the_writing_process(backend: str, tmp_path: Path) -> None:
    """Embedded milvus-lite dies with the writer; the FAISS service holds the data in its own process,
    which is the one killed (and restarted on its directory)."""
    address, service = _service(backend, tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.contract.writer", address, "durable"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        acked = _acked(writer, 2)
        if service is not None:
            service.kill()
            service.restart()
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        found = asyncio.run(_get(address, acked))
        assert sorted(found) == sorted(acked)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
        assert writer.stdout is not None
        writer.stdout.close()
        if service is not None:
            service.close()


@pytest.mark.parametrize("address", ["127.0.0.1:1", "milvus://127.0.0.1:1"])
async def test_an_index_that_cannot_be_reached_is_unavailable(address: str) -> None:
    index = open_index(address, "absent", ATTRIBUTES)
    try:
        assert not await index.ready(1.0)
        code, _ = await _status(index.search(IMAGE, [np.ones(512, np.float32)], 5, [], 10.0))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await index.close()
