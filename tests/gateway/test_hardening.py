"""Hostile and malformed input against a live gateway (real Triton with tiny models, real index service).

Each class of client error gets a precise status and a bounded message, and the gateway keeps serving:
decompression-bomb headers, bytes grpcio cannot decode, oversized ids, a streamed upsert mixing good,
bad, undecodable and repeated items (and one whose dependency fails part-way), ``image_path`` reads
outside the ingest roots, and API keys with read and write scopes on gRPC and HTTP.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from PIL import Image

from gateway.auth import ApiKeys, KeyFileError, Scope
from gateway.config import ENV_PREFIX, GatewayConfig
from gateway.ingest import REFUSED
from gateway.servicer import REFUSED_KEY, SETTLED_KEY, UPSERTED_KEY
from operations import servers
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from tests.model_repository.images import png_header
from vitrine.api_keys import UNAUTHENTICATED_MESSAGE
from vitrine.config import secret_env, to_argv
from vitrine.contracts import MAX_IMAGE_BYTES
from vitrine.errors import MAX_MESSAGE_CHARS
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

SERVICE = "/vitrine.gateway.v1.ProductSearch/"
READ, WRITE, BOTH, LEGACY = "r-key-1", "w-key-2", "rw-key-3", "legacy-key"
NOT_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request here) holding invalid UTF-8
GARBAGE = b"\xff\xff\xff\xff\x0f"


def gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\0\0\0\0\1\0\1\0\0\2\2D\1\0;"


BOMBS = {
    "png 50000x50000": png_header(50_000, 50_000),
    "png 12000x12000": png_header(12_000, 12_000),
    "gif 65535x65535": gif_header(65_535, 65_535),
}


def jpeg(color: tuple[int, int, int] = (30, 120, 200), side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, format="JPEG")
    return buf.getvalue()


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@dataclass
class Hardened:
    handle: GatewayHandle
    root: Path
    outside: Path
    http: httpx.AsyncClient

    @property
    def stub(self) -> pb_grpc.ProductSearchStub:
        return self.handle.stub

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.handle.channel


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hard(
    gateway_triton: object, index_server: object, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hardened]:
    """A gateway with an ingest root, small upsert batches, and keys of every kind (one from a file)."""
    base = tmp_path_factory.mktemp("hardening")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    keys_file = base / "keys"
    keys_file.write_text(f"# scopes:key\nread+write:{BOTH}\n")
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        ingest_roots=(str(root),),
        upsert_batch=3,
        api_key=LEGACY,
        api_keys=(f"read:{READ}", f"write:{WRITE}"),
        api_keys_file=str(keys_file),
        http_port=0,
    )
    handle = await start_gateway(config)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.gateway.http_port}", timeout=60) as c:
        yield Hardened(handle, root, outside, c)
    await stop_gateway(handle)


async def expect(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    details = err.value.details() or ""
    assert len(details) <= MAX_MESSAGE_CHARS
    return details


async def still_serves(stub: pb_grpc.ProductSearchStub, key: str = BOTH) -> None:
    resp = await stub.Search(pb.SearchRequest(text="boots", top_k=1), timeout=30, metadata=auth(key))
    assert len(resp.hits) <= 1


# ---- status codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bomb", sorted(BOMBS))
async def test_bomb_header_in_search_is_invalid_argument(hard: Hardened, bomb: str) -> None:
    details = await expect(
        hard.stub.Search(pb.SearchRequest(image=BOMBS[bomb]), timeout=30, metadata=auth(READ)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "pixels" in details or "format GIF is not accepted" in details
    await still_serves(hard.stub)


@pytest.mark.parametrize("method", ["Search", "SimilarItems", "GetProducts", "DeleteProducts"])
@pytest.mark.parametrize(("data", "fragment"), [(NOT_UTF8, "UTF-8"), (GARBAGE, "wire format")])
async def test_undecodable_request_is_invalid_argument_on_every_unary_rpc(
    hard: Hardened, method: str, data: bytes, fragment: str
) -> None:
    call = hard.channel.unary_unary(SERVICE + method)
    details = await expect(call(data, timeout=10, metadata=auth(BOTH)), grpc.StatusCode.INVALID_ARGUMENT)
    assert fragment in details and "class" not in details and "Error" not in details
    # Without a key the caller learns nothing about its bytes.
    await expect(call(data, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    await still_serves(hard.stub)


async def test_long_ids_are_refused_with_bounded_messages(hard: Hardened) -> None:
    long_id = "x" * 10_000
    md = auth(BOTH)
    for call in (
        hard.stub.SimilarItems(pb.SimilarItemsRequest(id=long_id), timeout=10, metadata=md),
        hard.stub.GetProducts(pb.GetProductsRequest(ids=["ok", long_id]), timeout=10, metadata=md),
        hard.stub.DeleteProducts(pb.DeleteProductsRequest(ids=[long_id]), timeout=10, metadata=md),
    ):
        details = await expect(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert "10000 characters; the limit is 512" in details and long_id[:100] not in details
    many = [f"n{i}-" + "y" * 500 for i in range(10)]
    details = await expect(
        hard.stub.GetProducts(pb.GetProductsRequest(ids=many), timeout=10, metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details.startswith("unknown product ids: n0-")
    resp = await hard.stub.UpsertProducts(
        iter([pb.UpsertProductsRequest(product=pb.Product(id=long_id, title="t"), image_bytes=jpeg())]),
        timeout=30,
        metadata=md,
    )
    assert resp.upserted == 0 and resp.errors[0].code == "INVALID_ARGUMENT"
    assert len(resp.errors[0].id) <= 200 and len(resp.errors[0].message) <= MAX_MESSAGE_CHARS


# ---- the streaming upsert contract -----------------------------------------------------------------------


def _item(pid: str, title: str = "A product", price: float = 1.0, image: bytes | None = None) -> bytes:
    product = pb.Product(id=pid, title=title, price=price, category=["Home"])
    return pb.UpsertProductsRequest(
        product=product, image_bytes=jpeg() if image is None else image
    ).SerializeToString()


async def _raw_upsert(
    channel: grpc.aio.Channel, messages: list[bytes], key: str = BOTH
) -> tuple[pb.UpsertProductsResponse, dict[str, str]]:
    """UpsertProducts with pre-serialized messages, so a stream can carry bytes no stub would send."""
    call = channel.stream_unary(SERVICE + "UpsertProducts")(iter(messages), timeout=60, metadata=auth(key))
    resp = pb.UpsertProductsResponse.FromString(await call)
    return resp, {k: str(v) for k, v in (await call.trailing_metadata() or ())}


async def test_stream_with_mixed_items_keeps_the_good_and_the_last_duplicate(hard: Hardened) -> None:
    messages = [
        _item("mix-a", "first A"),  # 0: batched with 6 and 7 (batch size 3)
        _item("mix-b", image=BOMBS["png 50000x50000"]),  # 1
        _item("mix-c", price=float("nan")),  # 2
        _item("mix-d", price=-3.0),  # 3
        _item("mix-e", title=""),  # 4
        _item(""),  # 5
        _item("mix-f", "F"),  # 6
        _item("mix-a", "second A"),  # 7: the same id in the same internal batch as 0
        NOT_UTF8,  # 8
        _item("mix-g", "G"),  # 9
        _item("mix-a", "third A"),  # 10: the same id again, in a later batch
        _item("mix-h", image=b"not an image"),  # 11
        _item("mix-i", price=float("inf")),  # 12
    ]
    try:
        resp, trailers = await _raw_upsert(hard.channel, messages)
        errors = {e.index: e for e in resp.errors}
        assert sorted(errors) == [1, 2, 3, 4, 5, 8, 11, 12]
        assert all(e.code == "INVALID_ARGUMENT" for e in resp.errors)
        assert [errors[i].id for i in (1, 2, 3, 4, 5, 8)] == ["mix-b", "mix-c", "mix-d", "mix-e", "", ""]
        assert "pixels" in errors[1].message and "finite non-negative" in errors[2].message
        assert "finite non-negative" in errors[3].message and "missing title" in errors[4].message
        assert "missing product id" in errors[5].message and "UTF-8" in errors[8].message
        assert resp.upserted == 5
        assert trailers[UPSERTED_KEY] == "5" and trailers[SETTLED_KEY] == str(len(messages))
        assert trailers[REFUSED_KEY] == "1,2,3,4,5,8,11,12"
        got = await hard.stub.GetProducts(
            pb.GetProductsRequest(ids=["mix-a", "mix-f", "mix-g"]), timeout=30, metadata=auth(READ)
        )
        assert [p.title for p in got.products] == ["third A", "F", "G"]
        for refused in ("mix-b", "mix-c", "mix-d", "mix-e", "mix-h", "mix-i"):
            await expect(
                hard.stub.GetProducts(pb.GetProductsRequest(ids=[refused]), timeout=30, metadata=auth(READ)),
                grpc.StatusCode.NOT_FOUND,
            )
    finally:
        await hard.stub.DeleteProducts(
            pb.DeleteProductsRequest(ids=["mix-a", "mix-f", "mix-g"]), timeout=30, metadata=auth(WRITE)
        )


def _event(event_id: str, item_id: str) -> bytes:
    event = pb.Event(event_id=event_id, user_id="u-undecodable", item_id=item_id, type="view")
    return pb.RecordEventsRequest(events=[event]).SerializeToString()


async def test_record_events_reports_an_undecodable_message_at_its_position_and_records_the_rest(
    hard: Hardened,
) -> None:
    """The proto's promise: a bad event never aborts the stream. An undecodable message takes one
    position of its own; the events before and after it are recorded."""
    resp, _ = await _raw_upsert(hard.channel, [_item("ev-item", "Event item")])
    assert resp.upserted == 1
    run = uuid.uuid4().hex[:8]  # event ids are stored for good: every run records fresh ones
    messages = [
        _event(f"ev-1-{run}", "ev-item"),
        NOT_UTF8,
        _event(f"ev-2-{run}", "ev-item"),
        GARBAGE,
        _event(f"ev-3-{run}", "ev-item"),
    ]
    call = hard.channel.stream_unary(SERVICE + "RecordEvents")(
        iter(messages), timeout=60, metadata=auth(WRITE)
    )
    answer = pb.RecordEventsResponse.FromString(await call)
    assert answer.recorded == 3
    assert [(e.index, e.code) for e in answer.errors] == [(1, "INVALID_ARGUMENT"), (3, "INVALID_ARGUMENT")]
    assert "UTF-8" in answer.errors[0].message and "wire format" in answer.errors[1].message
    await still_serves(hard.stub)


async def test_stream_failing_part_way_says_what_it_stored(gateway_triton: object, tmp_path: Path) -> None:
    """The index goes away after the first batch was committed: the call fails UNAVAILABLE and its
    trailing metadata says how many items were stored and which prefix of the stream is settled."""
    with servers.index_server(tmp_path / "index") as index:
        config = gateway_config_for(
            gateway_triton.grpc_url,  # type: ignore[attr-defined]
            index.address,
            upsert_batch=2,
        )
        handle = await start_gateway(config)
        try:
            committed = asyncio.Event()

            async def stream() -> AsyncIterator[pb.UpsertProductsRequest]:
                yield pb.UpsertProductsRequest.FromString(_item("out-1"))
                yield pb.UpsertProductsRequest.FromString(_item("out-bad", price=-1))
                yield pb.UpsertProductsRequest.FromString(_item("out-2"))  # batch 1 = out-1, out-2
                await committed.wait()
                for i in range(3, 6):
                    yield pb.UpsertProductsRequest.FromString(_item(f"out-{i}"))

            call = handle.stub.UpsertProducts(stream(), timeout=60)
            for _ in range(200):  # bounded wait for the first batch to become visible
                try:
                    await handle.stub.GetProducts(pb.GetProductsRequest(ids=["out-2"]), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            index.close()
            committed.set()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            trailers = {k: str(v) for k, v in (err.value.trailing_metadata() or ())}
            assert trailers[UPSERTED_KEY] == "2"
            assert trailers[SETTLED_KEY] == "3"
            assert trailers[REFUSED_KEY] == "1"
        finally:
            await stop_gateway(handle)


# ---- ingestion reads only what it should -----------------------------------------------------------------


async def test_image_path_reads_only_regular_files_under_the_roots(hard: Hardened) -> None:
    root, outside = hard.root, hard.outside
    (root / "ok.jpg").write_bytes(jpeg((10, 200, 10)))
    (outside / "secret.jpg").write_bytes(jpeg((200, 10, 10)))
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "dir.jpg").mkdir()
    os.mkfifo(root / "fifo.jpg")
    (root / "big.jpg").write_bytes(b"")
    os.truncate(root / "big.jpg", MAX_IMAGE_BYTES + 1)  # sparse: its size says too large
    refused_paths = [
        str(outside / "secret.jpg"),  # outside the root
        str(root / ".." / "outside" / "secret.jpg"),  # traversal
        "../outside/secret.jpg",  # traversal, relative to the root
        str(root / "escape.jpg"),  # a symlink out of the root
        str(root / "dir.jpg"),  # a directory
        str(root / "fifo.jpg"),  # a FIFO: must not block
        str(root / "big.jpg"),  # larger than MAX_IMAGE_BYTES
        str(root / "missing.jpg"),  # does not exist
        "/dev/zero",  # a device
        "/etc/passwd",
    ]
    messages = [
        pb.UpsertProductsRequest(
            product=pb.Product(id="ok-abs", title="ok"), image_path=str(root / "ok.jpg")
        ),
        pb.UpsertProductsRequest(product=pb.Product(id="ok-rel", title="ok"), image_path="ok.jpg"),
        *(
            pb.UpsertProductsRequest(product=pb.Product(id=f"no-{i}", title="x"), image_path=path)
            for i, path in enumerate(refused_paths)
        ),
    ]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        resp = await hard.stub.UpsertProducts(iter(messages), timeout=30, metadata=auth(WRITE))
        assert loop.time() - t0 < 20
        assert resp.upserted == 2
        by_id = {e.id: e for e in resp.errors}
        assert sorted(by_id) == sorted(f"no-{i}" for i in range(len(refused_paths)))
        # One message for every refusal: it says nothing about whether or what the path is.
        assert {e.message for e in resp.errors} == {REFUSED}
        assert {e.code for e in resp.errors} == {"INVALID_ARGUMENT"}
        # No thread holds the FIFO open: opening it for writing without a reader fails with ENXIO.
        with pytest.raises(OSError) as no_reader:
            os.open(root / "fifo.jpg", os.O_WRONLY | os.O_NONBLOCK)
        assert no_reader.value.errno == 6  # ENXIO
    finally:
        await hard.stub.DeleteProducts(
            pb.DeleteProductsRequest(ids=["ok-abs", "ok-rel"]), timeout=30, metadata=auth(WRITE)
        )


async def test_image_path_is_refused_without_ingest_roots(gateway_stack: GatewayHandle) -> None:
    existing = gateway_stack.catalog_dir / next(iter(gateway_stack.products.values())).image_uri
    resp = await gateway_stack.stub.UpsertProducts(
        iter([pb.UpsertProductsRequest(product=pb.Product(id="nr", title="x"), image_path=str(existing))]),
        timeout=30,
    )
    assert resp.upserted == 0 and [e.message for e in resp.errors] == [REFUSED]


# ---- API keys and scopes ----------------------------------------------------------------------------------


async def test_scopes_on_grpc(hard: Hardened) -> None:
    stub = hard.stub
    upsert = [pb.UpsertProductsRequest(product=pb.Product(id="k-1", title="key test"), image_bytes=jpeg())]
    for md in ((), auth("unknown"), (("authorization", READ),)):
        details = await expect(stub.Search(pb.SearchRequest(text="x"), timeout=10, metadata=md),
                               grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
        assert details == UNAUTHENTICATED_MESSAGE
    for key in (READ, BOTH, LEGACY):
        await still_serves(stub, key)
    details = await expect(
        stub.UpsertProducts(iter(upsert), timeout=10, metadata=auth(READ)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert details == "this API key may not call UpsertProducts: it needs the write scope"
    await expect(
        stub.DeleteProducts(pb.DeleteProductsRequest(ids=["k-1"]), timeout=10, metadata=auth(READ)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect(stub.Search(pb.SearchRequest(text="x"), timeout=10, metadata=auth(WRITE)),
                 grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    for key in (WRITE, BOTH, LEGACY):
        resp = await stub.UpsertProducts(iter(upsert), timeout=30, metadata=auth(key))
        assert resp.upserted == 1
    deleted = await stub.DeleteProducts(
        pb.DeleteProductsRequest(ids=["k-1"]), timeout=10, metadata=auth(WRITE)
    )
    assert deleted.deleted == 1


async def test_scopes_on_http(hard: Hardened) -> None:
    c = hard.http
    body = {"items": [{"product": {"id": "kh-1", "title": "key test"}, "image_base64": ""}]}
    assert (await c.post("/v1/search", json={"text": "boots"})).status_code == 401
    assert (await c.post("/v1/search", json={"text": "boots"}, headers=dict(auth(READ)))).status_code == 200
    denied = await c.put("/v1/products", json=body, headers=dict(auth(READ)))
    assert denied.status_code == 403
    assert denied.json()["error"] == {
        "code": "PERMISSION_DENIED",
        "message": "this API key may not call PUT /v1/products: it needs the write scope",
    }
    assert (await c.delete("/v1/products/kh-1", headers=dict(auth(READ)))).status_code == 403
    assert (await c.get("/v1/products/kh-1", headers=dict(auth(WRITE)))).status_code == 403
    written = await c.put("/v1/products", json=body, headers=dict(auth(WRITE)))
    assert (
        written.status_code == 200
        and written.json()["errors"][0]["message"] == "product 'kh-1': missing image"
    )
    gone = await c.delete("/v1/products/kh-1", headers=dict(auth(LEGACY)))
    assert gone.status_code == 200 and gone.json()["not_found"] == ["kh-1"]
    assert (await c.get("/healthz")).status_code in (200, 503)


def test_keys_come_from_a_file_or_the_environment_and_never_reach_a_command_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\n\nread:a\nwrite:b\nread+write:c\nread:b\n")
    keys = ApiKeys.from_config(path=str(path))
    assert keys.check("a", "Search") is None and keys.check("a", "UpsertProducts") is not None
    assert keys.check("b", "Search") is None  # scopes of one key accumulate
    assert keys.check("c", "DeleteProducts") is None
    assert keys.check("c", "SomeFutureWrite") is None and keys.check("a", "SomeFutureWrite") is not None
    path.write_text("admin:secret-value\n")
    with pytest.raises(KeyFileError) as bad:
        ApiKeys.from_config(path=str(path))
    assert "secret-value" not in str(bad.value) and ":1" in str(bad.value)
    assert ApiKeys.from_config(entries=["read:x"]).check_scope("x", Scope.READ, "Search") is None

    config = GatewayConfig(api_key="legacy-secret", api_keys=("read:env-secret",), api_keys_file=str(path))
    argv = " ".join(to_argv(config))
    assert "secret" not in argv.replace(str(path), "")
    assert secret_env(config, ENV_PREFIX) == {
        "VITRINE_GATEWAY_API_KEY": "legacy-secret",
        "VITRINE_GATEWAY_API_KEYS": "read:env-secret",
    }


async def test_gateway_presents_its_key_to_a_keyed_index_service(
    gateway_triton: object, small_catalog: Path, tmp_path: Path
) -> None:
    """An index service that requires keys serves a gateway configured with one, and refuses one without."""
    with servers.index_server(tmp_path / "index", api_keys=("read+write:index-secret",)) as index:
        assert "index-secret" not in " ".join(index.argv)  # the key travels in the environment
        keyed = await start_gateway(
            gateway_config_for(
                gateway_triton.grpc_url,  # type: ignore[attr-defined]
                index.address,
                index_api_key="index-secret",
            ),
            small_catalog,
        )
        try:
            pid = next(iter(keyed.products))
            got = await keyed.stub.GetProducts(pb.GetProductsRequest(ids=[pid]), timeout=30)
            assert [p.id for p in got.products] == [pid]
            keyless = await start_gateway(
                gateway_config_for(
                    gateway_triton.grpc_url,  # type: ignore[attr-defined]
                    index.address,
                    pipeline=keyed.gateway.config.pipeline,
                )
            )
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await keyless.stub.GetProducts(pb.GetProductsRequest(ids=[pid]), timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "index" in (err.value.details() or "") and "API key" in (err.value.details() or "")
            finally:
                await stop_gateway(keyless)
        finally:
            await stop_gateway(keyed)
