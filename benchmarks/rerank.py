"""``python -m benchmarks.rerank``: what one re-rank request costs the cross-encoder, by passage policy and
length-sorted sub-batches, in-process (the served model's own runtime code, no Triton, no network).

One request is a query against ``--depth`` passages. Two passage sets from the seeded demo catalog:
``demo`` (title + its description, ~19 words, what the demo stack serves) and ``long`` (title + four
products' descriptions, ~75 words, shaped like a real shop's copy), each cut by the passage policy
(``Product.passage(words)``, 0 = whole). Every configuration runs the same requests interleaved over
``--rounds`` rounds, on ``model_repository.runtime.run_batched`` exactly as the Python-backend model calls
it; ratios are against the whole passage without sorting, from the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from demo.catalog import generate_catalog, generate_queries
from model_repository.runtime import LengthSorting, make_session, run_batched
from vitrine.catalog import Product
from vitrine.contracts import Tensor
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table
from vitrine.tokenization import PairTokenizer


def _passage_sets(seed: int) -> dict[str, list[Product]]:
    products = [p for p, _ in generate_catalog(400, seed=seed)]
    rng = random.Random(seed)
    long = [
        Product(p.id, p.title, " ".join(q.description for q in [p, *rng.sample(products, 3)]))
        for p in products
    ]
    return {"demo": products, "long": long}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--requests", type=int, default=6, help="requests per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words", default="0,32,16", help="passage policies (description words; 0 = all)")
    parser.add_argument(
        "--rows", default="0,8,16,32", help="sub-batch rows (0 = one run, padded to the longest)"
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    weights = manifest["models"]["cross_encoder"].get("weights", "?")
    session = make_session(args.artifacts / "cross_encoder" / "model.onnx", threads=args.threads)
    tokenizer = PairTokenizer.from_file(args.artifacts / "tokenizers" / "cross_encoder" / "tokenizer.json")
    sets = _passage_sets(args.seed)
    queries = [q.text for q in generate_queries(sets["demo"], 64, seed=args.seed)]
    rng = random.Random(args.seed)
    picks = [
        (rng.choice(queries), rng.sample(range(len(sets["demo"])), args.depth)) for _ in range(args.requests)
    ]
    words = [int(w) for w in args.words.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    configs = [(name, w, r) for name in sets for w in words for r in rows]

    feeds: dict[tuple[str, int], list[dict[str, np.ndarray]]] = {}
    tokens: dict[tuple[str, int], float] = {}
    for name, products in sets.items():
        for w in words:
            batch_feeds, real = [], []
            for query, idx in picks:
                b = tokenizer.encode(query, [products[i].passage(w) for i in idx])
                mask = np.asarray(b.attention_mask, dtype=np.int64)
                real.append(float(mask.sum(1).mean()))
                batch_feeds.append(
                    {
                        Tensor.INPUT_IDS.value: np.asarray(b.input_ids, dtype=np.int64),
                        Tensor.ATTENTION_MASK.value: mask,
                        Tensor.TOKEN_TYPE_IDS.value: np.asarray(b.token_type_ids, dtype=np.int64),
                    }
                )
            feeds[(name, w)] = batch_feeds
            tokens[(name, w)] = float(np.mean(real))

    times: dict[tuple[str, int, int], list[float]] = {c: [] for c in configs}
    outputs = [Tensor.LOGITS.value]
    for feed in feeds[(next(iter(sets)), words[0])][:1]:
        run_batched(session, [feed], outputs)  # warm-up: the first run allocates
    for _ in range(args.rounds):
        for name, w, r in configs:
            sorting = LengthSorting(Tensor.ATTENTION_MASK.value, r) if r > 0 else None
            for feed in feeds[(name, w)]:
                t0 = time.perf_counter()
                run_batched(session, [feed], outputs, sorting)
                times[(name, w, r)].append(1000 * (time.perf_counter() - t0))

    lines = [
        f"Hardware: {describe_hardware()}; cross-encoder {manifest.get('size', '?')} size, "
        f"{weights} weights; {args.depth} pairs per request, {args.requests} requests x {args.rounds} "
        "interleaved rounds per row; "
        f"onnxruntime threads {args.threads or 'all cores'}.",
        "",
    ]
    rows_out = []
    for name, w, r in configs:
        base = percentile(times[(name, 0, 0)], 0.5) if (name, 0, 0) in times else float("nan")
        p50 = percentile(times[(name, w, r)], 0.5)
        rows_out.append(
            [
                name,
                "all" if w == 0 else str(w),
                f"{tokens[(name, w)]:.0f}",
                "off" if r == 0 else str(r),
                f"{p50:.1f}",
                f"{percentile(times[(name, w, r)], 0.95):.1f}",
                f"{args.depth * 1000 / p50:.0f}",
                f"{base / p50:.2f}x",
            ]
        )
    lines += markdown_table(
        ["passages", "description words", "mean pair tokens", "sorted sub-batch", "p50 ms", "p95 ms",
         "pairs/s", "vs whole, unsorted"],
        rows_out,
        "llrrrrrr",
    )  # fmt: skip
    report = "\n".join(lines) + "\n"
    print(report)
    if args.json:
        args.json.write_text(json.dumps({f"{n}/{w}/{r}": v for (n, w, r), v in times.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
