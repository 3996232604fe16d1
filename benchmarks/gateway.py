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
retrieval per query on both sides. Each configuration runs every system in ``--rounds`` interleaved rounds,
the order rotated, so background load lands on all of them alike; nothing else of this benchmark runs
meanwhile. ``--baseline`` adds a second stack with other CPU layouts (before/after ratios from one run).
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

from demo.catalog import generate_catalog, generate_queries
from vitrine.catalog import Product
from vitrine.contracts import CLIP_CONTEXT_LENGTH, EMBED_DIM, RERANK_MAX_LENGTH
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table


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
    client_cpu: float = float("nan")
    """Share of the machine's CPU this process used while the row was timed (the load generator's, for
    the gateway rows; the naive pipeline's own compute, for its rows)."""


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


@dataclass
class Run:
    """One timed closed-loop run of one system: latencies (s), wall time (s), this process's CPU (s)."""

    latencies: list[float]
    wall: float
    cpu: float

    def add(self, other: Run) -> Run:
        return Run(self.latencies + other.latencies, self.wall + other.wall, self.cpu + other.cpu)

    def row(self, system: str, depth: int, concurrency: int) -> Row:
        lat = self.latencies
        return Row(
            system, depth, concurrency, len(lat), percentile(lat, 0.5) * 1e3, percentile(lat, 0.95) * 1e3,
            statistics.fmean(lat) * 1e3, len(lat) / self.wall, self.cpu / (self.wall * (os.cpu_count() or 1)),
        )  # fmt: skip


def run_naive(
    naive: NaivePipeline, queries: Sequence[str], depth: int, concurrency: int, requests: int, top_k: int
) -> tuple[Run, dict[str, list[str]]]:
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
        t0, cpu0 = time.perf_counter(), time.process_time()
        latencies = list(pool.map(one, range(requests)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Run(latencies, wall, cpu), results


async def _run_stack_async(
    address: str, queries: Sequence[str], depth: int, concurrency: int, requests: int, top_k: int
) -> tuple[Run, dict[str, list[str]]]:
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

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Run(latencies, wall, cpu), results


def load_index(address: str, collection: str, vectors: np.ndarray, products: Sequence[Product]) -> None:
    """Writes vectors, attributes and payload exactly as the gateway's ingestion would, minus embedding."""
    from gateway.index_client import IndexRetriever
    from gateway.pipeline import PipelineSettings
    from gateway.types import Record
    from vitrine.items import SPACES

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
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds per configuration (requests split among them)",
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="naive pipeline threads")
    parser.add_argument(
        "--baseline", nargs="*", default=None, metavar="MODEL=INSTANCESxTHREADS[u]",
        help="also run a second stack, 'baseline', with these CPU layouts (benchmarks.triton's syntax) and "
        "--baseline-rerank-parts: before/after ratios from one run",
    )  # fmt: skip
    parser.add_argument("--baseline-rerank-parts", type=int, default=1)
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from benchmarks.triton import parse_layout
    from gateway.config import GatewayConfig
    from gateway.pipeline import PipelineSettings
    from gateway.types import TextMatch
    from index_service.config import IndexServiceConfig
    from model_repository.render import RenderOptions
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

    def make_stack(name: str, render: RenderOptions, parts: int) -> Stack:
        return Stack(
            work / name,
            artifacts,
            index=IndexServiceConfig(port=0, data_dir=str(work / name / f"index-{os.getpid()}")),
            gateway=GatewayConfig(
                port=0,
                pipeline=PipelineSettings(
                    collection=collection, text_match=TextMatch.IMAGE, rerank_parts=parts
                ),
                max_in_flight=256,
            ),
            render=render,
        )

    stacks = {"gateway": make_stack("gateway", RenderOptions(), PipelineSettings().rerank_parts)}
    if args.baseline is not None:
        layouts = tuple(parse_layout(text) for text in args.baseline)
        stacks["baseline"] = make_stack(
            "baseline", RenderOptions(layouts=layouts), args.baseline_rerank_parts
        )
    rows: list[Row] = []
    agreement: dict[int, float] = {}
    print(f"hardware: {hardware()}; weights: {weights}; {len(products)} products", file=sys.stderr)
    try:
        addresses = {}
        for name, stack in stacks.items():
            stack.start_triton()
            index = stack.start_index()
            load_index(index.address, collection, vectors, products)
            addresses[name] = stack.start_gateway().address
        naive = NaivePipeline(artifacts, vectors, products, args.threads)
        configs = [(d, c) for d in args.depths for c in args.concurrency]
        per_round = max(1, args.requests // args.rounds)
        for depth, conc in tqdm(configs, desc="configurations", file=sys.stderr):
            # Every system runs each round, the order rotated, so background load lands on all alike.
            systems = [*addresses, "naive"]
            runs: dict[str, Run] = {name: Run([], 0.0, 0.0) for name in systems}
            ids_by: dict[str, dict[str, list[str]]] = {}
            for r in range(args.rounds):
                for name in systems[r % len(systems) :] + systems[: r % len(systems)]:
                    if name == "naive":
                        run, ids = run_naive(naive, queries, depth, conc, per_round, args.top_k)
                    else:
                        run, ids = asyncio.run(
                            _run_stack_async(addresses[name], queries, depth, conc, per_round, args.top_k)
                        )
                    runs[name] = runs[name].add(run)
                    ids_by.setdefault(name, ids)
            rows += [runs[name].row(name, depth, conc) for name in systems]
            stack_ids, naive_ids = ids_by["gateway"], ids_by["naive"]
            common = [q for q in stack_ids if q in naive_ids]
            overlap = [len(set(stack_ids[q]) & set(naive_ids[q])) / max(len(naive_ids[q]), 1) for q in common]
            agreement[depth] = statistics.fmean(overlap) if overlap else float("nan")
    finally:
        for stack in stacks.values():
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
        f"weights: {', '.join(f'{k}={v}' for k, v in weights.items())}; products: {n}; text search, top 10; "
        "gRPC client CPU = the load generator's share of the machine during the gateway runs",
        "",
    ]
    cells = []
    for (system, depth, conc), g in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if system != "gateway":
            continue
        nv = by_key[("naive", depth, conc)]
        base = by_key.get(("baseline", depth, conc))
        cells.append((
            depth, conc, f"{g.p50_ms:.0f} / {g.p95_ms:.0f}",
            *((f"{base.p50_ms:.0f} / {base.p95_ms:.0f}",) if base else ()),
            f"{nv.p50_ms:.0f} / {nv.p95_ms:.0f}", f"{g.throughput_rps:.2f}",
            *((f"{base.throughput_rps:.2f}",) if base else ()),
            f"{nv.throughput_rps:.2f}", f"{nv.p95_ms / g.p95_ms:.2f}x",
            f"{g.throughput_rps / nv.throughput_rps:.2f}x",
            *((f"{g.throughput_rps / base.throughput_rps:.2f}x", f"{g.p95_ms / base.p95_ms:.2f}x")
              if base else ()),
            f"{100 * g.client_cpu:.0f}%",
        ))  # fmt: skip
    has_base = any(r.system == "baseline" for r in rows)
    lines += markdown_table(
        ("re-rank", "conc", "gateway p50 / p95 ms", *(("baseline p50 / p95 ms",) if has_base else ()),
         "naive p50 / p95 ms", "gateway rps", *(("baseline rps",) if has_base else ()), "naive rps",
         "p95 naive/gateway", "rps gateway/naive",
         *(("rps gateway/baseline", "p95 gateway/baseline") if has_base else ()), "gRPC client CPU"),
        cells,
    )  # fmt: skip
    scaling = []
    for (system, depth, conc), row in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        low = min(c for s, d, c in by_key if (s, d) == (system, depth))
        base = by_key[(system, depth, low)]
        if conc != low:
            scaling.append((
                system, depth, f"{low} -> {conc}", f"{row.throughput_rps / base.throughput_rps:.2f}x",
                f"{row.p95_ms / base.p50_ms:.2f}x",
            ))  # fmt: skip
    if scaling:
        lines += [
            "",
            *markdown_table(
                ("system", "re-rank", "concurrency", "throughput vs lowest", "p95 / p50 at lowest"), scaling
            ),
        ]
    lines.append("")
    lines.append(
        "top-10 agreement gateway vs naive (same queries): "
        + ", ".join(f"re-rank {d}: {a:.2f}" for d, a in sorted(agreement.items()))
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
