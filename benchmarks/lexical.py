"""Lexical tokenizers measured: ``python -m benchmarks.lexical`` (``make bench-lexical``).

The index's lexical space (BM25 with SQLite FTS5) can split text three ways: ``unicode61`` words,
``porter`` stems of them, or ``trigram`` substrings (typo and substring tolerance). Each is built here
over the demo catalog's products exactly as the gateway writes them (``vitrine.items``), in the real
index engine (in process: its storage, FTS5 tables and search), and scored on labelled queries with
NDCG@10 and recall@10 and their bootstrap intervals (``vitrine.ranking``), with the last query word
matched as a prefix and without.

The default is chosen on **validation** queries only: another catalog (seed 1), the generator's queries
over it, and the same queries with a seeded typo in one word of five letters or more (a letter
dropped, doubled, swapped with the next or replaced), since shoppers misspell; the tokenizer with the
best mean NDCG@10 over the two, without the prefix option, becomes the default. The demo catalog's own
queries (``queries.jsonl``, seed 0) and the reworded held-out set (``demo.reworded``: synonyms,
misspellings, brands, usage phrases; split by wording) are reported beside, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from demo.catalog import generate_catalog, generate_queries
from demo.reworded import QUERIES as REWORDED
from demo.reworded import label
from index_service import codec, convert
from index_service.engine import Engine
from index_service.model import LexicalSpec, LexicalTokenizer, Metric, VectorSpec
from vitrine import items
from vitrine.catalog import LabelledQuery, Product
from vitrine.measure import describe_hardware, percentile
from vitrine.ranking import Estimate, bootstrap, ndcg_at, recall_at
from vitrine.tables import markdown_table

K = 10
ATTRIBUTES = ("color", "material", "pattern")
TOKENIZERS = {
    "unicode61": LexicalTokenizer.UNICODE61,
    "porter": LexicalTokenizer.PORTER,
    "trigram": LexicalTokenizer.TRIGRAM,
}


def _catalog(engine: Engine, name: str, products: Sequence[Product], tokenizer: LexicalTokenizer) -> None:
    """The gateway's catalog collection with one tiny vector space (vectors play no part here) and the
    lexical space with ``tokenizer``."""
    spec = codec.spec_of(items.collection_spec(name, ATTRIBUTES))
    lexical = codec.lexical_spec_of(items.lexical_spec())
    spec = replace(
        spec,
        vectors=(VectorSpec("v", 1, Metric.L2),),
        lexical=(LexicalSpec(lexical.name, tokenizer, lexical.fields),),
    )
    engine.registry.create(spec)
    zero = {"v": np.zeros(1, dtype=np.float32)}
    for start in range(0, len(products), 1000):
        chunk = products[start : start + 1000]
        engine.writes.upsert(name, [convert.item_of(items.item_of(p, zero, ATTRIBUTES)) for p in chunk])


def misspelt(queries: Sequence[LabelledQuery], seed: int = 0) -> list[LabelledQuery]:
    """Each query with a seeded typo in one of its words of five letters or more; the labels stay."""
    rng = random.Random(seed)

    def typo(word: str) -> str:
        if len(word) < 5:
            return word
        i = rng.randrange(1, len(word) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            return word[:i] + word[i + 1 :]
        if kind == 1:
            return word[:i] + word[i] + word[i:]
        if kind == 2:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        return word[:i] + rng.choice("aeioulnrst") + word[i + 1 :]

    out = []
    for q in queries:
        words = q.text.split()
        long = [i for i, w in enumerate(words) if len(w) >= 5]
        if long:
            i = rng.choice(long)
            words[i] = typo(words[i])
        out.append(replace(q, text=" ".join(words)))
    return out


def _score(
    engine: Engine, name: str, queries: Sequence[LabelledQuery], prefix: bool
) -> tuple[Estimate, Estimate, list[float]]:
    ndcg, recall, ms = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        (hits,) = engine.reads.search_text(name, items.LEXICAL, [q.text], K, None, prefix)
        ms.append((time.perf_counter() - t0) * 1000.0)
        ranked = [h.id for h in hits]
        ndcg.append(ndcg_at(ranked, q.relevant, K))
        recall.append(recall_at(ranked, q.relevant, K))
    return bootstrap(ndcg), bootstrap(recall), ms


def latency_at(n: int, n_queries: int = 30) -> dict[str, float]:
    """Median ms per query of each tokenizer over a catalog of ``n`` products (no filter, k=10): an OR
    of words scores every product that holds any of them, so the cost grows with the catalog."""
    products = [p for p, _ in generate_catalog(n, seed=2)]
    texts = [q.text for q in generate_queries(products, n_queries, seed=2)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(tmp)
        engine.load()
        for label_, tokenizer in TOKENIZERS.items():
            _catalog(engine, label_, products, tokenizer)
            ms = []
            for text in texts:
                t0 = time.perf_counter()
                engine.reads.search_text(label_, items.LEXICAL, [text], K, None, False)
                ms.append((time.perf_counter() - t0) * 1000.0)
            out[label_] = round(percentile(ms, 0.5), 2)
            print(f"{label_}: {n} products, p50 {out[label_]} ms per query")
        engine.close()
    return out


def run(n: int, n_queries: int) -> dict[str, Any]:
    validation_products = [p for p, _ in generate_catalog(n, seed=1)]
    demo_products = [p for p, _ in generate_catalog(n, seed=0)]
    validation = generate_queries(validation_products, n_queries, seed=1)
    sets: dict[str, tuple[list[Product], list[LabelledQuery]]] = {
        "validation": (validation_products, validation),
        "validation, misspelt": (validation_products, misspelt(validation)),
        "demo queries": (demo_products, generate_queries(demo_products, 50, seed=0)),
        "reworded": (demo_products, label(demo_products)),
    }
    for wording in ("synonym", "misspelling", "brand", "usage"):
        chosen = [q for q in REWORDED if q.kind_of_wording == wording]
        sets[f"reworded: {wording}"] = (demo_products, label(demo_products, chosen))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(tmp)
        engine.load()
        built: dict[tuple[str, int], str] = {}
        for label_, tokenizer in TOKENIZERS.items():
            for catalog_seed, products in ((1, validation_products), (0, demo_products)):
                name = f"{label_}-{catalog_seed}"
                t0 = time.perf_counter()
                _catalog(engine, name, products, tokenizer)
                built[label_, catalog_seed] = name
                build_s = time.perf_counter() - t0
                print(f"{name}: {len(products)} products indexed in {build_s:.1f} s")
            for prefix in (False, True):
                row: dict[str, Any] = {"tokenizer": label_, "prefix": prefix, "build_s": round(build_s, 2)}
                for set_name, (products, queries) in sets.items():
                    seed = 1 if products is validation_products else 0
                    ndcg, recall, ms = _score(engine, built[label_, seed], queries, prefix)
                    row[set_name] = {
                        "ndcg": ndcg.to_dict(),
                        "recall": recall.to_dict(),
                        "queries": len(queries),
                    }
                    row.setdefault("ms", []).extend(ms)
                times = row.pop("ms")
                row["p50_ms"] = round(percentile(times, 0.5), 3)
                rows.append(row)
        engine.close()
    best = max(
        (r for r in rows if not r["prefix"]),
        key=lambda r: (r["validation"]["ndcg"]["mean"] + r["validation, misspelt"]["ndcg"]["mean"]) / 2,
    )
    return {
        "machine": describe_hardware(),
        "validation_example": sets["validation, misspelt"][1][0].text,
        "products": n,
        "sets": {name: len(q) for name, (_, q) in sets.items()},
        "rows": rows,
        "chosen": {"tokenizer": best["tokenizer"], "prefix": best["prefix"]},
    }


def _cell(figures: dict[str, dict[str, float]], metric: str) -> str:
    e = figures[metric]
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    sets = list(result["sets"])
    headers = [
        "tokenizer",
        "last word as prefix",
        *(f"{s} NDCG@10" for s in sets),
        "recall@10 (validation)",
        "p50 ms/query",
        "index s",
    ]
    body = [
        [
            r["tokenizer"],
            "yes" if r["prefix"] else "no",
            *(_cell(r[s], "ndcg") for s in sets),
            _cell(r["validation"], "recall"),
            f"{r['p50_ms']:.2f}",
            f"{r['build_s']:.1f}",
        ]
        for r in rows
    ]
    lines = [
        f"Machine: {result['machine']}; {result['products']} products per catalog; no model weights "
        "(BM25 over the catalog's words); queries per set: "
        + ", ".join(f"{k} {v}" for k, v in result["sets"].items())
        + ".",
        "",
        *markdown_table(headers, body),
        "",
        "Chosen on the mean validation NDCG@10 (clean and misspelt, no prefix): "
        f"{result['chosen']['tokenizer']} (a misspelt validation query: {result['validation_example']!r}).",
    ]
    if "latency" in result:
        lat = result["latency"]
        lines.append(
            f"Median ms per query at {lat['products']} products (k=10, no filter): "
            + ", ".join(f"{k} {v}" for k, v in lat["p50_ms"].items())
            + "."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--products", type=int, default=2000, help="products per catalog (the demo's size)")
    parser.add_argument("--queries", type=int, default=100, help="validation queries")
    parser.add_argument(
        "--latency-products", type=int, default=20000, help="also time each tokenizer at this size (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench-lexical"), help="report and JSON here")
    args = parser.parse_args(argv)
    result = run(args.products, args.queries)
    if args.latency_products:
        result["latency"] = {"products": args.latency_products, "p50_ms": latency_at(args.latency_products)}
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
