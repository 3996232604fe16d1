"""Gateways sharing their state in a real PostgreSQL: durable events across kill -9, one switch for all.

The gateways are real (in-process, each with its own connections) over the session's Triton and index
service; PostgreSQL is the session's real server (``tests/fixtures/postgres.py``), killed with SIGKILL to
its whole process group and started again on the same data directory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from operations.postgres import PostgresServer
from operations.rollout import serving_pointer
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine.gateway.v1 import gateway_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING


async def until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``condition`` held; fails the test past ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
async def two_gateways(
    gateway_stack: GatewayHandle, gateway_triton: Any, index_server: Any, postgres_dsn: str
) -> AsyncIterator[list[GatewayHandle]]:
    """Two gateways over one database and the catalog ``gateway_stack`` ingested; their health probes
    (and so their polling of the serving pointer) run once a minute: a switch they see sooner came by
    NOTIFY."""
    config = gateway_config_for(
        gateway_triton.grpc_url,
        index_server.address,
        pipeline=gateway_stack.gateway.config.pipeline,
        state_url=postgres_dsn,
        health_interval_s=60.0,
    )
    handles = [await start_gateway(config), await start_gateway(config)]
    yield handles
    for handle in handles:
        await stop_gateway(handle)


def _events(prefix: str, n: int, items: list[str]) -> pb.RecordEventsRequest:
    return pb.RecordEventsRequest(
        events=[
            pb.Event(event_id=f"{prefix}-{i}", user_id="u-shared", item_id=items[i % len(items)], type="view")
            for i in range(n)
        ]
    )


def _stored(dsn: str, ids: list[str]) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT event_id FROM events WHERE event_id = ANY(%s)", (ids,)).fetchall()
    return {r[0] for r in rows}


async def test_acknowledged_events_survive_kill_9_of_postgresql(
    two_gateways: list[GatewayHandle],
    gateway_stack: GatewayHandle,
    postgres_server: PostgresServer,
    postgres_dsn: str,
) -> None:
    """Events flow through both gateways while PostgreSQL is killed and started again: every event a
    gateway acknowledged is stored, every failure meanwhile is UNAVAILABLE with a bounded message, health
    (searches) stays SERVING, a gateway started during the outage starts, and writes succeed again."""
    items = sorted(gateway_stack.products)
    acked: list[str] = []
    failures: list[tuple[grpc.StatusCode, str]] = []
    stop = asyncio.Event()

    async def writer(handle: GatewayHandle, name: str) -> None:
        n = 0
        while not stop.is_set():
            request, n = _events(f"{name}{n}", 4, items), n + 1
            try:
                reply = await handle.stub.RecordEvents(iter([request]), timeout=10)
            except grpc.aio.AioRpcError as exc:
                failures.append((exc.code(), exc.details() or ""))
                await asyncio.sleep(0.05)
                continue
            assert reply.recorded == 4 and not reply.errors
            acked.extend(e.event_id for e in request.events)

    writers = [asyncio.create_task(writer(h, name)) for h, name in zip(two_gateways, "ab", strict=True)]
    late: GatewayHandle | None = None
    try:
        await until(lambda: len(acked) >= 80, 30)
        postgres_server.kill()
        await until(lambda: len(failures) >= 6, 30)
        late = await start_gateway(replace(two_gateways[0].gateway.config, port=0))  # its database is down
        for handle in (*two_gateways, late):
            assert await handle.health() == SERVING  # searches do not need the database
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.stub.RecordEvents(iter([_events("late", 1, items)]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        postgres_server.start()  # same data directory, same port
    try:
        before = len(acked)
        await until(lambda: len(acked) >= before + 40, 30)
        assert (await late.stub.RecordEvents(iter([_events("late", 1, items)]), timeout=10)).recorded == 1
        acked.append("late-0")
    finally:
        stop.set()
        await asyncio.gather(*writers)
        if late is not None:
            await stop_gateway(late)

    assert {code for code, _ in failures} == {grpc.StatusCode.UNAVAILABLE}
    assert all("PostgreSQL" in message and len(message) <= 400 for _, message in failures)
    assert _stored(postgres_dsn, acked) == set(acked)


async def test_a_switch_written_once_reaches_every_gateway(
    two_gateways: list[GatewayHandle], gateway_stack: GatewayHandle, postgres_dsn: str
) -> None:
    """One write of the pointer (what ``vitrine adapt deploy`` does before it re-embeds): both gateways
    learn the pending version over NOTIFY, long before their minute-long poll, so a product either
    ingests gets its vectors. A gateway whose notifications stopped sees the next write by polling,
    within its health interval. Events recorded through one are read by the other."""
    pointer = serving_pointer(Path(), postgres_dsn)
    gateways = [h.gateway for h in two_gateways]
    polling = await start_gateway(replace(gateways[0].config, port=0, health_interval_s=0.2))
    try:
        pointer.update(lambda state: {**state, "pending_version": 2})
        await until(lambda: all(g.pipeline.serving.pending_version == 2 for g in gateways), 10)
        assert all(g.pipeline.serving.version == 1 for g in gateways)  # still answering with version 1

        follower = polling.gateway._follow_task
        assert follower is not None
        follower.cancel()  # as if its LISTEN connection had silently stopped delivering
        pointer.update(lambda state: {**state, "pending_version": 1})
        await until(lambda: polling.gateway.pipeline.serving.pending_version == 1, 10)
        await until(lambda: all(g.pipeline.serving.pending_version == 1 for g in gateways), 10)

        a, b = two_gateways
        reply = await a.stub.RecordEvents(iter([_events("shared", 2, sorted(gateway_stack.products))]))
        assert reply.recorded == 2
        seen_by_b = await asyncio.to_thread(b.gateway.event_ingest.store.recent, "u-shared")
        assert {e.event_id for e in seen_by_b} == {"shared-0", "shared-1"}
    finally:
        await stop_gateway(polling)
        pointer.close()
