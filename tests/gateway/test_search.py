"""End to end through the gateway, a real Triton (tiny models) and a real index service.

Ground truth that holds with random weights: a product's own image, or its own title, embeds to the same
vector it was indexed with (cosine 1.0), so it must come back first; filters are checked against the
catalog's attributes; re-rank scores are checked against the PyTorch reference cross-encoder.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow


def _ids(hits: object) -> list[str]:
    return [h.product.id for h in hits]  # type: ignore[attr-defined]


async def test_image_search_finds_the_product_itself(gateway_stack: GatewayHandle) -> None:
    pid = "p000005"
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(image=gateway_stack.image(pid), top_k=5), timeout=30
    )
    assert _ids(resp.hits)[0] == pid
    assert resp.hits[0].retrieval_score == pytest.approx(1.0, abs=1e-4)
    assert not resp.reranked
    assert {t.stage for t in resp.timings} >= {"embed_image", "retrieve", "total"}
    stored = gateway_stack.products[pid]
    top = resp.hits[0].product
    assert (top.title, list(top.category), top.brand) == (stored.title, list(stored.category), stored.brand)
    assert top.price == pytest.approx(stored.price)
    assert dict(top.attributes) == stored.attributes


async def test_text_search_by_title_finds_the_product(gateway_stack: GatewayHandle) -> None:
    pid = "p000007"
    title = gateway_stack.products[pid].title
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text=title, top_k=3, text_match=pb.TEXT_MATCH_TITLE), timeout=30
    )
    assert _ids(resp.hits)[0] == pid
    assert resp.hits[0].retrieval_score == pytest.approx(1.0, abs=1e-4)
    assert {t.stage for t in resp.timings} >= {"embed_text", "retrieve"}


async def test_text_match_modes_search_different_spaces(gateway_stack: GatewayHandle) -> None:
    title = gateway_stack.products["p000007"].title
    results = {}
    for mode in (pb.TEXT_MATCH_IMAGE, pb.TEXT_MATCH_TITLE, pb.TEXT_MATCH_FUSION):
        resp = await gateway_stack.stub.Search(
            pb.SearchRequest(text=title, top_k=10, text_match=mode), timeout=30
        )
        assert len(resp.hits) == 10
        results[mode] = _ids(resp.hits)
    # Fusion is reciprocal-rank fusion of the two single-space lists, equal weights, k = 60.
    scores: dict[str, float] = {}
    for mode in (pb.TEXT_MATCH_IMAGE, pb.TEXT_MATCH_TITLE):
        for rank, pid in enumerate(results[mode]):
            scores[pid] = scores.get(pid, 0.0) + 0.5 / (60 + rank + 1)
    expected = sorted(scores, key=lambda pid: (-scores[pid], pid))[:10]
    assert results[pb.TEXT_MATCH_FUSION] == expected
    assert results[pb.TEXT_MATCH_IMAGE] != results[pb.TEXT_MATCH_TITLE]


async def test_hybrid_weight_moves_between_text_and_image(gateway_stack: GatewayHandle) -> None:
    image_pid, title_pid = "p000003", "p000008"
    text = gateway_stack.products[title_pid].title
    image = gateway_stack.image(image_pid)

    async def top(weight: float) -> str:
        resp = await gateway_stack.stub.Search(
            pb.SearchRequest(
                text=text, image=image, image_weight=weight, top_k=5, text_match=pb.TEXT_MATCH_TITLE
            ),
            timeout=30,
        )
        assert {t.stage for t in resp.timings} >= {"embed_text", "embed_image", "retrieve"}
        return _ids(resp.hits)[0]

    assert await top(1.0) == image_pid
    assert await top(0.0) == title_pid


async def test_filters_restrict_results(gateway_stack: GatewayHandle) -> None:
    products = gateway_stack.products
    mugs = {pid for pid, p in products.items() if p.category[-1] == "Mugs"}
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text="a mug", top_k=50, filters=[pb.Filter(field="category", any_of=["Mugs"])]),
        timeout=30,
    )
    assert set(_ids(resp.hits)) == mugs
    # A category path prefix matches every product under it.
    home = {pid for pid, p in products.items() if p.category[0] == "Home"}
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text="home", top_k=50, filters=[pb.Filter(field="category", any_of=["Home"])]),
        timeout=30,
    )
    assert set(_ids(resp.hits)) == home
    # Price range, brand and an extra attribute combine (AND).
    colour = products["p000000"].attributes["color"]
    expected = {
        pid for pid, p in products.items() if 20 <= p.price <= 300 and p.attributes["color"] == colour
    }
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(
            text="anything",
            top_k=50,
            filters=[pb.Filter(field="price", min=20, max=300), pb.Filter(field="color", any_of=[colour])],
        ),
        timeout=30,
    )
    assert set(_ids(resp.hits)) == expected
    brand = products["p000001"].brand
    resp = await gateway_stack.stub.Search(
        pb.SearchRequest(text="x", top_k=50, filters=[pb.Filter(field="brand", any_of=[brand])]), timeout=30
    )
    assert set(_ids(resp.hits)) == {pid for pid, p in products.items() if p.brand == brand}


async def test_rerank_on_matches_the_reference_cross_encoder(
    gateway_stack: GatewayHandle, tiny_artifacts: Path
) -> None:
    from export.reference import TorchReference

    query = "red leather ankle boots"
    off = await gateway_stack.stub.Search(pb.SearchRequest(text=query, top_k=5), timeout=30)
    assert not off.reranked and all(not h.HasField("rerank_score") for h in off.hits)
    scores_off = [h.retrieval_score for h in off.hits]
    assert scores_off == sorted(scores_off, reverse=True)

    on = await gateway_stack.stub.Search(
        pb.SearchRequest(text=query, top_k=5, rerank=True, rerank_depth=20), timeout=30
    )
    assert on.reranked
    assert "rerank" in {t.stage for t in on.timings}
    got = [h.rerank_score for h in on.hits]
    assert got == sorted(got, reverse=True)
    reference = TorchReference(Path(tiny_artifacts))
    passages = [f"{h.product.title}. {h.product.description}" for h in on.hits]
    expected = reference.rerank(query, passages)
    np.testing.assert_allclose(got, expected, atol=1e-3)


async def test_a_rerank_split_in_parts_scores_every_pair_as_one_request(triton: Any) -> None:
    """The gateway sends a pool as concurrent slices (two CPU instances share it); the scores are the
    same as one request's, in the same order, and pools too small to split go whole."""
    from gateway.pipeline import rerank_in_parts
    from gateway.triton_client import TritonModels

    models = TritonModels(triton.grpc_url)
    calls: list[int] = []

    class Counted:
        async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray:
            calls.append(len(passages))
            return await models.rerank(query, passages, timeout)

    passages = [f"passage {i}: {'red ' * (i % 5)}leather boots size {i}" for i in range(37)]
    try:
        whole = await models.rerank("red boots", passages, 30)
        for parts, sizes in ((2, [18, 19]), (3, [12, 13, 12]), (12, [4, 4, 4, 4, 5, 4, 4, 4, 4])):
            calls.clear()
            split = await rerank_in_parts(Counted(), "red boots", passages, parts, 30)
            assert sorted(calls) == sorted(sizes)
            np.testing.assert_allclose(split, whole, atol=1e-5)
        calls.clear()
        await rerank_in_parts(Counted(), "red boots", passages[:7], 2, 30)
        assert calls == [7]  # under two slices of MIN_PART pairs: one request
    finally:
        await models.close()


async def test_similar_items_excludes_the_item_and_finds_its_twin(gateway_stack: GatewayHandle) -> None:
    pid = "p000004"
    original = gateway_stack.products[pid]
    twin = pb.Product(id="twin-of-p000004", title=original.title, category=list(original.category), price=1.0)
    resp = await gateway_stack.stub.UpsertProducts(
        iter([pb.UpsertProductsRequest(product=twin, image_bytes=gateway_stack.image(pid))]), timeout=30
    )
    assert resp.upserted == 1 and not resp.errors
    try:
        similar = await gateway_stack.stub.SimilarItems(pb.SimilarItemsRequest(id=pid, top_k=5), timeout=30)
        assert pid not in _ids(similar.by_image) and pid not in _ids(similar.by_title)
        assert _ids(similar.by_image)[0] == twin.id
        assert _ids(similar.by_title)[0] == twin.id
        assert len(similar.by_image) == 5 and len(similar.by_title) == 5
    finally:
        await gateway_stack.stub.DeleteProducts(pb.DeleteProductsRequest(ids=[twin.id]), timeout=30)


def _new_image() -> bytes:
    rng = np.random.default_rng(123)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def test_upsert_then_search_then_delete(gateway_stack: GatewayHandle) -> None:
    stub = gateway_stack.stub
    image = _new_image()
    product = pb.Product(
        id="new-1",
        title="Vitrine test teapot",
        description="A one-off product.",
        category=["Home", "Kitchen", "Teapots"],
        brand="Acme",
        price=42.5,
        attributes={"color": "teal"},
    )
    resp = await stub.UpsertProducts(
        iter([pb.UpsertProductsRequest(product=product, image_bytes=image)]), timeout=30
    )
    assert resp.upserted == 1 and not resp.errors

    found = await stub.Search(pb.SearchRequest(image=image, top_k=3), timeout=30)
    assert _ids(found.hits)[0] == "new-1"
    got = await stub.GetProducts(pb.GetProductsRequest(ids=["new-1"]), timeout=30)
    assert got.products[0].title == "Vitrine test teapot" and got.products[0].price == 42.5
    filtered = await stub.Search(
        pb.SearchRequest(image=image, top_k=3, filters=[pb.Filter(field="color", any_of=["teal"])]),
        timeout=30,
    )
    assert _ids(filtered.hits) == ["new-1"]

    # Upsert by id is idempotent: a second write replaces, never duplicates.
    product.title = "Vitrine test teapot, renamed"
    resp = await stub.UpsertProducts(
        iter([pb.UpsertProductsRequest(product=product, image_bytes=image)]), timeout=30
    )
    assert resp.upserted == 1
    again = await stub.Search(pb.SearchRequest(image=image, top_k=3), timeout=30)
    assert _ids(again.hits).count("new-1") == 1 and again.hits[0].product.title.endswith("renamed")

    deleted = await stub.DeleteProducts(pb.DeleteProductsRequest(ids=["new-1", "never-existed"]), timeout=30)
    assert deleted.deleted == 1 and list(deleted.not_found) == ["never-existed"]
    after = await stub.Search(pb.SearchRequest(image=image, top_k=40), timeout=30)
    assert "new-1" not in _ids(after.hits)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetProducts(pb.GetProductsRequest(ids=["new-1"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upsert_reports_bad_items_and_keeps_the_good(gateway_stack: GatewayHandle) -> None:
    good = pb.Product(id="good-1", title="A good lamp", category=["Home"], price=10)
    jpeg = gateway_stack.image("p000002")
    truncated = jpeg[: len(jpeg) // 3]
    items = [
        pb.UpsertProductsRequest(product=pb.Product(id="no-title"), image_bytes=jpeg),
        pb.UpsertProductsRequest(product=good, image_bytes=jpeg),
        pb.UpsertProductsRequest(product=pb.Product(id="no-image", title="x")),
        pb.UpsertProductsRequest(product=pb.Product(id="garbage", title="x"), image_bytes=b"not an image"),
        pb.UpsertProductsRequest(product=pb.Product(id="truncated", title="x"), image_bytes=truncated),
        pb.UpsertProductsRequest(
            product=pb.Product(id="no-file", title="x"), image_path="/nonexistent/x.jpg"
        ),
    ]
    resp = await gateway_stack.stub.UpsertProducts(iter(items), timeout=60)
    try:
        assert resp.upserted == 1
        errors = {e.id: e for e in resp.errors}
        assert set(errors) == {"no-title", "no-image", "garbage", "truncated", "no-file"}
        assert all(e.code == "INVALID_ARGUMENT" for e in resp.errors)
        assert "missing title" in errors["no-title"].message
        assert "missing image" in errors["no-image"].message
        assert errors["garbage"].index == 3 and errors["truncated"].index == 4
        got = await gateway_stack.stub.GetProducts(pb.GetProductsRequest(ids=["good-1"]), timeout=30)
        assert got.products[0].title == "A good lamp"
    finally:
        await gateway_stack.stub.DeleteProducts(pb.DeleteProductsRequest(ids=["good-1"]), timeout=30)


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (pb.SearchRequest(), "empty query"),
        (pb.SearchRequest(text="   "), "empty query"),
        (pb.SearchRequest(image=b"\x89PNG but not really"), "not a decodable"),
        (pb.SearchRequest(text="boots", top_k=1000), "top_k must be in 1..100"),
        (pb.SearchRequest(text="boots", top_k=5, rerank=True, rerank_depth=5000), "rerank_depth"),
        (
            pb.SearchRequest(text="boots", filters=[pb.Filter(field="colour", any_of=["red"])]),
            "unknown filter field",
        ),
        (pb.SearchRequest(text="boots", filters=[pb.Filter(field="price", min=50, max=10)]), "above max"),
        (pb.SearchRequest(text="boots", image_weight=1.5), "image_weight"),
    ],
)
async def test_bad_search_input_is_invalid_argument(
    gateway_stack: GatewayHandle, request_: pb.SearchRequest, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway_stack.stub.Search(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (err.value.details() or "")
    # ... and the service keeps serving.
    ok = await gateway_stack.stub.Search(pb.SearchRequest(text="boots", top_k=1), timeout=30)
    assert len(ok.hits) == 1


async def test_corrupt_image_body_is_invalid_argument(gateway_stack: GatewayHandle) -> None:
    """A JPEG whose header parses but whose data is cut short is refused by Triton's decoder."""
    jpeg = gateway_stack.image("p000002")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway_stack.stub.Search(pb.SearchRequest(image=jpeg[: len(jpeg) // 3]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "triton rejected the input" in (err.value.details() or "")


async def test_unknown_product_is_not_found(gateway_stack: GatewayHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway_stack.stub.SimilarItems(pb.SimilarItemsRequest(id="no-such-product"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-product" in (err.value.details() or "")


async def test_deadline_shorter_than_the_pipeline(gateway_stack: GatewayHandle) -> None:
    request = pb.SearchRequest(text="leather boots " * 8, top_k=10, rerank=True, rerank_depth=40)
    total_ms = 1e9
    for _ in range(3):  # warm: the shortest of a few runs
        full = await gateway_stack.stub.Search(request, timeout=30)
        total_ms = min(total_ms, next(t.ms for t in full.timings if t.stage == "total"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway_stack.stub.Search(request, timeout=max(total_ms / 4000.0, 0.002))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The pipeline itself enforces the deadline it was given (what the servicer passes down).
    from gateway.errors import DeadlineExceeded
    from gateway.types import SearchQuery

    with pytest.raises(DeadlineExceeded):
        await gateway_stack.gateway.pipeline.search(
            SearchQuery(text=request.text, rerank=True, rerank_depth=40), timeout=total_ms / 4000.0
        )
    ok = await gateway_stack.stub.Search(request, timeout=30)
    assert len(ok.hits) == 10


async def test_overload_is_resource_exhausted(
    gateway_triton: object, index_server: object, small_catalog: Path
) -> None:
    config = gateway_config_for(gateway_triton.grpc_url, index_server.address, max_in_flight=1)  # type: ignore[attr-defined]
    handle = await start_gateway(config, small_catalog)
    try:
        request = pb.SearchRequest(text="boots", top_k=10, rerank=True, rerank_depth=40)
        results = await asyncio.gather(
            *(handle.stub.Search(request, timeout=60) for _ in range(6)), return_exceptions=True
        )
        codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
        assert grpc.StatusCode.OK in codes
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        from prometheus_client import generate_latest

        text = generate_latest(handle.gateway.metrics.registry).decode()
        shed = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert (
            f'vitrine_gateway_requests_total{{code="RESOURCE_EXHAUSTED",method="Search"}} {float(shed)}'
            in text
        )
    finally:
        await stop_gateway(handle)


async def test_api_key_is_required_when_configured(gateway_triton: object, index_server: object) -> None:
    config = gateway_config_for(gateway_triton.grpc_url, index_server.address, api_key="s3cret")  # type: ignore[attr-defined]
    handle = await start_gateway(config)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.GetProducts(pb.GetProductsRequest(ids=["x"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.GetProducts(
                pb.GetProductsRequest(ids=["x"]), timeout=10, metadata=[("authorization", "Bearer wrong")]
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The right key gets through to the API (an unknown id in an empty collection: NOT_FOUND).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.GetProducts(
                pb.GetProductsRequest(ids=["x"]), timeout=10, metadata=[("authorization", "Bearer s3cret")]
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert await handle.health() == 1  # health stays open to probes
    finally:
        await stop_gateway(handle)


async def test_tls_when_configured(
    gateway_triton: object, index_server: object, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        tls_cert=str(cert),
        tls_key=str(key),
    )
    handle = await start_gateway(config)
    try:
        from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        async with grpc.aio.secure_channel(handle.address, creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.ProductSearchStub(channel).GetProducts(
                    pb.GetProductsRequest(ids=["x"]), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND  # reached the API over TLS
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.GetProducts(pb.GetProductsRequest(ids=["x"]), timeout=5)  # plaintext is refused
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_gateway(handle)


async def test_overlong_text_is_truncated_and_said_so(gateway_stack: GatewayHandle) -> None:
    short = await gateway_stack.stub.Search(pb.SearchRequest(text="red boots", top_k=1), timeout=30)
    assert not short.text_truncated
    long = await gateway_stack.stub.Search(
        # past both encoders' contexts (CLIP 77 tokens, MiniLM 256), whichever the default mode reads
        pb.SearchRequest(text="red leather boots " * 100, top_k=1),
        timeout=30,
    )
    assert long.text_truncated and len(long.hits) == 1


async def test_metrics_endpoint_counts_requests_by_method_and_code(
    gateway_triton: object, index_server: object
) -> None:
    import urllib.request

    config = gateway_config_for(gateway_triton.grpc_url, index_server.address, metrics_port=0)  # type: ignore[attr-defined]
    handle = await start_gateway(config)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await handle.stub.Search(pb.SearchRequest(), timeout=10)
        url = f"http://127.0.0.1:{handle.gateway.metrics_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(scrape)
        assert 'vitrine_gateway_requests_total{code="INVALID_ARGUMENT",method="Search"} 1.0' in text
        assert 'vitrine_gateway_dependency_up{dependency="triton"} 1.0' in text
        assert "vitrine_gateway_in_flight 0.0" in text
    finally:
        await stop_gateway(handle)
