"""Recommend latency on a running stack (``vitrine up``): an open-loop generator at several rates.

``python -m benchmarks.recommend --gateway HOST:PORT --rates 5,10,20 --duration-s 20`` sends Recommend
for the demo shoppers (``u00000``...) at a fixed arrival rate (open loop: a slow answer does not slow the
arrivals, so queueing shows), one asyncio process, and reports p50/p95/p99, errors, the strategies that
answered and the generator's own CPU use (it shares the machine with the stack).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import time
from collections import Counter

import grpc

from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_rate(
    stub: pb_grpc.ProductSearchStub, rate: float, duration_s: float, users: int, seed: int
) -> dict:
    rng = random.Random(seed)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    strategies: Counter[str] = Counter()

    async def one(user: str) -> None:
        t0 = time.perf_counter()
        try:
            resp = await stub.Recommend(pb.RecommendRequest(user_id=user, top_k=10), timeout=10)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            return
        latencies.append((time.perf_counter() - t0) * 1000)
        strategies[resp.strategy] += 1

    tasks = []
    cpu0, t_start = _cpu_s(), time.perf_counter()
    n = int(rate * duration_s)
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(f"u{rng.randrange(users):05d}")))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    return {
        "rate": rate,
        "sent": n,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "errors": sum(errors.values()),
        "strategies": dict(strategies),
        "generator_cpu": (_cpu_s() - cpu0) / wall,
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        for _ in range(20):  # warm-up: caches, Triton's first batches
            await stub.Recommend(pb.RecommendRequest(user_id="u00000", top_k=10), timeout=30)
        return [
            await run_rate(stub, float(r), args.duration_s, args.users, args.seed + i)
            for i, r in enumerate(args.rates.split(","))
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", default="127.0.0.1:50050")
    parser.add_argument("--rates", default="5,10,20,40")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=1000, help="demo shoppers to draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(describe_hardware())
    print(
        f"generator: one asyncio process (pid {os.getpid()}), open loop, {args.duration_s:.0f} s per rate\n"
    )
    rows = [
        (
            f"{r['rate']:.0f}",
            r["sent"],
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['p99']:.1f}",
            r["errors"],
            ", ".join(f"{k} {v}" for k, v in sorted(r["strategies"].items())),
            f"{100 * r['generator_cpu']:.0f}%",
        )
        for r in results
    ]
    headers = ["req/s", "sent", "p50 ms", "p95 ms", "p99 ms", "errors", "answered by", "generator CPU"]
    print("\n".join(markdown_table(headers, rows, "rrrrrrlr")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
