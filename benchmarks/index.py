"""Index benchmark: ``python -m benchmarks.index`` (``make bench-index``).

Side by side in one run, on seeded clustered 512-d vectors (low intrinsic dimension, as embeddings are):
- in-process FAISS: Flat, IVF-Flat and HNSW at each size: build time, p50/p95 latency and QPS at batch
  1 and batch 32, recall@10 against exact search;
- the same searches through the gRPC service (a real server subprocess), and their ratio to in-process;
- concurrent single-query clients with and without coalescing;
- upsert throughput (UpsertStream, durable commits) and restart time of the service at the largest size.

Prints a markdown report and writes it, with the raw figures as JSON, under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
from tqdm import tqdm

from benchmarks.datasets import clustered, recall_at
from index_service.config import ENV_PREFIX, IndexServiceConfig
from operations.servers import IndexServer
from vitrine import config as vconfig
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table

DIM = 512
K = 10
SPACE = "vector"
"""The one vector space of the benchmark collection: one index kind measured per collection."""


@dataclass
class Row:
    size: int
    index: str
    where: str  # "faiss" (in-process) or "grpc"
    batch: int
    p50_ms: float
    p95_ms: float
    qps: float
    recall10: float
    build_s: float = 0.0


@dataclass(frozen=True)
class Kind:
    name: str
    index: pb.IndexSpec
    params: pb.SearchParams


def kinds(size: int, hnsw_max: int) -> list[Kind]:
    nlist = min(1024, max(16, int(4 * np.sqrt(size))), size // 39)
    out = [
        Kind("Flat", pb.IndexSpec(kind=pb.INDEX_KIND_FLAT), pb.SearchParams()),
        Kind(
            f"IVF{nlist},Flat nprobe=16",
            pb.IndexSpec(kind=pb.INDEX_KIND_IVF_FLAT, nlist=nlist),
            pb.SearchParams(nprobe=16),
        ),
    ]
    if size <= hnsw_max:
        out.append(
            Kind(
                "HNSW32 efC=40 efS=64",
                pb.IndexSpec(kind=pb.INDEX_KIND_HNSW, hnsw_m=32, ef_construction=40),
                pb.SearchParams(ef_search=64),
            )
        )
    return out


def build_faiss(kind: Kind, base: np.ndarray) -> faiss.Index:
    """The same index the service builds for this spec, built in-process."""
    spec = kind.index
    if spec.kind == pb.INDEX_KIND_FLAT:
        index: Any = faiss.IndexFlatL2(DIM)
    elif spec.kind == pb.INDEX_KIND_HNSW:
        index = faiss.IndexHNSWFlat(DIM, spec.hnsw_m)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, spec.nlist)
        rng = np.random.default_rng(0)
        sample = base if len(base) <= 100_000 else base[rng.choice(len(base), 100_000, replace=False)]
        index.train(sample)
    for start in range(0, len(base), 100_000):
        index.add(base[start : start + 100_000])
    return index


def faiss_params(kind: Kind) -> faiss.SearchParameters:
    if kind.index.kind == pb.INDEX_KIND_HNSW:
        sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        sp.efSearch = kind.params.ef_search
        return sp
    if kind.index.kind == pb.INDEX_KIND_IVF_FLAT:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = kind.params.nprobe
        return sp
    return faiss.SearchParameters()


def timed(
    fn: Callable[[int], list[list[int]]], calls: int, budget_s: float
) -> tuple[list[float], list[list[int]]]:
    """Latency of call i for i in range(calls), stopping early once the time budget is spent (>= 5 calls)."""
    fn(0)  # warm-up
    latencies, found = [], []
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        found.extend(fn(i))
        latencies.append(time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() - start > budget_s:
            break
    return latencies, found


def summarize(latencies: list[float], batch: int) -> tuple[float, float, float]:
    ms = np.array(latencies) * 1e3
    return percentile(ms, 0.50), percentile(ms, 0.95), batch * len(ms) / (ms.sum() / 1e3)


def item_batches(base: np.ndarray, batch: int = 1000) -> Iterator[pb.UpsertRequest]:
    categories = ("shoes", "bags", "hats", "coats")
    for start in range(0, len(base), batch):
        rows = base[start : start + batch]
        yield pb.UpsertRequest(
            collection="bench",
            items=[
                pb.Item(
                    id=f"p{start + i}",
                    vectors={SPACE: pb.Vector(values=row.tolist())},
                    numbers={"price": float((start + i) % 1000)},
                    keywords={"category": categories[(start + i) % 4]},
                    payload=pb.Payload(title=f"product {start + i}"),
                )
                for i, row in enumerate(rows)
            ],
        )


def search_requests(queries: np.ndarray, batch: int, kind: Kind) -> list[pb.SearchRequest]:
    return [
        pb.SearchRequest(
            collection="bench",
            vector=SPACE,
            queries=[pb.Query(vector=q.tolist()) for q in queries[i : i + batch]],
            k=K,
            params=kind.params,
        )
        for i in range(0, len(queries) - batch + 1, batch)
    ]


def service_spec(kind: Kind) -> pb.CollectionSpec:
    return pb.CollectionSpec(
        name="bench",
        vectors=[pb.VectorSpec(name=SPACE, dim=DIM, metric=pb.METRIC_L2, index=kind.index)],
        schema=pb.AttributeSchema(number_fields=["price"], keyword_fields=["category"]),
    )


async def concurrent_singles(
    address: str, requests: list[pb.SearchRequest], clients: int, seconds: float
) -> dict[str, float]:
    """``clients`` callers each sending one query at a time, as a busy gateway does."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = index_pb2_grpc.IndexServiceStub(channel)
        await stub.Search(requests[0])
        deadline = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await stub.Search(requests[i % len(requests)])
                latencies.append(time.perf_counter() - t0)
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "qps": len(ms) / elapsed,
    }


def bench_service(
    args: argparse.Namespace,
    size: int,
    kind: Kind,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    data_dir: Path,
    full: bool,
) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    shutil.rmtree(data_dir, ignore_errors=True)
    flags = argparse.ArgumentParser(prog="--server-args")
    vconfig.add_arguments(flags, IndexServiceConfig, ENV_PREFIX)
    config = dataclasses.replace(
        vconfig.from_namespace(IndexServiceConfig, flags.parse_args(args.server_args.split())),
        port=0, data_dir=str(data_dir), snapshot_every=0, omp_threads=args.threads,
    )  # fmt: skip
    proc = IndexServer(config)
    proc.start()
    try:
        with grpc.insecure_channel(
            proc.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(spec=service_spec(kind)))
            t0 = time.perf_counter()
            bar = tqdm(total=size, desc=f"upsert {kind.name} {size}", unit="item", leave=False)

            def counted() -> Iterator[pb.UpsertRequest]:
                for req in item_batches(base):
                    yield req
                    bar.update(len(req.items))

            reply = stub.UpsertStream(counted())
            bar.close()
            load_s = time.perf_counter() - t0
            assert reply.count == size, reply
            rows_done = reply.upserted
            extra["upsert_items_per_s"] = rows_done / load_s
            extra["upsert_s"] = load_s
            for batch in (1, 32):
                reqs = search_requests(queries, batch, kind)

                def call(i: int, reqs: list[pb.SearchRequest] = reqs) -> list[list[int]]:
                    out = stub.Search(reqs[i % len(reqs)])
                    return [[int(h.id[1:]) for h in r.hits] for r in out.results]

                lat, found = timed(call, len(reqs), args.seconds)
                p50, p95, qps = summarize(lat, batch)
                recall = recall_at(found, truth[: len(found)], K)
                rows.append(Row(size, kind.name, "grpc", batch, p50, p95, qps, recall, load_s))
            if full:
                stub.Snapshot(pb.SnapshotRequest(name="bench"))
        if full:
            singles = search_requests(queries, 1, kind)
            extra["coalesced"] = asyncio.run(
                concurrent_singles(proc.address, singles, args.clients, args.seconds)
            )
            proc.stop()
            proc = IndexServer(dataclasses.replace(proc.config, coalesce=False))  # same port, same data
            t0 = time.perf_counter()
            proc.start()  # restart over the same data: database + snapshot, until health says SERVING
            extra["restart_s"] = time.perf_counter() - t0
            extra["not_coalesced"] = asyncio.run(
                concurrent_singles(proc.address, singles, args.clients, args.seconds)
            )
    finally:
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return rows, extra


def _faiss_caller(
    index: faiss.Index, queries: np.ndarray, batch: int, params: faiss.SearchParameters
) -> Callable[[int], list[list[int]]]:
    n_calls = len(queries) // batch

    def call(i: int) -> list[list[int]]:
        j = (i % n_calls) * batch
        _, labels = index.search(queries[j : j + batch], K, params=params)
        return labels.tolist()

    return call


def run(args: argparse.Namespace) -> dict[str, Any]:
    faiss.omp_set_num_threads(args.threads)
    rows: list[Row] = []
    service: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="vitrine-index-bench-", dir=args.scratch))
    try:
        for size in args.sizes:
            # Queries are held-out draws from the same distribution (as a shopper's query is not a copy of
            # any product), so recall@10 measures real neighbourhoods rather than finding a near-duplicate.
            every = clustered(size + args.queries, DIM, seed=size)
            base, queries = every[:size], np.ascontiguousarray(every[size:])
            del every
            exact = faiss.IndexFlatL2(DIM)
            exact.add(base)
            _, truth = exact.search(queries, K)
            del exact
            for kind in kinds(size, args.hnsw_max):
                faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use every core; searches do not
                t0 = time.perf_counter()
                index = build_faiss(kind, base)
                build_s = time.perf_counter() - t0
                faiss.omp_set_num_threads(args.threads)
                for batch in (1, 32):
                    call = _faiss_caller(index, queries, batch, faiss_params(kind))
                    lat, found = timed(call, len(queries) // batch, args.seconds)
                    p50, p95, qps = summarize(lat, batch)
                    recall = recall_at(found, truth[: len(found)], K)
                    rows.append(Row(size, kind.name, "faiss", batch, p50, p95, qps, recall, build_s))
                del index
                family = kind.name.split()[0]
                through_service = size in args.service_sizes and family in args.service_kinds
                if family == "HNSW32" and size > args.service_hnsw_max:
                    through_service = False
                if through_service:
                    srows, extra = bench_service(args, size, kind, base, queries, truth, work / "data", True)
                    rows.extend(srows)
                    service[f"{kind.name} @ {size}"] = extra
                print_rows(rows[-4:] if through_service else rows[-2:], header=False)
            del base
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "hardware": hardware(),
        "weights": "synthetic seeded clustered vectors (no model)",
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [asdict(r) for r in rows],
        "service": service,
    }


def hardware() -> str:
    return describe_hardware(f"faiss {faiss.__version__}")


def print_rows(rows: list[Row], header: bool = True) -> None:
    """Rows as they are measured; the header once, before the first."""
    cells = [
        [f"{r.size:,}", r.index, r.where, r.batch, f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}", f"{r.qps:,.0f}",
         f"{r.recall10:.3f}", f"{r.build_s:.1f}"]
        for r in rows
    ]  # fmt: skip
    headers = ["size", "index", "via", "batch", "p50 ms", "p95 ms", "QPS", "recall@10", "build s"]
    lines = markdown_table(headers, cells, "rllrrrrrr")
    print("\n".join(lines if header else lines[2:]), flush=True)


def report(result: dict[str, Any]) -> str:
    rows = [Row(**r) for r in result["rows"]]
    lines = [f"Hardware: {result['hardware']}. Data: {result['weights']}.", ""]
    headers = [
        "size", "index", "batch", "FAISS p50 ms", "FAISS p95 ms", "FAISS QPS", "gRPC p50 ms", "gRPC p95 ms",
        "gRPC QPS", "gRPC/FAISS p50", "recall@10", "build s",
    ]  # fmt: skip
    by_key = {(r.size, r.index, r.where, r.batch): r for r in rows}
    cells = []
    for r in rows:
        if r.where != "faiss":
            continue
        g = by_key.get((r.size, r.index, "grpc", r.batch))
        grpc_cells = (
            [f"{g.p50_ms:.2f}", f"{g.p95_ms:.2f}", f"{g.qps:,.0f}", f"{g.p50_ms / r.p50_ms:.2f}x"]
            if g
            else ["-"] * 4
        )
        cells.append(
            [f"{r.size:,}", r.index, r.batch, f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}", f"{r.qps:,.0f}",
             *grpc_cells, f"{r.recall10:.3f}", f"{r.build_s:.1f}"]
        )  # fmt: skip
    lines += markdown_table(headers, cells, "rlrrrrrrrrrr")
    lines.append("")
    for name, extra in result["service"].items():
        parts = [f"upsert {extra['upsert_items_per_s']:,.0f} items/s ({extra['upsert_s']:.1f} s)"]
        if "restart_s" in extra:
            parts.append(f"restart to SERVING {extra['restart_s']:.1f} s")
        for mode in ("coalesced", "not_coalesced"):
            if mode in extra:
                m = extra[mode]
                parts.append(
                    f"{result['args']['clients']} concurrent single-query clients, {mode.replace('_', ' ')}: "
                    f"p50 {m['p50_ms']:.2f} ms, p95 {m['p95_ms']:.2f} ms, {m['qps']:,.0f} QPS"
                )
        lines.append(f"- service, {name}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--service-sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--service-kinds", type=lambda s: s.split(","), default=["Flat", "HNSW32"])
    parser.add_argument(
        "--service-hnsw-max", type=int, default=100_000, help="largest size HNSW is measured through gRPC"
    )
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest size HNSW is built at")
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=1, help="FAISS threads, in-process and per service executor thread"
    )
    parser.add_argument("--server-args", default="--threads 2", help="extra index service flags")
    parser.add_argument("--scratch", default=None, help="directory for the service's data while measuring")
    parser.add_argument("--out", default="build/bench-index")
    args = parser.parse_args(argv)
    result = run(args)
    text = report(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nwritten to {out}/report.md and {out}/results.json")


if __name__ == "__main__":
    main()
