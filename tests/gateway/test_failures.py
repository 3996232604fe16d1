"""Dependency outages: the gateway reports them precisely, turns NOT_SERVING, and recovers unaided.

Each test owns its Triton and index processes (``isolated_deps``), on fixed ports so a restarted
dependency comes back where the gateway's clients already point.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.fixtures.stack import IsolatedDeps, gateway_config_for, start_gateway, stop_gateway
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_triton_outage_and_recovery(isolated_deps: IsolatedDeps, small_catalog: Path) -> None:
    handle = await start_gateway(
        gateway_config_for(isolated_deps.triton_url, isolated_deps.index_address), small_catalog
    )
    try:
        request = pb.SearchRequest(text="red boots", top_k=3, rerank=True, rerank_depth=10)
        assert len((await handle.stub.Search(request, timeout=30)).hits) == 3
        assert await handle.health() == SERVING

        await asyncio.to_thread(isolated_deps.triton.stop, 3.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.Search(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "triton" in (err.value.details() or "")
        await handle.wait_health(NOT_SERVING)
        # Requests that need only the index still work while Triton is down.
        got = await handle.stub.GetProducts(pb.GetProductsRequest(ids=["p000001"]), timeout=30)
        assert got.products[0].id == "p000001"

        await asyncio.to_thread(isolated_deps.triton.start)
        await handle.wait_health(SERVING)
        assert len((await handle.stub.Search(request, timeout=30)).hits) == 3
    finally:
        await stop_gateway(handle)


async def test_index_outage_and_recovery(isolated_deps: IsolatedDeps, small_catalog: Path) -> None:
    handle = await start_gateway(
        gateway_config_for(isolated_deps.triton_url, isolated_deps.index_address), small_catalog
    )
    try:
        image = handle.image("p000006")
        request = pb.SearchRequest(image=image, top_k=3)
        assert (await handle.stub.Search(request, timeout=30)).hits[0].product.id == "p000006"

        await asyncio.to_thread(isolated_deps.index.stop)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.Search(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "index" in (err.value.details() or "")
        await handle.wait_health(NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.SimilarItems(pb.SimilarItemsRequest(id="p000006"), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        await asyncio.to_thread(isolated_deps.index.start)
        await handle.wait_health(SERVING)
        # The index kept its data across the restart, and the gateway reconnected on its own.
        assert (await handle.stub.Search(request, timeout=30)).hits[0].product.id == "p000006"
    finally:
        await stop_gateway(handle)
