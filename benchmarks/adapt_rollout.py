"""Re-index and switch under load: ``vitrine adapt deploy`` on a full-size stack with searches running.

Starts the stack over the artifacts (the adapted encoder exported as version 2 by
``python -m benchmarks.adapt``), ingests a generated catalog through the gateway (version 1), then runs
the deploy while clients search continuously, and reports: ingest and re-index times, searches served
during the deploy, failures, and answers that were neither wholly version 1's nor wholly version 2's
(a query vector of one version against product vectors of the other would be such an answer).
The search clients run in this process; their CPU share is reported beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

import grpc

from demo.catalog import write_generated
from operations.client import Connection, ingest
from operations.rollout import RolloutTarget, deploy
from operations.stack import Stack
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.measure import describe_hardware
from vitrine.tables import markdown_table

QUERIES = ("red leather ankle boots", "blue canvas sneakers", "striped cotton t-shirt", "silk midi dress",
           "black leather handbag", "green wool scarf")  # fmt: skip


async def _answers(stub: pb_grpc.ProductSearchStub) -> dict[str, tuple[str, ...]]:
    out = {}
    for q in QUERIES:
        reply = await stub.Search(pb.SearchRequest(text=q, top_k=10), timeout=60)
        out[q] = tuple(h.product.id for h in reply.hits)
    return out


async def run(artifacts: Path, n: int, clients: int, work: Path) -> list[str]:
    catalog = write_generated(work / "catalog", n, seed=5, n_queries=0, image_size=256, progress=False)
    serving = work / "serving.json"
    stack = Stack(work / "stack", artifacts)
    try:
        stack.start_triton()
        stack.start_index()
        gw = stack.start_gateway(serving_file=str(serving), health_interval_s=0.2)
        t0 = time.perf_counter()
        summary = await asyncio.to_thread(ingest, Connection(gw.address), catalog, 32, False)
        ingest_s = time.perf_counter() - t0
        channel = grpc.aio.insecure_channel(gw.address)
        stub = pb_grpc.ProductSearchStub(channel)
        before = await _answers(stub)
        seen: list[tuple[str, tuple[str, ...]]] = []
        failures: list[str] = []
        done = asyncio.Event()

        async def client(i: int) -> None:
            while not done.is_set():
                q = QUERIES[(i + len(seen)) % len(QUERIES)]
                try:
                    reply = await stub.Search(pb.SearchRequest(text=q, top_k=10), timeout=60)
                    seen.append((q, tuple(h.product.id for h in reply.hits)))
                except grpc.RpcError as exc:
                    failures.append(str(exc.code()))

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        target = RolloutTarget(stack.triton.grpc_url, stack.index.address, "products", serving)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        report = await deploy(target, 2, catalog, batch=16, progress=False)
        reindex_s = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # gateways re-read the serving file every health interval (0.2 s here)
        done.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        after = await _answers(stub)
        await channel.close(None)
        mixed = sum(1 for q, ids in seen if ids not in (before[q], after[q]))
        changed = sum(1 for q in QUERIES if before[q] != after[q])
        client_cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall
    finally:
        stack.stop()
    lines = [f"Hardware: {describe_hardware()}. Full-size towers ({artifacts}); {n} generated products.", ""]
    lines += markdown_table(
        ["products", "ingest (v1) s", "re-index (v2) s", "products/s", "searches during deploy",
         "failed", "mixed versions", "queries whose answer changed", "search clients' CPU"],
        [[summary.upserted, round(ingest_s, 1), round(reindex_s, 1), round(n / reindex_s, 1), len(seen),
          len(failures), mixed, f"{changed}/{len(QUERIES)}", f"{client_cpu:.0%} of one core"]],
    )  # fmt: skip
    lines += ["", f"missing ids reported by UpsertVectors: {len(report['missing_ids'])}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt_rollout", description=__doc__)
    ap.add_argument("--artifacts", default="var/artifacts")
    ap.add_argument("--products", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4, help="concurrent search loops during the deploy")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adapt-rollout-") as work:
        lines = asyncio.run(run(Path(ns.artifacts), ns.products, ns.clients, Path(work)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
