"""The HTTP/JSON API against a live gateway (real Triton with tiny models, real index service).

Every answer is compared with what gRPC answers for the same question: the same ids in the same order,
the same error code and message, since both transports share one request builder and one error path.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from PIL import Image
from prometheus_client import generate_latest

from gateway.errors import InvalidInput
from gateway.http.app import MAX_BODY_BYTES
from gateway.types import MAX_RERANK_DEPTH, MAX_TOP_K, check_image_header
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from tests.model_repository.images import png_header
from vitrine.api_keys import UNAUTHENTICATED_MESSAGE
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow


@dataclass
class HttpStack:
    grpc: GatewayHandle
    http: httpx.AsyncClient
    port: int


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    gateway_triton: object, index_server: object, small_catalog: Path
) -> AsyncIterator[HttpStack]:
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        http_port=0,
        image_roots=(str(small_catalog.parent),),
    )
    handle = await start_gateway(config, small_catalog)
    port = handle.gateway.http_port
    assert port is not None and port > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield HttpStack(handle, client, port)
    await stop_gateway(handle)


def _ids(hits: object) -> list[str]:
    return [h.product.id for h in hits]  # type: ignore[attr-defined]


def _json_ids(hits: list[dict]) -> list[str]:
    return [h["product"]["id"] for h in hits]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _jpeg(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="JPEG")
    return buf.getvalue()


def _no_address(message: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", message)


def _error(resp: httpx.Response) -> tuple[int, str, str]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return resp.status_code, body["error"]["code"], body["error"]["message"]


# ---- success, same answers as gRPC -------------------------------------------------------------------


async def test_text_search_matches_grpc(stack: HttpStack) -> None:
    pid = "p000007"
    title = stack.grpc.products[pid].title
    resp = await stack.http.post("/v1/search", json={"text": title, "top_k": 5, "text_match": "title"})
    assert resp.status_code == 200
    body = resp.json()
    grpc_resp = await stack.grpc.stub.Search(
        pb.SearchRequest(text=title, top_k=5, text_match=pb.TEXT_MATCH_TITLE), timeout=30
    )
    assert _json_ids(body["hits"]) == _ids(grpc_resp.hits)
    assert body["hits"][0]["product"]["id"] == pid
    assert body["hits"][0]["retrieval_score"] == pytest.approx(1.0, abs=1e-4)
    assert body["hits"][0]["product"]["image_url"] == f"/v1/products/{pid}/image"
    assert {t["stage"] for t in body["timings"]} >= {"embed_text", "retrieve", "total"}
    assert body["reranked"] is False


async def test_image_search_base64_and_upload_match_grpc(stack: HttpStack) -> None:
    pid = "p000005"
    image = stack.grpc.image(pid)
    grpc_ids = _ids((await stack.grpc.stub.Search(pb.SearchRequest(image=image, top_k=6), timeout=30)).hits)
    as_json = await stack.http.post("/v1/search", json={"image_base64": _b64(image), "top_k": 6})
    as_data_url = await stack.http.post(
        "/v1/search", json={"image_base64": "data:image/jpeg;base64," + _b64(image), "top_k": 6}
    )
    upload = await stack.http.post(
        "/v1/search/upload", files={"image": ("p.jpg", image, "image/jpeg")}, data={"top_k": "6"}
    )
    for resp in (as_json, as_data_url, upload):
        assert resp.status_code == 200, resp.text
        assert _json_ids(resp.json()["hits"]) == grpc_ids
    assert grpc_ids[0] == pid


async def test_hybrid_search_with_filters_and_rerank_matches_grpc(stack: HttpStack) -> None:
    products = stack.grpc.products
    category = products["p000003"].category[-1]
    text = products["p000008"].title
    image = stack.grpc.image("p000003")
    filters = [{"field": "category", "any_of": [category]}, {"field": "price", "max": 1000.0}]
    body = {
        "text": text,
        "image_base64": _b64(image),
        "image_weight": 0.7,
        "top_k": 5,
        "filters": filters,
        "rerank": True,
        "rerank_depth": 20,
    }
    resp = await stack.http.post("/v1/search", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    request = pb.SearchRequest(
        text=text,
        image=image,
        image_weight=0.7,
        top_k=5,
        filters=[pb.Filter(field="category", any_of=[category]), pb.Filter(field="price", max=1000.0)],
        rerank=True,
        rerank_depth=20,
    )
    expected = await stack.grpc.stub.Search(request, timeout=30)
    assert _json_ids(out["hits"]) == _ids(expected.hits)
    assert out["reranked"] is True and "rerank" in {t["stage"] for t in out["timings"]}
    assert out["hits"] and all(h["rerank_score"] is not None for h in out["hits"])
    assert all(category in h["product"]["category"] for h in out["hits"])
    # The same query as multipart, filters as a JSON string.
    upload = await stack.http.post(
        "/v1/search/upload",
        files={"image": ("p.jpg", image, "image/jpeg")},
        data={
            "text": text,
            "image_weight": "0.7",
            "top_k": "5",
            "rerank": "true",
            "rerank_depth": "20",
            "filters": json.dumps(filters),
        },
    )
    assert upload.status_code == 200, upload.text
    assert _json_ids(upload.json()["hits"]) == _ids(expected.hits)


async def test_similar_items_match_grpc(stack: HttpStack) -> None:
    resp = await stack.http.post("/v1/products/p000004/similar", json={"top_k": 4})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    expected = await stack.grpc.stub.SimilarItems(pb.SimilarItemsRequest(id="p000004", top_k=4), timeout=30)
    assert _json_ids(out["by_image"]) == _ids(expected.by_image)
    assert _json_ids(out["by_title"]) == _ids(expected.by_title)
    assert len(out["by_image"]) == 4 and "p000004" not in _json_ids(out["by_image"])
    bare = await stack.http.post("/v1/products/p000004/similar")  # no body: the defaults
    assert bare.status_code == 200 and len(bare.json()["by_image"]) == 10


async def test_get_products(stack: HttpStack) -> None:
    one = await stack.http.get("/v1/products/p000002")
    assert one.status_code == 200
    stored = stack.grpc.products["p000002"]
    got = one.json()
    assert (got["id"], got["title"], got["brand"], got["category"]) == (
        stored.id,
        stored.title,
        stored.brand,
        list(stored.category),
    )
    assert got["attributes"] == stored.attributes
    many = await stack.http.get("/v1/products", params=[("id", "p000002"), ("id", "p000009")])
    assert [p["id"] for p in many.json()["products"]] == ["p000002", "p000009"]


async def test_upsert_get_delete_round_trip(stack: HttpStack) -> None:
    image = stack.grpc.image("p000006")
    product = {
        "id": "http-1",
        "title": "Quilted emerald travel backpack",
        "category": ["Bags", "Backpacks"],
        "brand": "Northwind",
        "price": 79.5,
        "image_uri": stack.grpc.products["p000006"].image_uri,
        "attributes": {"color": "green"},
    }
    resp = await stack.http.put(
        "/v1/products",
        json={
            "items": [
                {"product": product, "image_base64": _b64(image)},
                {"product": {"id": "http-2", "title": "bad"}, "image_base64": "%%%"},
                {"product": {"id": "http-3", "title": "corrupt"}, "image_base64": _b64(b"not an image")},
                {"product": {"id": "http-4"}, "image_base64": _b64(image)},
            ]
        },
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["upserted"] == 1
    errors = {e["index"]: e for e in out["errors"]}
    assert sorted(errors) == [1, 2, 3]
    assert (
        errors[1]["code"] == "INVALID_ARGUMENT" and errors[1]["message"] == "image_base64 is not valid base64"
    )
    assert errors[2]["id"] == "http-3" and errors[2]["code"] == "INVALID_ARGUMENT"
    with pytest.raises(InvalidInput) as refused:
        check_image_header(b"not an image")
    assert _no_address(errors[2]["message"]) == _no_address(str(refused.value))
    assert errors[3]["message"] == "product 'http-4': missing title"
    got = await stack.http.get("/v1/products/http-1")
    assert got.status_code == 200 and got.json()["brand"] == "Northwind"
    found = await stack.http.post(
        "/v1/search", json={"text": product["title"], "top_k": 1, "text_match": "title"}
    )
    assert _json_ids(found.json()["hits"]) == ["http-1"]
    image_resp = await stack.http.get("/v1/products/http-1/image")
    assert image_resp.status_code == 200 and image_resp.content == image
    deleted = await stack.http.delete("/v1/products/http-1")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 1, "not_found": []}
    again = await stack.http.delete("/v1/products", params=[("id", "http-1"), ("id", "never")])
    assert again.json() == {"deleted": 0, "not_found": ["http-1", "never"]}
    gone = await stack.http.get("/v1/products/http-1")
    assert _error(gone) == (404, "NOT_FOUND", "unknown product ids: http-1")


async def test_healthz_and_page(stack: HttpStack) -> None:
    health = await stack.http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "SERVING", "dependencies": {"triton": True, "index": True}}
    page = await stack.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert (await stack.http.get(asset)).status_code == 200


async def test_openapi_lists_every_route(stack: HttpStack) -> None:
    doc = (await stack.http.get("/openapi.json")).json()
    assert {
        "/v1/search": {"post"},
        "/v1/search/upload": {"post"},
        "/v1/products/{product_id}/similar": {"post"},
        "/v1/products/{product_id}": {"get", "delete"},
        "/v1/products": {"get", "put", "delete"},
        "/v1/products/{product_id}/image": {"get"},
        "/v1/events": {"post"},
        "/v1/recommendations": {"get"},
        "/v1/serving": {"get"},
        "/v1/catalog": {"get"},
        "/healthz": {"get"},
    } == {path: set(ops) for path, ops in doc["paths"].items()}
    responses = doc["paths"]["/v1/search"]["post"]["responses"]
    assert "422" not in responses and responses["400"]["content"]["application/json"]["schema"]
    assert "multipart/form-data" in doc["paths"]["/v1/search/upload"]["post"]["requestBody"]["content"]


async def test_catalog_states_how_many_products_are_stored(stack: HttpStack) -> None:
    """The page shows this number grow while a catalog is ingested."""
    reply = await stack.http.get("/v1/catalog")
    assert reply.status_code == 200 and reply.json() == {"products": len(stack.grpc.products)}


async def test_openapi_states_the_limits_the_server_enforces(stack: HttpStack) -> None:
    """A client generated from the schema builds requests the server accepts: the limits are in it,
    from the same constants the call layer checks."""
    doc = (await stack.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    search = schemas["SearchIn"]["properties"]
    assert (search["top_k"]["minimum"], search["top_k"]["maximum"]) == (0, MAX_TOP_K)
    assert (search["image_weight"]["minimum"], search["image_weight"]["maximum"]) == (0, 1)
    assert search["rerank_depth"]["maximum"] == MAX_RERANK_DEPTH
    assert {tuple(alt["required"]) for alt in schemas["SearchIn"]["anyOf"]} == {("text",), ("image_base64",)}
    product = schemas["ProductIn"]["properties"]
    assert product["id"]["minLength"] == 1 and product["price"]["minimum"] == 0
    ids = next(p for p in doc["paths"]["/v1/products"]["get"]["parameters"] if p["name"] == "id")
    assert ids["schema"]["minItems"] == 1 and ids["schema"]["items"]["minLength"] == 1
    assert schemas["EventIn"]["properties"]["event_id"]["minLength"] == 1
    # Without keys there is nothing to present: no security scheme is declared.
    assert "securitySchemes" not in doc.get("components", {})


# ---- errors: same code and message as gRPC ---------------------------------------------------------------


ERROR_CASES = {
    "empty query": ({}, pb.SearchRequest()),
    "top_k too large": ({"text": "boots", "top_k": 101}, pb.SearchRequest(text="boots", top_k=101)),
    "unknown filter field": (
        {"text": "boots", "filters": [{"field": "colour", "any_of": ["red"]}]},
        pb.SearchRequest(text="boots", filters=[pb.Filter(field="colour", any_of=["red"])]),
    ),
    "price filter with any_of": (
        {"text": "boots", "filters": [{"field": "price", "any_of": ["3"]}]},
        pb.SearchRequest(text="boots", filters=[pb.Filter(field="price", any_of=["3"])]),
    ),
    "corrupt image": (
        {"image_base64": _b64(b"\xff\xd8\xff garbage")},
        pb.SearchRequest(image=b"\xff\xd8\xff garbage"),
    ),
    "too many pixels": (
        {"image_base64": _b64(png_header(8000, 8000))},
        pb.SearchRequest(image=png_header(8000, 8000)),
    ),
    "decompression bomb": (
        {"image_base64": _b64(png_header(20000, 20000))},
        pb.SearchRequest(image=png_header(20000, 20000)),
    ),
    "text too long": ({"text": "a" * 100_001}, pb.SearchRequest(text="a" * 100_001)),
    "overlong field name is bounded": (
        {"text": "boots", "filters": [{"field": "x" * 5000, "any_of": ["1"]}]},
        pb.SearchRequest(text="boots", filters=[pb.Filter(field="x" * 5000, any_of=["1"])]),
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_client_errors_match_grpc(stack: HttpStack, case: str) -> None:
    body, request = ERROR_CASES[case]
    status, code, message = _error(await stack.http.post("/v1/search", json=body))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.grpc.stub.Search(request, timeout=30)
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Pillow names the buffer it could not read by its address, which differs between two calls.
    assert _no_address(message) == _no_address(err.value.details() or "")
    assert len(message) <= 1024


async def test_error_messages_say_what_is_wrong(stack: HttpStack) -> None:
    cases = [
        (
            stack.http.post("/v1/search", json={}),
            (400, "INVALID_ARGUMENT", "empty query: give text, an image, or both"),
        ),
        (
            stack.http.post(
                "/v1/search", json={"text": "a", "top_k": 0, "rerank": True, "rerank_depth": 500}
            ),
            (400, "INVALID_ARGUMENT", "rerank_depth must be in top_k..200, got 500"),
        ),
        (
            stack.http.post("/v1/search", json={"text": "a", "text_match": "sound"}),
            (
                400,
                "INVALID_ARGUMENT",
                "unknown text_match 'sound'; one of image, title, fusion, lexical, minilm, "
                "lexical_minilm, all",
            ),
        ),
        (
            stack.http.post("/v1/products/nope/similar", json={}),
            (404, "NOT_FOUND", "unknown product id 'nope'"),
        ),
        (stack.http.get("/v1/products/nope"), (404, "NOT_FOUND", "unknown product ids: nope")),
        (stack.http.get("/v1/products/nope/image"), (404, "NOT_FOUND", "unknown product ids: nope")),
        (
            stack.http.post("/v1/search/upload", files={"image": ("x.jpg", b"corrupt", "image/jpeg")}),
            (400, "INVALID_ARGUMENT", None),
        ),
    ]
    for request, (status, code, message) in cases:
        got = _error(await request)
        assert got[:2] == (status, code), got
        if message is not None:
            assert got[2] == message
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.grpc.stub.SimilarItems(pb.SimilarItemsRequest(id="nope"), timeout=30)
    assert err.value.details() == "unknown product id 'nope'"


async def test_framework_refusals_use_the_error_shape(stack: HttpStack) -> None:
    bad_json = await stack.http.post(
        "/v1/search", content=b'{"text": ', headers={"content-type": "application/json"}
    )
    status, code, message = _error(bad_json)
    assert (status, code) == (400, "INVALID_ARGUMENT") and message.startswith(
        "request body is not valid JSON"
    )
    wrong_type = _error(await stack.http.post("/v1/search", json={"text": "a", "top_k": "many"}))
    assert wrong_type[:2] == (400, "INVALID_ARGUMENT") and wrong_type[2].startswith("top_k: ")
    unknown_key = _error(await stack.http.post("/v1/search", json={"text": "a", "k": 3}))
    assert (
        unknown_key[:2] == (400, "INVALID_ARGUMENT") and "k: Extra inputs are not permitted" in unknown_key[2]
    )
    bad_filters = _error(await stack.http.post("/v1/search/upload", data={"text": "a", "filters": "[{"}))
    assert bad_filters[:2] == (400, "INVALID_ARGUMENT") and bad_filters[2].startswith("filters: ")
    assert _error(await stack.http.get("/v2/nothing")) == (404, "NOT_FOUND", "no route GET /v2/nothing")
    not_allowed = await stack.http.patch("/v1/search")
    assert _error(not_allowed)[:2] == (405, "UNIMPLEMENTED")
    assert not_allowed.headers["allow"] == "POST"  # RFC 9110: a 405 lists the methods the route allows
    assert (await stack.http.put("/healthz")).headers["allow"] == "GET"


async def test_body_too_large_is_413(stack: HttpStack) -> None:
    # Refused from the declared length, before any of the body is read.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /v1/search HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        + f"content-length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"413"

    # A chunked body (no length) is cut off as it passes the limit.
    async def chunks() -> AsyncIterator[bytes]:
        block = b"x" * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(block) + 2):
            yield block

    resp = await stack.http.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    status, code, message = _error(resp)
    assert (status, code) == (413, "RESOURCE_EXHAUSTED")
    assert message == f"request body is larger than {MAX_BODY_BYTES} bytes"
    assert (await stack.http.get("/healthz")).status_code == 200  # still serving


# ---- images ------------------------------------------------------------------------------------------------


async def test_product_image_is_served_from_the_image_roots_only(
    stack: HttpStack, small_catalog: Path, tmp_path: Path
) -> None:
    pid = "p000005"
    resp = await stack.http.get(f"/v1/products/{pid}/image")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.content == stack.grpc.image(pid)

    root = small_catalog.parent
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_jpeg())
    link = root / "images" / "link-out.jpg"
    link.symlink_to(outside)
    not_image = root / "catalog.jsonl"
    refs = {
        "t-dotdot": "../" * len(root.parts) + str(outside).lstrip("/"),
        "t-deep": f"images/../../../../../../../..{outside}",
        "t-absolute": str(outside),
        "t-file-uri": f"file://{outside}",
        "t-symlink": "images/link-out.jpg",
        "t-not-image": not_image.name,
        "t-remote": "https://example.com/a.jpg",
    }
    image = _jpeg((10, 120, 10))
    items = [
        {"product": {"id": pid_, "title": f"traversal {pid_}", "image_uri": ref}, "image_base64": _b64(image)}
        for pid_, ref in refs.items()
    ]
    upserted = await stack.http.put("/v1/products", json={"items": items})
    assert upserted.json() == {"upserted": len(items), "errors": []}
    try:
        for pid_ in refs:
            got = await stack.http.get(f"/v1/products/{pid_}/image")
            assert got.status_code == 404, (pid_, got.status_code)
            assert _error(got) == (
                404,
                "NOT_FOUND",
                f"product {pid_!r} has no image under the gateway's image roots",
            )
        # A traversal in the product id itself is just an unknown id.
        assert (await stack.http.get("/v1/products/..%2F..%2Fetc%2Fpasswd/image")).status_code == 404
    finally:
        await stack.http.delete("/v1/products", params=[("id", p) for p in refs])
        link.unlink()


# ---- auth, TLS, metrics ----------------------------------------------------------------------------------


async def test_api_key_guards_the_api_not_health_or_page(
    gateway_triton: object, index_server: object
) -> None:
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        api_key="s3cret",
        http_port=0,
    )
    handle = await start_gateway(config)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{handle.gateway.http_port}", timeout=30
        ) as c:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
                resp = await c.get("/v1/products/x", headers=headers)
                assert _error(resp) == (401, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE)
                assert resp.headers["www-authenticate"] == "Bearer"
            search = await c.post("/v1/search", json={"text": "boots"})
            assert search.status_code == 401
            ok = await c.get("/v1/products/x", headers={"authorization": "Bearer s3cret"})
            assert _error(ok) == (404, "NOT_FOUND", "unknown product ids: x")  # through to the API
            for open_path in ("/healthz", "/openapi.json", "/", "/static/app.js"):
                assert (await c.get(open_path)).status_code == 200, open_path
            doc = (await c.get("/openapi.json")).json()
            assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    assert (op.get("security") == [{"HTTPBearer": []}]) == path.startswith("/v1/"), path
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.GetProducts(pb.GetProductsRequest(ids=["x"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == UNAUTHENTICATED_MESSAGE
    finally:
        await stop_gateway(handle)


async def test_https_with_the_grpc_certificate(
    gateway_triton: object, index_server: object, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        tls_cert=str(cert),
        tls_key=str(key),
        http_port=0,
    )
    handle = await start_gateway(config)
    try:
        port = handle.gateway.http_port
        trust = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=30) as c:
            assert _error(await c.get("/v1/products/x"))[:2] == (404, "NOT_FOUND")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")
    finally:
        await stop_gateway(handle)


async def test_metrics_count_http_calls_under_the_grpc_method_names(stack: HttpStack) -> None:
    def count(method: str, code: str) -> float:
        text = generate_latest(stack.grpc.gateway.metrics.registry).decode()
        prefix = f'vitrine_gateway_requests_total{{code="{code}",method="{method}"}} '
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), prefix + "0")
        return float(line.rsplit(" ", 1)[1])

    before = {
        k: count(*k) for k in [("Search", "OK"), ("Search", "INVALID_ARGUMENT"), ("GetProducts", "NOT_FOUND")]
    }
    assert (await stack.http.post("/v1/search", json={"text": "boots"})).status_code == 200
    assert (await stack.http.post("/v1/search", json={})).status_code == 400
    assert (await stack.http.get("/v1/products/none")).status_code == 404
    assert {k: count(*k) - v for k, v in before.items()} == {
        ("Search", "OK"): 1.0,
        ("Search", "INVALID_ARGUMENT"): 1.0,
        ("GetProducts", "NOT_FOUND"): 1.0,
    }
