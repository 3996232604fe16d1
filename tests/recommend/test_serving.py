"""Recommendations against real services: the gateway in-process over a real Triton (serving the trained
user tower) and a real index service (item vectors in ``rec.<version>``), events in a real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import torch
import tritonclient.grpc as triton_grpc

from demo.behaviour import generate_behaviour
from gateway.recommend import RecommendSettings
from operations import recommend as rec
from operations.client import Connection
from operations.servers import GatewayServer
from operations.stack import Stack
from recommend.train import random_user_inputs
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine import triton as triton_request
from vitrine.catalog import Product, read_catalog
from vitrine.contracts import USER_TOWER_IO, Tensor
from vitrine.events import EVENT_CODE, read_store, write_events
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class RecStack:
    stack: Stack
    gw: GatewayHandle
    products: dict[str, Product]
    artifacts: Path
    events_file: Path
    work: Path

    @property
    def collection(self) -> str:
        return self.gw.gateway.config.pipeline.collection


@pytest_asyncio.fixture(scope="module")
async def rec_stack(
    tiny_artifacts: Path, small_catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RecStack]:
    work = tmp_path_factory.mktemp("rec-stack")
    stack = Stack(work, tiny_artifacts)
    await asyncio.to_thread(stack.start_triton)
    await asyncio.to_thread(stack.start_index)
    assert stack.triton is not None and stack.index is not None
    config = gateway_config_for(
        stack.triton.grpc_url,
        stack.index.address,
        recommend=RecommendSettings(events_path=str(work / "events.sqlite3"), rec_version_ttl_s=0.1),
        http_port=0,
    )
    gw = await start_gateway(config, small_catalog)
    products = {p.id: p for p in read_catalog(small_catalog) if isinstance(p, Product)}
    events = generate_behaviour(list(products.values()), 30, seed=2, end=time.time() - 60)
    events_file = work / "demo.jsonl"
    write_events(events_file, events)
    recorded, errors = await asyncio.to_thread(rec.load_events, Connection(gw.address), events_file)
    assert recorded == len(events) and not errors
    artifacts = work / "recommender"
    await asyncio.to_thread(
        rec.train,
        events_file,
        small_catalog,
        stack.index.address,
        config.pipeline.collection,
        artifacts,
        True,
    )
    version = await asyncio.to_thread(
        rec.deploy,
        artifacts,
        stack.triton.repo,
        stack.triton.grpc_url,
        stack.index.address,
        config.pipeline.collection,
    )
    assert version == 1
    yield RecStack(stack, gw, products, artifacts, events_file, work)
    await stop_gateway(gw)
    await asyncio.to_thread(stack.stop)


async def _recommend(gw: GatewayHandle, **kw: Any) -> pb.RecommendResponse:
    return await gw.stub.Recommend(pb.RecommendRequest(**kw), timeout=30)


def _event(eid: str, user: str, item: str, kind: str = "view", ts: float = 0.0) -> pb.Event:
    return pb.Event(event_id=eid, user_id=user, session_id=f"{user}-live", item_id=item, type=kind, ts=ts)


async def test_events_in_recommendations_out_without_seen_items(rec_stack: RecStack) -> None:
    resp = await _recommend(rec_stack.gw, user_id="u00003", top_k=5)
    assert resp.strategy == "personal" and resp.model_version == 1
    assert len(resp.items) == 5 and all(r.product.id in rec_stack.products for r in resp.items)
    assert all(r.reason.startswith("because you ") for r in resp.items)
    seen = {e.item_id for e in read_store(rec_stack.work / "events.sqlite3") if e.user_id == "u00003"}
    assert seen and not seen & {r.product.id for r in resp.items}
    again = await _recommend(rec_stack.gw, user_id="u00003", top_k=5, exclude_seen=False)
    assert again.strategy == "personal"


async def test_a_filter_is_respected(rec_stack: RecStack) -> None:
    resp = await _recommend(
        rec_stack.gw, user_id="u00004", top_k=5, filters=[pb.Filter(field="category", any_of=["Shoes"])]
    )
    assert resp.items and all("Shoes" in r.product.category for r in resp.items)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _recommend(rec_stack.gw, user_id="u00004", filters=[pb.Filter(field="nope", any_of=["x"])])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cold_start_users_get_trending_or_context_neighbours(rec_stack: RecStack) -> None:
    resp = await _recommend(rec_stack.gw, user_id="never-seen", top_k=4)
    assert resp.strategy == "trending" and len(resp.items) == 4
    assert all(r.reason == "trending now" for r in resp.items)
    context = "p000003"
    resp = await _recommend(rec_stack.gw, user_id="never-seen", top_k=4, context_item_id=context)
    assert resp.strategy == "session" and len(resp.items) == 4
    assert context not in {r.product.id for r in resp.items}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _recommend(rec_stack.gw, user_id="never-seen", context_item_id="no-such-item")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_event_changes_the_next_answer(rec_stack: RecStack) -> None:
    user = "fresh-user"
    ids = sorted(rec_stack.products)
    first = await rec_stack.gw.stub.RecordEvents(
        iter([pb.RecordEventsRequest(events=[_event("f1", user, ids[0])])])
    )
    assert first.recorded == 1
    before = await _recommend(rec_stack.gw, user_id=user, top_k=8)
    assert before.strategy == "personal"
    shown = [r.product.id for r in before.items]
    await rec_stack.gw.stub.RecordEvents(
        iter(
            [
                pb.RecordEventsRequest(
                    events=[_event("f2", user, shown[0], "purchase"), _event("f3", user, ids[-1], "cart")]
                )
            ]
        )
    )
    after = await _recommend(rec_stack.gw, user_id=user, top_k=8)
    assert shown[0] not in {r.product.id for r in after.items}  # bought: now seen
    assert [r.product.id for r in after.items] != shown


async def test_http_records_events_and_recommends(rec_stack: RecStack) -> None:
    import httpx

    item = sorted(rec_stack.products)[4]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rec_stack.gw.gateway.http_port}") as http:
        events = [
            {"event_id": "h1", "user_id": "http-user", "item_id": item, "type": "click"},
            {"event_id": "h2", "user_id": "http-user", "item_id": "nope", "type": "click"},
        ]
        reply = await http.post("/v1/events", json={"events": events})
        assert reply.status_code == 200
        assert reply.json()["recorded"] == 1 and reply.json()["errors"][0]["code"] == "NOT_FOUND"
        reply = await http.get("/v1/recommendations", params={"user_id": "http-user", "top_k": 3})
        body = reply.json()
        assert body["strategy"] == "personal" and len(body["hits"]) == 3
        assert body["hits"][0]["reason"] and body["hits"][0]["product"]["id"] != item
        reply = await http.get("/v1/recommendations", params={"top_k": 3})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "INVALID_ARGUMENT"


async def test_bad_events_get_per_position_errors_and_the_stream_goes_on(rec_stack: RecStack) -> None:
    now = time.time()
    good = sorted(rec_stack.products)[1]
    messages = [
        pb.RecordEventsRequest(
            events=[
                _event("b0", "bad-user", good),
                _event("b1", "bad-user", "no-such-item"),
                _event("b2", "bad-user", good, "teleport"),
            ]
        ),
        pb.RecordEventsRequest(
            events=[
                _event("b3", "", good),
                _event("b4", "bad-user", good, ts=now + 86400),
                _event("b0", "bad-user", good),
                _event("b5", "bad-user", good, "click"),
            ]
        ),
    ]
    resp = await rec_stack.gw.stub.RecordEvents(iter(messages))
    assert resp.recorded == 2
    assert [(e.index, e.event_id, e.code) for e in resp.errors] == [
        (1, "b1", "NOT_FOUND"),
        (2, "b2", "INVALID_ARGUMENT"),
        (3, "b3", "INVALID_ARGUMENT"),
        (4, "b4", "INVALID_ARGUMENT"),
        (5, "b0", "ALREADY_EXISTS"),
    ]
    assert "future" in resp.errors[3].message and len(resp.errors[2].message) < 200


async def test_served_user_tower_equals_pytorch(rec_stack: RecStack) -> None:
    import json

    from recommend.items import ItemTable  # noqa: F401  (the artifacts' own model)
    from recommend.model import TowerSpec, UserTower

    manifest = json.loads((rec_stack.artifacts / "manifest.json").read_text())
    user = UserTower(TowerSpec(**manifest["spec"]["tower"]))
    state = torch.load(rec_stack.artifacts / "model.pt")
    user.load_state_dict({k[len("user.") :]: v for k, v in state.items() if k.startswith("user.")})
    user.eval()
    hist, types, ages = random_user_inputs(4, seed=9)
    with torch.no_grad():
        want = user(*(torch.from_numpy(a) for a in (hist, types, ages))).numpy()
    assert rec_stack.stack.triton is not None
    client = triton_grpc.InferenceServerClient(rec_stack.stack.triton.grpc_url)
    try:
        for i in range(4):
            result = client.infer(
                USER_TOWER_IO.model.value,
                triton_request.inputs(
                    USER_TOWER_IO,
                    {Tensor.HISTORY: hist[i], Tensor.EVENT_TYPES: types[i], Tensor.AGE_HOURS: ages[i]},
                ),
                model_version="1",
            )
            got = triton_request.output(USER_TOWER_IO, result, Tensor.USER_EMBEDDING)
            assert got is not None
            assert float(np.dot(got, want[i]) / np.linalg.norm(got) / np.linalg.norm(want[i])) >= 0.9999
            assert np.abs(got - want[i]).max() < 1e-4
    finally:
        client.close()
    assert EVENT_CODE  # codes are the contract between the store and the tower


async def test_redeploying_while_serving_fails_no_request(rec_stack: RecStack) -> None:
    stack = rec_stack.stack
    assert stack.triton is not None and stack.index is not None
    retrained = rec_stack.work / "retrained"
    await asyncio.to_thread(
        rec.train, rec_stack.events_file, rec_stack.gw.catalog_dir / "catalog.jsonl", stack.index.address,
        rec_stack.collection, retrained, True, 7,
    )  # fmt: skip
    stop = asyncio.Event()
    answers: list[int] = []

    async def load() -> None:
        while not stop.is_set():
            resp = await _recommend(rec_stack.gw, user_id="u00001", top_k=5)
            assert resp.strategy == "personal" and len(resp.items) == 5
            answers.append(resp.model_version)

    loaders = [asyncio.create_task(load()) for _ in range(3)]
    try:
        for _ in range(2):
            await asyncio.to_thread(
                rec.deploy,
                retrained,
                stack.triton.repo,
                stack.triton.grpc_url,
                stack.index.address,
                rec_stack.collection,
            )
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*loaders)  # any failed request fails here
    # every answer came from a served version (requests in flight across a switch finish on theirs)
    assert answers[0] == 1 and set(answers) <= {1, 2, 3}
    deadline = time.monotonic() + 10
    while (await _recommend(rec_stack.gw, user_id="u00001", top_k=5)).model_version != 3:
        assert time.monotonic() < deadline, "the gateway never switched to version 3"
        await asyncio.sleep(0.1)
    assert rec.served_versions(stack.triton.repo) == [2, 3]
    # The next version also counts past the index's spaces: a repository rendered anew over this index
    # (a re-export) would otherwise reuse rec.2's name.
    assert sorted(await rec._index_versions(stack.index.address, rec_stack.collection)) == [2, 3]


def test_kill_9_during_an_event_stream_loses_no_acknowledged_event(
    rec_stack: RecStack, tmp_path: Path
) -> None:
    stack = rec_stack.stack
    assert stack.triton is not None and stack.index is not None
    config = dataclasses.replace(
        rec_stack.gw.gateway.config,
        port=0,
        recommend=RecommendSettings(events_path=str(tmp_path / "ev.sqlite3")),
    )
    item = sorted(rec_stack.products)[2]
    server = GatewayServer(config, log_file=tmp_path / "gateway.log")
    acknowledged: list[str] = []
    with server:
        channel = grpc.insecure_channel(server.address)
        stub = __import__("vitrine.gateway.v1.gateway_pb2_grpc", fromlist=["x"]).ProductSearchStub(channel)
        for s in range(3):
            batch = [_event(f"k{s}-{i}", "k-user", item) for i in range(100)]
            resp = stub.RecordEvents(iter([pb.RecordEventsRequest(events=batch)]), timeout=30)
            assert resp.recorded == 100
            acknowledged += [e.event_id for e in batch]
        sent = threading.Event()

        def endless() -> Any:
            n = 0
            while True:
                yield pb.RecordEventsRequest(events=[_event(f"x-{n}-{i}", "k-user", item) for i in range(50)])
                n += 1
                if n == 5:
                    sent.set()

        failed: list[grpc.RpcError] = []

        def stream() -> None:
            try:
                stub.RecordEvents(endless(), timeout=60)
            except grpc.RpcError as exc:
                failed.append(exc)

        worker = threading.Thread(target=stream)
        worker.start()
        assert sent.wait(30)
        server.kill()
        worker.join(30)
        assert failed and failed[0].code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
        server.restart()
        stored = {e.event_id for e in read_store(tmp_path / "ev.sqlite3")}
    assert set(acknowledged) <= stored
