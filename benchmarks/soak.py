"""``python -m benchmarks.soak``: a bounded soak of the supervised stack, one kill -9 of each kind of child.

The stack: two Triton replicas, the index service, PostgreSQL and two gateways sharing it, supervised
(``operations.supervisor``). For ``--minutes`` (10), over both gateways with ``round_robin``, no retries:

- reads: searches (text, some re-ranked, some by image) at ``--read-rate`` per second, open loop;
- writes: new products upserted, earlier ones deleted, shopper events recorded, at ``--write-rate``.

At 20, 40, 60 and 80 % of the run a child is killed with SIGKILL (a Triton replica, a gateway, the index
service, PostgreSQL); its outage lasts from the kill until the supervisor has it ready again, plus
``--grace-s`` for the gateways to see it. At the end the run reports, and exits 1 unless all hold:

- nothing acknowledged is lost: every acknowledged upsert not deleted since is there, every acknowledged
  delete is gone, every acknowledged event is in PostgreSQL;
- every failure is UNAVAILABLE and inside an outage;
- the resident memory of the processes never killed (a Triton replica, a gateway) grew less than 5 %
  from the end of the warm-up to the end; the whole stack's is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gateway.messages import product_to_pb
from operations.launcher import ChildServer, group_members
from operations.stack import Stack
from vitrine import targets
from vitrine.catalog import Product, read_catalog
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

KILLS = ((0.2, "triton-0"), (0.4, "gateway-1"), (0.6, "index service"), (0.8, "postgresql"))
RSS_LIMIT = 0.05


@dataclass
class Ledger:
    """What the clients saw: every outcome with its time, and what was acknowledged."""

    outcomes: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, code)
    upserted: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    outages: list[tuple[str, float, float]] = field(default_factory=list)

    def outcome(self, kind: str, code: str) -> None:
        self.outcomes.append((time.monotonic(), kind, code))


def rss_mb(pgids: list[int]) -> float:
    """Resident memory of every process in the groups, MB (from /proc)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pgid in pgids:
        for pid in group_members(pgid):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
    return total / 2**20


def groups(children: list[ChildServer]) -> list[int]:
    return [c.process.pid for c in children if c.process is not None]


async def reads(stub: Any, ledger: Ledger, images: list[bytes], rate: float, until: float) -> None:
    rng = random.Random(1)
    words = ["red boots", "leather bag", "summer dress", "running shoes", "wool coat", "black jeans"]
    pending: set[asyncio.Task[None]] = set()

    async def one(request: pb.SearchRequest, kind: str) -> None:
        try:
            await stub.Search(request, timeout=10)
            ledger.outcome(kind, "OK")
        except grpc.aio.AioRpcError as exc:
            ledger.outcome(kind, exc.code().name)

    while time.monotonic() < until:
        roll = rng.random()
        if roll < 0.15:
            request, kind = pb.SearchRequest(image=rng.choice(images), top_k=10), "search image"
        else:
            rerank = roll < 0.3
            request = pb.SearchRequest(text=rng.choice(words), top_k=10, rerank=rerank, rerank_depth=10)
            kind = "search rerank" if rerank else "search text"
        task = asyncio.create_task(one(request, kind))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*pending)


async def writes(
    stub: Any, ledger: Ledger, products: list[tuple[Product, bytes]], rate: float, until: float
) -> None:
    rng = random.Random(2)
    n = 0
    while time.monotonic() < until:
        n += 1
        roll = rng.random()
        try:
            if roll < 0.4:
                base, image = products[n % len(products)]
                new = Product(**{**base.__dict__, "id": f"soak{n:06d}", "price": float(n % 500)})
                message = pb.UpsertProductsRequest(product=product_to_pb(new), image_bytes=image)
                reply = await stub.UpsertProducts(iter([message]), timeout=20)
                if reply.upserted == 1:
                    ledger.upserted.add(new.id)
                kind = "upsert"
            elif roll < 0.5 and ledger.upserted - ledger.deleted:
                victim = rng.choice(sorted(ledger.upserted - ledger.deleted))
                await stub.DeleteProducts(pb.DeleteProductsRequest(ids=[victim]), timeout=10)
                ledger.deleted.add(victim)
                kind = "delete"
            else:
                ids = [f"soak-ev{n:06d}-{i}" for i in range(4)]
                user = f"soak-u{n % 50}"
                events = [
                    pb.Event(event_id=e, user_id=user, item_id=products[i][0].id, type="view")
                    for i, e in enumerate(ids)
                ]
                reply = await stub.RecordEvents(iter([pb.RecordEventsRequest(events=events)]), timeout=10)
                ledger.events.extend(e for i, e in enumerate(ids) if i not in {x.index for x in reply.errors})
                kind = "events"
            ledger.outcome(kind, "OK")
        except grpc.aio.AioRpcError as exc:
            ledger.outcome("write", exc.code().name)
        await asyncio.sleep(rng.expovariate(rate))


async def kills(stack: Stack, ledger: Ledger, start: float, duration: float, grace_s: float) -> None:
    assert stack.supervisor is not None
    for fraction, name in KILLS:
        await asyncio.sleep(max(0.0, start + fraction * duration - time.monotonic()))
        named = {c.name: c for c in stack.children()}
        if name not in named:
            raise LookupError(f"no child {name!r} in the stack: {', '.join(named)}")
        child = named[name]
        before = stack.supervisor.restart_count(name)
        assert child.process is not None
        pgid = child.process.pid
        t0 = time.monotonic()
        os.kill(pgid, signal.SIGKILL)
        while stack.supervisor.restart_count(name) == before:  # noqa: ASYNC110 (another thread's count)
            await asyncio.sleep(0.1)
        ready = time.monotonic()
        ledger.outages.append((name, t0, ready + grace_s))
        left = group_members(pgid)
        print(
            f"killed {name}: ready again after {ready - t0:.1f} s; processes left of its group: {len(left)}",
            file=sys.stderr,
            flush=True,
        )


def verify(stack: Stack, ledger: Ledger, dsn: str) -> dict[str, Any]:
    import psycopg

    with targets.insecure_channel(stack.gateway_target) as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        kept = sorted(ledger.upserted - ledger.deleted)
        found: set[str] = set()
        for i in range(0, len(kept), 100):
            reply = stub.GetProducts(pb.GetProductsRequest(ids=kept[i : i + 100]), timeout=30)
            found |= {p.id for p in reply.products}
        resurrected = 0
        for pid in sorted(ledger.deleted):
            try:
                stub.GetProducts(pb.GetProductsRequest(ids=[pid]), timeout=10)
                resurrected += 1
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    with psycopg.connect(dsn) as conn:
        stored = {
            r[0]
            for r in conn.execute(
                "SELECT event_id FROM events WHERE event_id = ANY(%s)", (ledger.events,)
            ).fetchall()
        }
    return {
        "upserts_acknowledged": len(ledger.upserted),
        "upserts_lost": len(set(kept) - found),
        "deletes_acknowledged": len(ledger.deleted),
        "deletes_undone": resurrected,
        "events_acknowledged": len(ledger.events),
        "events_lost": len(set(ledger.events) - stored),
    }


def judge_errors(ledger: Ledger) -> dict[str, Any]:
    def inside(t: float) -> bool:
        return any(a <= t <= b for _, a, b in ledger.outages)

    codes = Counter(code for _, _, code in ledger.outcomes)
    bad = [
        (round(t, 1), kind, code)
        for t, kind, code in ledger.outcomes
        if code != "OK" and (code != "UNAVAILABLE" or not inside(t))
    ]
    return {
        "requests": len(ledger.outcomes),
        "codes": dict(codes),
        "failures_outside_rule": bad[:20],
        "failures_outside_rule_count": len(bad),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--artifacts", default="var/artifacts", help="export output (manifest.json)")
    parser.add_argument("--work", default="var/soak", help="scratch directory (data, logs)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load before the first RSS reading")
    parser.add_argument("--products", type=int, default=200, help="catalog ingested first")
    parser.add_argument("--read-rate", type=float, default=4.0, help="searches per second")
    parser.add_argument("--write-rate", type=float, default=2.0, help="writes per second")
    parser.add_argument("--grace-s", type=float, default=5.0, help="outage tail after a child is ready")
    parser.add_argument("--out", default="", help="also write the report as JSON here")
    args = parser.parse_args(argv)

    from demo.catalog import write_generated
    from gateway.config import GatewayConfig
    from operations.client import Connection, ingest
    from vitrine import logs

    logs.setup("warning")
    artifacts, work = Path(args.artifacts).resolve(), Path(args.work).resolve()
    catalog = write_generated(
        work / "catalog", args.products, seed=3, n_queries=2, image_size=256, progress=False
    )
    products = [
        (p, (catalog.parent / p.image_uri).read_bytes())
        for p in read_catalog(catalog)
        if isinstance(p, Product)
    ]
    stack = Stack(work, artifacts, gateway=GatewayConfig(port=0, metrics_port=0, health_interval_s=1.0))
    ledger = Ledger()
    try:
        stack.start(tritons=2, gateways=2, postgres=True)
        assert stack.postgres is not None
        summary = ingest(Connection(stack.gateway_target), catalog, 32, False)
        print(summary.render(), file=sys.stderr)
        supervisor = stack.supervise()
        duration = args.minutes * 60
        never_killed = [c for c in stack.children() if c.name in ("triton-1", "gateway-0")]

        async def run() -> tuple[float, float, float, float]:
            channel = targets.aio_channel(stack.gateway_target)
            stub = pb_grpc.ProductSearchStub(channel)
            start = time.monotonic()
            until = start + duration
            images = [image for _, image in products[:8]]
            load = [
                asyncio.create_task(reads(stub, ledger, images, args.read_rate, until)),
                asyncio.create_task(writes(stub, ledger, products, args.write_rate, until)),
            ]
            await asyncio.sleep(args.warmup_s)
            rss0 = (rss_mb(groups(never_killed)), rss_mb(groups(stack.children())))
            await kills(stack, ledger, start, duration, args.grace_s)
            await asyncio.gather(*load)
            rss1 = (rss_mb(groups(never_killed)), rss_mb(groups(stack.children())))
            await channel.close(None)
            return rss0[0], rss1[0], rss0[1], rss1[1]

        kept0, kept1, all0, all1 = asyncio.run(run())
        report = {
            "minutes": args.minutes,
            "kills": [{"child": n, "outage_s": round(b - a - args.grace_s, 1)} for n, a, b in ledger.outages],
            "restarts": {c.name: supervisor.restart_count(c.name) for c in stack.children()},
            **judge_errors(ledger),
            **verify(stack, ledger, stack.postgres.dsn),
            "rss_never_killed_mb": [round(kept0, 1), round(kept1, 1)],
            "rss_never_killed_growth": round(kept1 / kept0 - 1, 4),
            "rss_stack_mb": [round(all0, 1), round(all1, 1)],
        }
    finally:
        stack.stop()
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    lost = report["upserts_lost"] + report["deletes_undone"] + report["events_lost"]
    ok = not lost and not report["failures_outside_rule_count"]
    ok = ok and report["rss_never_killed_growth"] < RSS_LIMIT
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
