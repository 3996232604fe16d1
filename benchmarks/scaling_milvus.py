"""The scaling benchmark's operations through Milvus's API on milvus-lite (``benchmarks.scaling``).

milvus-lite runs in this process and is a pure-Python reimplementation (faiss-cpu and pyarrow), not the
Milvus engine: its rows are labelled ``milvus-lite`` and say what the API costs here, never what a Milvus
cluster does. The collection mirrors a product as the Milvus backend stores it: one row, the two vector
spaces as vector fields, the attributes as scalar fields. Memory is this process's resident-set growth
over the load; "build" is ``flush`` (sealing segments and building their indexes), which milvus-lite
needs before searches stop scanning unflushed rows one by one.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from benchmarks.datasets import recall_at
from benchmarks.scaling_data import BATCH, COLLECTION, DIM, SPACES, Catalog, K, Row, timed_queries


@dataclass(frozen=True)
class MilvusKind:
    name: str
    index_type: str
    build: dict[str, Any]
    search: dict[str, Any]


def milvus_kinds(size: int, full_max: int) -> list[MilvusKind]:
    flat = MilvusKind("FLAT", "FLAT", {}, {})
    if size > full_max:
        return [flat]
    nlist = int(min(1024, max(16, 4 * size**0.5)))
    return [
        flat,
        MilvusKind(f"IVF_FLAT{nlist} nprobe=16", "IVF_FLAT", {"nlist": nlist}, {"nprobe": 16}),
        MilvusKind("HNSW32 efS=64", "HNSW", {"M": 32, "efConstruction": 40}, {"ef": 64}),
    ]


def _client(path: Path) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(str(path))


def _create(client: Any, kind: MilvusKind) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    for space in SPACES:
        schema.add_field(space, DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("category", DataType.VARCHAR, max_length=32)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("title", DataType.VARCHAR, max_length=256)
    index = client.prepare_index_params()
    for space in SPACES:
        index.add_index(space, index_type=kind.index_type, metric_type="L2", params=kind.build)
    client.create_collection(COLLECTION, schema=schema, index_params=index, consistency_level="Strong")


def _searcher(client: Any, catalog: Catalog, kind: MilvusKind, filtered: bool) -> Any:
    def search(j: int) -> list[int]:
        # The filter value is a fixed token here; the gateway's backend escapes every value it sends.
        expr = f'category == "{catalog.category(j)}"' if filtered else ""
        hits = client.search(
            COLLECTION, data=[catalog.queries[j]], anns_field="image", limit=K, filter=expr,
            search_params={"metric_type": "L2", "params": kind.search}, output_fields=["category"],
        )[0]  # fmt: skip
        return [int(str(h["id"])[1:]) for h in hits]

    return search


def bench_milvus(catalog: Catalog, kind: MilvusKind, directory: Path, n_queries: int) -> Row:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind.index_type.lower()}-{catalog.size}.db"
    me = psutil.Process()
    gc.collect()
    rss0 = me.memory_info().rss
    client = _client(path)
    try:
        _create(client, kind)
        bar = tqdm(
            total=catalog.size, desc=f"milvus-lite {kind.name} {catalog.size:,}", unit="item", leave=False
        )
        t0 = time.perf_counter()
        for start in range(0, catalog.size, BATCH):
            stop = min(catalog.size, start + BATCH)
            rows = [
                {"id": f"p{i}", **{s: catalog.vectors[s][i] for s in SPACES}, "category": catalog.category(i),
                 "price": float(i % 1000), "title": f"product {i}"}
                for i in range(start, stop)
            ]  # fmt: skip
            client.upsert(COLLECTION, rows)
            bar.update(stop - start)
        ingest_s = time.perf_counter() - t0
        bar.close()
        t0 = time.perf_counter()
        client.flush(COLLECTION)
        build_s = time.perf_counter() - t0
        gc.collect()
        rss = (me.memory_info().rss - rss0) / 2**20
        p50, p95, found = timed_queries(_searcher(client, catalog, kind, False), n_queries)
        fp50, fp95, ffound = timed_queries(_searcher(client, catalog, kind, True), n_queries)
        client.close()
        t0 = time.perf_counter()
        client = _client(path)  # a reopened collection comes back released: load it, then search
        client.load_collection(COLLECTION)
        first = _searcher(client, catalog, kind, False)(0)
        restart_s = time.perf_counter() - t0
        assert first == found[0], "the reopened collection answers differently"
    finally:
        client.close()
        shutil.rmtree(directory, ignore_errors=True)
    return Row(
        "milvus-lite", kind.name, catalog.size, rss, catalog.size / ingest_s, ingest_s, build_s, 0.0,
        restart_s, n_queries, p50, p95, recall_at(found, catalog.truth[:n_queries], K),
        fp50, fp95, recall_at(ffound, catalog.filtered_truth[:n_queries], K),
    )  # fmt: skip
