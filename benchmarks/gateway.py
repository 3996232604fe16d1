"""``python -m benchmarks.gateway``: the gateway stack against a single-process Python pipeline, side by side.

Both answer the same text queries over the same catalog with the same weights (the export's
checkpoints for the naive side, the ONNX graphs exported from them for Triton):

- naive: transformers ``CLIPModel`` text tower -> FAISS ``IndexFlatIP`` -> ``BertForSequenceClassification``
  on (query, title + description) pairs, all called directly in one process, as one would write it
  first; concurrency is a thread pool calling that function (PyTorch releases the GIL).
- stack: gRPC client -> gateway process -> Triton (embed_text, rerank ensembles) and the index service
  (Flat, inner product) -> gateway -> client.

The index side holds seeded random unit vectors for every product (no image is embedded: a text search
needs only the vectors to exist, and flat search cost does not depend on their values), the same vectors
in FAISS and in the index service. Text matches the image space only (``--text-match image``), one
retrieval per query on both sides. Each configuration runs both systems back to back; nothing else of
this benchmark runs meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.report import describe_hardware, table
from demo.catalog import generate_catalog, generate_queries
from vitrine.catalog import Product
from vitrine.contracts import CLIP_CONTEXT_LENGTH, EMBED_DIM, RERANK_MAX_LENGTH


@dataclass
class Row:
    system: str
    depth: int
    concurrency: int
    requests: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    throughput_rps: float


class NaivePipeline:
    """The straightforward single-process pipeline, written the way the libraries' docs suggest."""

    def __init__(
        self, artifacts: Path, vectors: np.ndarray, products: Sequence[Product], threads: int
    ) -> None:
        import faiss
        import torch
        from transformers import AutoTokenizer, BertForSequenceClassification, CLIPModel, CLIPTokenizer

        torch.set_num_threads(threads)
        root = artifacts / "checkpoints"
        self.torch = torch
        self.clip = CLIPModel.from_pretrained(root / "clip").eval()
        self.clip_tok = CLIPTokenizer.from_pretrained(root / "clip")
        self.cross = BertForSequenceClassification.from_pretrained(root / "cross_encoder").eval()
        self.pair_tok = AutoTokenizer.from_pretrained(root / "cross_encoder")
        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexFlatIP(EMBED_DIM)
        self.index.add(vectors)
        self.products = products

    def search(self, query: str, top_k: int, depth: int) -> list[str]:
        torch = self.torch
        with torch.inference_mode():
            enc = self.clip_tok(
                [query], padding=True, truncation=True, max_length=CLIP_CONTEXT_LENGTH, return_tensors="pt"
            )
            out = self.clip.get_text_features(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            vec = torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)
            _, ids = self.index.search(vec, depth)
            candidates = [self.products[i] for i in ids[0] if i >= 0]
            pairs = self.pair_tok(
                [query] * len(candidates),
                [p.passage() for p in candidates],
                padding=True,
                truncation="only_second",
                max_length=RERANK_MAX_LENGTH,
                return_tensors="pt",
            )
            scores = self.cross(**pairs).logits[:, 0].numpy()
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [candidates[i].id for i in order]


def _row(system: str, depth: int, concurrency: int, latencies: list[float], wall: float) -> Row:
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    return Row(
        system, depth, concurrency, len(lat), statistics.median(lat) * 1e3, p95 * 1e3,
        statistics.fmean(lat) * 1e3, len(lat) / wall,
    )  # fmt: skip


def run_naive(
    naive: NaivePipeline, queries: Sequence[str], depth: int, concurrency: int, requests: int, top_k: int
) -> tuple[Row, dict[str, list[str]]]:
    results: dict[str, list[str]] = {}
    lock = threading.Lock()

    def one(i: int) -> float:
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        ids = naive.search(q, top_k, depth)
        dt = time.perf_counter() - t0
        with lock:
            results.setdefault(q, ids)
        return dt

    for i in range(min(3, requests)):
        one(i)
    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    return _row("naive", depth, concurrency, latencies, wall), results


async def _run_stack_async(
    address: str, queries: Sequence[str], depth: int, concurrency: int, requests: int, top_k: int
) -> tuple[Row, dict[str, list[str]]]:
    import grpc

    from vitrine.gateway.v1 import gateway_pb2 as pb
    from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

    results: dict[str, list[str]] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ProductSearchStub(channel)

        async def one(i: int) -> float:
            q = queries[i % len(queries)]
            req = pb.SearchRequest(
                text=q, top_k=top_k, rerank=True, rerank_depth=depth, text_match=pb.TEXT_MATCH_IMAGE
            )
            t0 = time.perf_counter()
            resp = await stub.Search(req, timeout=120)
            dt = time.perf_counter() - t0
            results.setdefault(q, [h.product.id for h in resp.hits])
            return dt

        for i in range(min(3, requests)):
            await one(i)
        counter = iter(range(requests))
        latencies: list[float] = []

        async def worker() -> None:
            for i in counter:
                latencies.append(await one(i))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return _row("gateway", depth, concurrency, latencies, wall), results


def load_index(address: str, collection: str, vectors: np.ndarray, products: Sequence[Product]) -> None:
    """Writes vectors, attributes and payload exactly as the gateway's ingestion would, minus embedding."""
    from gateway.index_client import IndexRetriever
    from gateway.items import SPACES
    from gateway.pipeline import PipelineSettings, Record

    async def go() -> None:
        settings = PipelineSettings(collection=collection)
        retriever = IndexRetriever(address, collection, settings.filter_attributes)
        try:
            for start in range(0, len(products), 500):
                batch = [
                    Record(p, dict.fromkeys(SPACES, vectors[start + j]))
                    for j, p in enumerate(products[start : start + 500])
                ]
                await retriever.upsert(batch, timeout=120)
        finally:
            await retriever.close()

    asyncio.run(go())


def hardware() -> str:
    return describe_hardware()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__)
    parser.add_argument("--artifacts", default="var/artifacts", help="export output (manifest.json)")
    parser.add_argument("--work", default="var/bench-gateway", help="scratch directory (repository, index)")
    parser.add_argument("--products", type=int, default=10_000, help="catalog size (vectors indexed)")
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 50], help="re-rank depths")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--requests", type=int, default=40, help="timed requests per configuration and system"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="naive pipeline threads")
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from gateway.config import GatewayConfig
    from gateway.pipeline import PipelineSettings, TextMatch
    from index_service.config import IndexServiceConfig
    from operations.stack import Stack

    artifacts, work = Path(args.artifacts).resolve(), Path(args.work).resolve()
    manifest = json.loads((artifacts / "manifest.json").read_text())
    weights = {name: m["weights"] for name, m in manifest["models"].items()}
    products = [p for p, _ in generate_catalog(args.products, seed=1)]
    queries = [q.text for q in generate_queries(products, 40, seed=1)]
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((len(products), EMBED_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    work.mkdir(parents=True, exist_ok=True)
    collection = "bench"
    stack = Stack(
        work,
        artifacts,
        index=IndexServiceConfig(port=0, data_dir=str(work / f"index-{os.getpid()}")),
        gateway=GatewayConfig(
            port=0,
            pipeline=PipelineSettings(collection=collection, text_match=TextMatch.IMAGE),
            max_in_flight=256,
        ),
    )
    rows: list[Row] = []
    agreement: dict[int, float] = {}
    print(f"hardware: {hardware()}; weights: {weights}; {len(products)} products", file=sys.stderr)
    try:
        stack.start_triton()
        index = stack.start_index()
        load_index(index.address, collection, vectors, products)
        gateway = stack.start_gateway()
        naive = NaivePipeline(artifacts, vectors, products, args.threads)
        configs = [(d, c) for d in args.depths for c in args.concurrency]
        for depth, conc in tqdm(configs, desc="configurations", file=sys.stderr):
            stack_row, stack_ids = asyncio.run(
                _run_stack_async(gateway.address, queries, depth, conc, args.requests, args.top_k)
            )
            naive_row, naive_ids = run_naive(naive, queries, depth, conc, args.requests, args.top_k)
            rows += [stack_row, naive_row]
            common = [q for q in stack_ids if q in naive_ids]
            overlap = [len(set(stack_ids[q]) & set(naive_ids[q])) / max(len(naive_ids[q]), 1) for q in common]
            agreement[depth] = statistics.fmean(overlap) if overlap else float("nan")
    finally:
        stack.stop()

    print(render(rows, agreement, weights, len(products)))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "agreement": agreement}, indent=2)
        )
    return 0


def render(rows: Sequence[Row], agreement: dict[int, float], weights: dict[str, str], n: int) -> str:
    by_key = {(r.system, r.depth, r.concurrency): r for r in rows}
    lines = [
        f"hardware: {hardware()}",
        f"weights: {', '.join(f'{k}={v}' for k, v in weights.items())}; products: {n}; text search, top 10",
        "",
    ]
    cells = []
    for (system, depth, conc), g in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if system != "gateway":
            continue
        nv = by_key[("naive", depth, conc)]
        cells.append((
            depth, conc, f"{g.p50_ms:.0f} / {g.p95_ms:.0f}", f"{nv.p50_ms:.0f} / {nv.p95_ms:.0f}",
            f"{g.throughput_rps:.2f}", f"{nv.throughput_rps:.2f}", f"{nv.p95_ms / g.p95_ms:.2f}x",
            f"{g.throughput_rps / nv.throughput_rps:.2f}x",
        ))  # fmt: skip
    lines += table(
        ("re-rank", "conc", "gateway p50 / p95 ms", "naive p50 / p95 ms", "gateway rps", "naive rps",
         "p95 naive/gateway", "rps gateway/naive"),
        cells,
    )  # fmt: skip
    lines.append("")
    lines.append(
        "top-10 agreement gateway vs naive (same queries): "
        + ", ".join(f"re-rank {d}: {a:.2f}" for d, a in sorted(agreement.items()))
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
