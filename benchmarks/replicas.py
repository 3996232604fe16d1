"""``python -m benchmarks.replicas``: one Triton replica against two, and the balancing layer's own cost.

One stack, one run: two Triton replicas over the same model repository, one index service (seeded random
unit vectors for a generated catalog, written directly, as ``benchmarks.gateway`` does), and three gateway
processes that differ only in ``--triton-url``:

- ``one endpoint``: the first replica alone (a one-entry list: the balancer's single-replica path);
- ``same endpoint twice``: the first replica listed twice, so every call runs the full choice over two
  entries (least outstanding, ties in turn) and reaches the same server: any difference from the row
  above is the balancing layer's own cost;
- ``two replicas``: both replicas, calls spread over them.

Each gateway answers the same text searches (``embed_text`` on Triton + retrieval, no re-rank) closed-loop
at each ``--concurrency``, in ``--rounds`` interleaved rounds with the order rotated, so background load
lands on all alike. An in-process micro-benchmark adds the choice's cost per call (one replica, two).
On a 2-vCPU host two replicas share the same two cores: expect no gain, only the split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import load_index
from demo.catalog import generate_catalog, generate_queries
from gateway.replicas import ReplicaSet
from vitrine.contracts import EMBED_DIM
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table

SYSTEMS = ("one endpoint", "same endpoint twice", "two replicas")


@dataclass
class Row:
    system: str
    concurrency: int
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    throughput_rps: float


async def closed_loop(
    address: str, queries: list[str], concurrency: int, n: int
) -> tuple[list[float], int, float]:
    """``n`` searches by ``concurrency`` workers, each sending its next when the last returned."""
    latencies: list[float] = []
    failures = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        await stub.Search(pb.SearchRequest(text=queries[0], top_k=10), timeout=60)  # connected, warm
        next_query = iter(range(n))

        async def worker() -> None:
            nonlocal failures
            for i in next_query:
                t0 = time.perf_counter()
                try:
                    await stub.Search(pb.SearchRequest(text=queries[i % len(queries)], top_k=10), timeout=60)
                except grpc.aio.AioRpcError:
                    failures += 1
                latencies.append(1000 * (time.perf_counter() - t0))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, failures, wall


def choice_cost_ns(replicas: int, calls: int = 200_000) -> float:
    """Per-call cost of choosing a replica and accounting for it (``pick`` + ``using``), in ns of this
    process's CPU time (on a busy host wall time would count other processes' turns)."""
    spec = ",".join(f"127.0.0.1:{8001 + 10 * i}" for i in range(replicas))
    chooser: ReplicaSet[None] = ReplicaSet(spec, lambda address: None)
    t0 = time.process_time_ns()
    for _ in range(calls):
        replica = chooser.pick()
        assert replica is not None
        with chooser.using(replica):
            pass
    return (time.process_time_ns() - t0) / calls


def measure(
    addresses: dict[str, str], queries: list[str], concurrency: list[int], requests: int, rounds: int
) -> list[Row]:
    rows = []
    for conc in concurrency:
        got: dict[str, tuple[list[float], int, float]] = {name: ([], 0, 0.0) for name in addresses}
        names = list(addresses)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                lat, fail, wall = asyncio.run(closed_loop(addresses[name], queries, conc, requests // rounds))
                old = got[name]
                got[name] = (old[0] + lat, old[1] + fail, old[2] + wall)
        for name, (lat, fail, wall) in got.items():
            rows.append(
                Row(
                    name,
                    conc,
                    len(lat),
                    fail,
                    percentile(lat, 0.5),
                    percentile(lat, 0.95),
                    (len(lat) - fail) / wall,
                )
            )
        print(f"concurrency {conc} done", file=sys.stderr, flush=True)
    return rows


def report(rows: list[Row], choice: dict[int, float], weights: dict[str, str], products: int) -> str:
    base = {r.concurrency: r for r in rows if r.system == SYSTEMS[0]}
    table = markdown_table(
        [
            "gateway --triton-url",
            "concurrency",
            "requests",
            "failures",
            "p50 ms",
            "p95 ms",
            "req/s",
            "p50 vs one endpoint",
            "req/s vs one endpoint",
        ],
        [
            [
                r.system,
                r.concurrency,
                r.requests,
                r.failures,
                f"{r.p50_ms:.1f}",
                f"{r.p95_ms:.1f}",
                f"{r.throughput_rps:.1f}",
                f"{r.p50_ms / base[r.concurrency].p50_ms:.3f}",
                f"{r.throughput_rps / base[r.concurrency].throughput_rps:.3f}",
            ]
            for r in rows
        ],
    )
    lines = [
        f"hardware: {describe_hardware()}; weights: "
        + ", ".join(f"{k} {v}" for k, v in sorted(weights.items())),
        f"text search (embed_text + flat retrieval over {products} products, top 10, no re-rank), "
        "closed loop",
        "",
        *table,
        "",
        "choosing a replica in process (pick + accounting), CPU time per call: "
        + ", ".join(f"{n} replica{'s' if n > 1 else ''} {ns:.0f} ns" for n, ns in choice.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--artifacts", default="var/artifacts", help="export output (manifest.json)")
    parser.add_argument("--work", default="var/bench-replicas", help="scratch directory")
    parser.add_argument("--products", type=int, default=2000, help="catalog size (vectors indexed)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=240, help="searches per system and concurrency")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from gateway.config import GatewayConfig
    from gateway.pipeline import PipelineSettings
    from gateway.types import TextMatch
    from operations.stack import Stack

    artifacts, work = Path(args.artifacts).resolve(), Path(args.work).resolve()
    manifest = json.loads((artifacts / "manifest.json").read_text())
    weights = {name: m["weights"] for name, m in manifest["models"].items()}
    products = [p for p, _ in generate_catalog(args.products, seed=1)]
    queries = [q.text for q in generate_queries(products, 40, seed=1)]
    vectors = np.random.default_rng(7).standard_normal((len(products), EMBED_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gateway = GatewayConfig(
        port=0,
        max_in_flight=256,
        pipeline=PipelineSettings(collection="bench", text_match=TextMatch.IMAGE),
    )
    stack = Stack(work, artifacts, gateway=gateway)
    try:
        first, second = stack.start_triton(), stack.start_triton()
        index = stack.start_index()
        load_index(index.address, "bench", vectors, products)
        urls = {
            SYSTEMS[0]: first.grpc_url,
            SYSTEMS[1]: f"{first.grpc_url},{first.grpc_url}",
            SYSTEMS[2]: f"{first.grpc_url},{second.grpc_url}",
        }
        addresses = {name: stack.start_gateway(triton_url=url).address for name, url in urls.items()}
        rows = measure(addresses, queries, args.concurrency, args.requests, args.rounds)
    finally:
        stack.stop()
    choice = {n: choice_cost_ns(n) for n in (1, 2)}
    print(report(rows, choice, weights, len(products)))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "choice_ns": choice}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
