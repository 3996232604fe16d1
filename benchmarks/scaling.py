"""How cost grows with the catalog: ``python -m benchmarks.scaling`` (``make bench-scaling``).

Seeded synthetic products at each size (10k, 100k, 1M by default): two 512-d vector spaces (``image``
and ``text``, clustered vectors of low intrinsic dimension, as embeddings are), a keyword attribute
(``category``, 8 values: a filter keeps 1 in 8) and a number (``price``). For each index kind on the FAISS
index service (a real server subprocess over its SQLite store):

- memory: the server's resident set after the load;
- ingest: durable ``UpsertStream`` batches of 1,000 products (both spaces in one write), items/s;
- snapshot and restart: a snapshot, then process start to health SERVING over the same data;
- search, one query at a time on the ``image`` space, k = 10: unfiltered and filtered p50/p95, and
  recall@10 against exact search over the same (filtered) products.

The same operations run through Milvus's API on milvus-lite (``scaling_milvus.py``) at the sizes it
manages in bounded time: **milvus-lite is a pure-Python reimplementation, not the Milvus engine**; its
figures prove the API, never Milvus's speed. Bounded for a 2-core machine: HNSW stops at 100k by default
(its incremental build at 1M is tens of minutes), queries shrink with size, and every phase shows
progress. Prints a markdown report and writes it, with the raw figures as JSON, under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
import psutil
from tqdm import tqdm

from benchmarks.datasets import recall_at
from benchmarks.scaling_data import (
    BATCH,
    COLLECTION,
    DIM,
    SPACES,
    Catalog,
    K,
    Row,
    make_catalog,
    timed_queries,
)
from index_service.config import IndexServiceConfig
from operations.servers import IndexServer
from vitrine.index.v2 import index_pb2 as pb
from vitrine.index.v2 import index_pb2_grpc
from vitrine.measure import describe_hardware
from vitrine.tables import markdown_table


def faiss_kinds(size: int, hnsw_max: int) -> list[tuple[str, pb.IndexSpec, pb.SearchParams]]:
    nlist = int(min(1024, max(16, 4 * np.sqrt(size))))
    out = [
        ("Flat", pb.IndexSpec(kind=pb.INDEX_KIND_FLAT), pb.SearchParams()),
        (
            f"IVF{nlist} nprobe=16",
            pb.IndexSpec(kind=pb.INDEX_KIND_IVF_FLAT, nlist=nlist),
            pb.SearchParams(nprobe=16),
        ),
    ]
    if size <= hnsw_max:
        out.append(
            (
                "HNSW32 efS=64",
                pb.IndexSpec(kind=pb.INDEX_KIND_HNSW, hnsw_m=32, ef_construction=40),
                pb.SearchParams(ef_search=64),
            )
        )
    return out


def _len(n: int) -> bytes:
    """A protobuf varint (lengths of length-delimited fields)."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return bytes([(number << 3) | 2]) + _len(len(data)) + data


def encode_item(catalog: Catalog, i: int) -> bytes:
    """One product's ``Item`` in protobuf's wire format, vectors straight from the arrays' bytes.

    Python-side message building (``Vector(values=row.tolist())`` in maps) costs the client ~0.5 ms an
    item, which at 1M products would measure the benchmark instead of the service; the bytes are what
    ``Item(...).SerializeToString()`` gives (a test-free check: the first batch is parsed back)."""
    head = pb.Item(
        id=f"p{i}",
        numbers={"price": float(i % 1000)},
        keywords={"category": catalog.category(i)},
        payload=pb.Payload(title=f"product {i}"),
    ).SerializeToString()
    vectors = b"".join(
        _field(2, _field(1, s.encode()) + _field(2, _field(1, catalog.vectors[s][i].tobytes())))
        for s in SPACES
    )
    return head + vectors


def upserts(catalog: Catalog, bar: tqdm) -> Iterator[pb.UpsertRequest]:
    for start in range(0, catalog.size, BATCH):
        stop = min(catalog.size, start + BATCH)
        wire = _field(1, COLLECTION.encode()) + b"".join(
            _field(2, encode_item(catalog, i)) for i in range(start, stop)
        )
        request = pb.UpsertRequest.FromString(wire)
        if start == 0:
            item = request.items[0]
            assert list(item.vectors["text"].values) == catalog.vectors["text"][0].tolist(), "bad encoding"
            assert item.keywords["category"] == catalog.category(0) and item.payload.title == "product 0"
        yield request
        bar.update(stop - start)


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def bench_faiss(
    catalog: Catalog, kind: tuple[str, pb.IndexSpec, pb.SearchParams], data_dir: Path, n_queries: int
) -> Row:
    name, index, params = kind
    shutil.rmtree(data_dir, ignore_errors=True)
    config = IndexServiceConfig(port=0, data_dir=str(data_dir), snapshot_every=0, threads=2)
    server = IndexServer(config, startup_timeout_s=1800)
    server.start()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    try:
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            spec = pb.CollectionSpec(
                name=COLLECTION,
                vectors=[pb.VectorSpec(name=s, dim=DIM, metric=pb.METRIC_L2, index=index) for s in SPACES],
                schema=pb.AttributeSchema(number_fields=["price"], keyword_fields=["category"]),
            )
            stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
            bar = tqdm(total=catalog.size, desc=f"faiss {name} {catalog.size:,}", unit="item", leave=False)
            t0 = time.perf_counter()
            reply = stub.UpsertStream(upserts(catalog, bar))
            ingest_s = time.perf_counter() - t0
            bar.close()
            assert reply.upserted == catalog.size, reply
            assert server.process is not None
            rss = _rss_mb(server.process.pid)
            search = _faiss_search(stub, catalog, params, filtered=False)
            p50, p95, found = timed_queries(search, n_queries)
            fsearch = _faiss_search(stub, catalog, params, filtered=True)
            fp50, fp95, ffound = timed_queries(fsearch, n_queries)
            t0 = time.perf_counter()
            stub.Snapshot(pb.SnapshotRequest(name=COLLECTION))
            snapshot_s = time.perf_counter() - t0
        server.stop()
        t0 = time.perf_counter()
        server = IndexServer(dataclasses.replace(server.config), startup_timeout_s=1800)  # same port and data
        server.start()
        restart_s = time.perf_counter() - t0
        with grpc.insecure_channel(server.address, options=options) as channel:
            again = _faiss_search(index_pb2_grpc.IndexServiceStub(channel), catalog, params, filtered=False)
            assert again(0) == found[0], "the restarted service answers differently"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return Row(
        "faiss-service", name, catalog.size, rss, catalog.size / ingest_s, ingest_s, 0.0, snapshot_s,
        restart_s, n_queries, p50, p95, recall_at(found, catalog.truth[:n_queries], K),
        fp50, fp95, recall_at(ffound, catalog.filtered_truth[:n_queries], K),
    )  # fmt: skip


def _faiss_search(
    stub: index_pb2_grpc.IndexServiceStub, catalog: Catalog, params: pb.SearchParams, filtered: bool
) -> Callable[[int], list[int]]:
    def search(j: int) -> list[int]:
        request = pb.SearchRequest(
            collection=COLLECTION,
            vector="image",
            queries=[pb.Query(vector=catalog.queries[j].tolist())],
            k=K,
            params=params,
        )
        if filtered:
            request.filter.keyword.field = "category"
            request.filter.keyword.values.append(catalog.category(j))
        hits = stub.Search(request).results[0].hits
        return [int(h.id[1:]) for h in hits]

    return search


def queries_for(size: int, base: int) -> int:
    """Fewer sequential queries as each gets slower: ``base`` at 10k, a quarter of it at 1M."""
    return max(20, int(base * min(1.0, (10_000 / size) ** 0.3)))


def jobs(args: argparse.Namespace) -> list[tuple[int, str, Any]]:
    """(size, backend, kind) in the order they run: every FAISS kind and milvus-lite's full set by size;
    milvus-lite's larger sizes (FLAT only) last, run only while the time budget allows."""
    from benchmarks.scaling_milvus import milvus_kinds

    first: list[tuple[int, str, Any]] = []
    last: list[tuple[int, str, Any]] = []
    for size in args.sizes:
        # At 1M the IVF row matters more to the curve than the Flat scan: it runs first.
        first += [
            (size, "faiss", k) for k in sorted(faiss_kinds(size, args.hnsw_max), key=lambda k: k[0] == "Flat")
        ]
        if size <= args.milvus_max:
            chosen = [(size, "milvus", k) for k in milvus_kinds(size, args.milvus_full_max)]
            (first if size <= args.milvus_full_max else last).extend(chosen)
    return first + last


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.scaling_milvus import bench_milvus

    rows: list[Row] = []
    skipped: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="vitrine-scaling-", dir=args.scratch))
    started = time.perf_counter()
    catalog: Catalog | None = None
    try:
        for size, backend, kind in jobs(args):
            label = f"{backend} {kind[0] if backend == 'faiss' else kind.name} @ {size:,}"
            # Start a measurement only if its load, at the last rate this backend ingested, ends in budget.
            rate = next(
                (r.size / (r.ingest_s + r.build_s) for r in reversed(rows) if r.backend.startswith(backend)),
                None,
            )
            expected_end = time.perf_counter() - started + (size / rate if rate else 0.0)
            if expected_end > args.budget_min * 60:
                skipped.append(label)
                print(f"# skipped (would end past the {args.budget_min:g} min budget): {label}", flush=True)
                continue
            n = queries_for(size, args.queries)
            if catalog is None or catalog.size != size:
                catalog = None
                t0 = time.perf_counter()
                catalog = make_catalog(size, n)
                print(f"# {size:,} products: data and exact neighbours in {time.perf_counter() - t0:.1f} s")
            if backend == "faiss":
                rows.append(bench_faiss(catalog, kind, work / "faiss", n))
            else:
                rows.append(bench_milvus(catalog, kind, work / "milvus", n))
            print_rows(rows[-1:], header=len(rows) == 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "hardware": describe_hardware(f"faiss {faiss.__version__}"),
        "load_before": args.load_before,
        "load_after": psutil.getloadavg()[0],
        "data": "seeded synthetic clustered vectors, two 512-d spaces (no model weights)",
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": time.perf_counter() - started,
        "skipped": skipped,
        "rows": [asdict(r) for r in rows],
    }


HEADERS = [
    "backend", "index", "products", "RSS MiB", "ingest items/s", "build s", "snapshot s", "restart s",
    "queries", "p50 ms", "p95 ms", "recall@10", "filtered p50 ms", "filtered p95 ms", "filtered recall@10",
]  # fmt: skip


def _cells(r: Row) -> list[Any]:
    return [
        r.backend, r.kind, f"{r.size:,}", f"{r.rss_mb:,.0f}", f"{r.ingest_per_s:,.0f}", f"{r.build_s:.1f}",
        f"{r.snapshot_s:.1f}", f"{r.restart_s:.1f}", r.queries, f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}",
        f"{r.recall:.3f}", f"{r.filtered_p50_ms:.2f}", f"{r.filtered_p95_ms:.2f}", f"{r.filtered_recall:.3f}",
    ]  # fmt: skip


def print_rows(rows: list[Row], header: bool) -> None:
    lines = markdown_table(HEADERS, [_cells(r) for r in rows], "llrrrrrrrrrrrrr")
    print("\n".join(lines if header else lines[2:]), flush=True)


def report(result: dict[str, Any]) -> str:
    rows = [Row(**r) for r in result["rows"]]
    lines = [
        f"Hardware: {result['hardware']}. 1-minute load before / after the run: "
        f"{result['load_before']:.2f} / {result['load_after']:.2f}. Data: {result['data']}. "
        f"Whole run: {result['seconds'] / 60:.1f} min."
        + (f" Skipped (time budget): {', '.join(result['skipped'])}." if result["skipped"] else ""),
        "",
        *markdown_table(HEADERS, [_cells(r) for r in rows], "llrrrrrrrrrrrrr"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="sequential queries at 10k (fewer above)")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size HNSW is built at")
    parser.add_argument("--milvus-max", type=int, default=100_000, help="largest size milvus-lite runs")
    parser.add_argument(
        "--milvus-full-max", type=int, default=10_000, help="largest size milvus-lite runs every index kind"
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=16.0,
        help="skip a measurement whose load would end past this many minutes (at the last ingest rate)",
    )
    parser.add_argument("--scratch", default=None, help="directory for the servers' data while measuring")
    parser.add_argument("--out", default="build/bench-scaling")
    args = parser.parse_args(argv)
    args.load_before = psutil.getloadavg()[0]
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
