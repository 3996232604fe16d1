"""A supervised stack of real processes heals itself: two Triton replicas, the index service and two
gateway processes over one PostgreSQL, under a steady open-loop load spread over both gateways.

One stack for the module (tiny models, 20 products); each test kills one kind of child with SIGKILL and
checks what clients saw, that the supervisor restarted it, and that nothing of the dead process group
was left behind. The last test stops the stack and finds no process of any group it ever had.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql

from demo.catalog import write_generated
from gateway.config import GatewayConfig
from gateway.pipeline import PipelineSettings
from loadtest import openloop
from loadtest.data import QueryData
from operations.client import Connection, ingest
from operations.launcher import ChildServer
from operations.postgres import PostgresServer
from operations.rollout import serving_pointer
from operations.stack import Stack
from operations.supervisor import Supervisor
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

LOAD = {"text": 2, "image": 1}
RATE = 8.0


@dataclass
class Healing:
    stack: Stack
    supervisor: Supervisor
    catalog: Path
    data: QueryData
    dsn: str
    groups: set[int] = field(default_factory=set)
    """Every process group a child of the stack ever led (checked empty once the stack stops)."""

    def remember(self) -> None:
        self.groups.update(c.process.pid for c in self.stack.children() if c.process is not None)


def group_processes(pgid: int) -> list[str]:
    """Every process in group ``pgid`` as "pid state", zombies included: nothing may remain at all."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                found.append(f"{entry.name} {fields[0]}")
    return found


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def healing(
    tiny_artifacts: Path, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Healing]:
    work = tmp_path_factory.mktemp("healing")
    catalog = write_generated(work / "catalog", 20, seed=5, n_queries=2, image_size=64, progress=False)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    dsn = f"{postgres_server.dsn}?options=-csearch_path%3D{schema}"
    gateway = GatewayConfig(
        port=0, metrics_port=0, health_interval_s=0.2, pipeline=PipelineSettings(collection="healing")
    )
    stack = Stack(work, tiny_artifacts, gateway=gateway)
    try:
        stack.start_triton()
        stack.start_triton()
        stack.start_index()
        stack.start_gateway(state_url=dsn)
        stack.start_gateway(state_url=dsn)
        summary = ingest(Connection(stack.gateway_target), catalog, 10, False)
        assert summary.upserted == 20, summary.render()
        supervisor = stack.supervise(poll_s=0.1, initial_backoff_s=0.1)
        healing = Healing(stack, supervisor, catalog, QueryData.from_catalog(catalog, max_images=4), dsn)
        healing.remember()
        yield healing
    finally:
        stack.stop()


def load_during(healing: Healing, action: Callable[[], None], duration_s: float) -> openloop.OpenLoopResult:
    """The open-loop load over both gateways for ``duration_s``; ``action`` runs one second in."""

    async def run() -> openloop.OpenLoopResult:
        target = ",".join(g.address for g in healing.stack.gateways)
        load = asyncio.create_task(
            openloop.run(target, healing.data, LOAD, RATE, duration_s, arrival="uniform", timeout_s=10)
        )
        await asyncio.sleep(1.0)
        await asyncio.to_thread(action)
        return await load

    return asyncio.run(run())


def kill(child: ChildServer) -> int:
    """SIGKILL to the server's own process only, as the OOM killer or an operator would: what it
    spawned is left for the supervisor to find."""
    assert child.process is not None
    pgid = child.process.pid
    os.kill(pgid, signal.SIGKILL)
    return pgid


def await_restart(healing: Healing, child: ChildServer, before: int, pgid: int) -> None:
    until(lambda: healing.supervisor.restart_count(child.name) > before, 90, f"{child.name} restarted")
    assert child.running
    assert group_processes(pgid) == [], f"{child.name}'s dead group left processes behind"
    healing.remember()


def metric(gateway_metrics_port: int | None, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway_metrics_port}/metrics", timeout=5).read()
    match = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", text.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_killed_triton_replica_costs_no_request_and_gets_traffic_again(healing: Healing) -> None:
    victim = healing.stack.tritons[0]
    replica = f'replica="{victim.grpc_url}"'
    before = healing.supervisor.restart_count(victim.name)
    pgid = 0

    def kill_triton() -> None:
        nonlocal pgid
        pgid = kill(victim)

    result = load_during(healing, kill_triton, 4.0)
    assert result.errors() == {}, "the retry on the other replica should hide the kill"
    assert result.scheduled >= 30
    await_restart(healing, victim, before, pgid)

    ports = [g.metrics_port for g in healing.stack.gateways]
    until(lambda: all(metric(p, "vitrine_gateway_triton_replica_up", replica) == 1 for p in ports), 10,
          "replica up again in both gateways")  # fmt: skip
    served = sum(metric(p, "vitrine_gateway_triton_requests_total", replica) for p in ports)
    assert load_during(healing, lambda: None, 2.0).errors() == {}
    assert sum(metric(p, "vitrine_gateway_triton_requests_total", replica) for p in ports) > served + 3


def test_a_killed_gateway_leaves_round_robin_clients_served_by_the_other(healing: Healing) -> None:
    victim = healing.stack.gateways[1]
    before = healing.supervisor.restart_count(victim.name)
    pgid = 0

    def kill_gateway() -> None:
        nonlocal pgid
        pgid = kill(victim)

    result = load_during(healing, kill_gateway, 3.0)
    errors = result.errors()
    # Only the calls in flight on it at the kill may fail (at 8/s and ~10 ms each: rarely any).
    assert set(errors) <= {"UNAVAILABLE"} and sum(errors.values()) <= 2, errors
    assert result.scheduled - sum(errors.values()) >= 20
    await_restart(healing, victim, before, pgid)
    with grpc.insecure_channel(victim.address) as channel:  # the restarted one answers on its own port
        reply = pb_grpc.ProductSearchStub(channel).Search(pb.SearchRequest(text="shoes", top_k=2), timeout=10)
    assert len(reply.hits) == 2


def test_a_killed_index_fails_searches_unavailable_only_while_it_is_down(healing: Healing) -> None:
    index = healing.stack.index
    assert index is not None
    before = healing.supervisor.restart_count(index.name)
    request = pb.SearchRequest(text="red boots", top_k=3)
    codes: list[grpc.StatusCode] = []
    channels = [grpc.insecure_channel(g.address) for g in healing.stack.gateways]
    try:
        stubs = [pb_grpc.ProductSearchStub(c) for c in channels]
        assert all(len(stub.Search(request, timeout=10).hits) == 3 for stub in stubs)
        pgid = kill(index)
        while healing.supervisor.restart_count(index.name) == before:  # down, then starting
            for stub in stubs:
                try:
                    stub.Search(request, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            time.sleep(0.05)
        ready = time.monotonic()  # the supervisor counts a restart once the index reports SERVING

        def answers(stub: pb_grpc.ProductSearchStub) -> bool:
            try:
                return len(stub.Search(request, timeout=5).hits) == 3
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

        for stub in stubs:  # each gateway on its own: both must have found the index again
            until(functools.partial(answers, stub), 5.0, "search answered again after the index was ready")
    finally:
        for channel in channels:
            channel.close()
    assert time.monotonic() - ready < 5.0
    assert grpc.StatusCode.UNAVAILABLE in codes
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}
    await_restart(healing, index, before, pgid)


def test_gateways_over_postgresql_share_events_and_follow_one_version_switch(healing: Healing) -> None:
    """Events recorded through gateway A change the next Recommend answered by B; one write of the
    serving pointer reaches both gateway processes (their logs say so) within the stated bound."""
    a, b = (Connection(g.address) for g in healing.stack.gateways)
    user = f"u-{uuid.uuid4().hex[:8]}"
    popular = [pb.Event(event_id=f"{user}-crowd-{i}", user_id=f"{user}-crowd", item_id=pid, type="view")
               for i, pid in enumerate(sorted(p.id for p in healing.data.products)[:6])]  # fmt: skip
    with a.channel() as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        assert stub.RecordEvents(iter([pb.RecordEventsRequest(events=popular)]), timeout=10).recorded == 6
    with b.channel() as channel:
        first = pb_grpc.ProductSearchStub(channel).Recommend(
            pb.RecommendRequest(user_id=user, top_k=5), timeout=10
        )
    shown = [r.product.id for r in first.items]
    assert shown, "a cold-start answer (trending or catalog) for a new user"
    events = [pb.Event(event_id=f"{user}-{i}", user_id=user, item_id=pid, type="view")
              for i, pid in enumerate(shown[:2])]  # fmt: skip
    with a.channel() as channel:
        reply = pb_grpc.ProductSearchStub(channel).RecordEvents(
            iter([pb.RecordEventsRequest(events=events)]), timeout=10
        )
    assert reply.recorded == 2
    with b.channel() as channel:
        after = pb_grpc.ProductSearchStub(channel).Recommend(
            pb.RecommendRequest(user_id=user, top_k=5), timeout=10
        )
    assert not {r.product.id for r in after.items} & set(shown[:2]), "B excludes what A recorded as seen"

    logs = [healing.stack.logs / name for name in ("gateway.log", "gateway-1.log")]
    pointer = serving_pointer(Path(), healing.dsn)
    try:
        pointer.update(lambda state: {**state, "pending_version": 2})
        until(lambda: all('"pending_version": 2' in log.read_text() for log in logs), 5.0,
              "both gateways follow the switch")  # fmt: skip
    finally:
        pointer.update(lambda state: {**state, "pending_version": 1})
        pointer.close()


def test_stopping_the_stack_leaves_no_process_of_any_group(healing: Healing) -> None:
    healing.remember()
    healing.stack.stop()
    left = {pgid: group_processes(pgid) for pgid in healing.groups}
    assert {pgid: procs for pgid, procs in left.items() if procs} == {}
