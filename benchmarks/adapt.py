"""Adaptation benchmark: every method on both data sets, one run, the tables docs/BENCHMARKS.md shows.

``python -m benchmarks.adapt`` trains (``vitrine adapt train``'s defaults: zero-shot, naive heads and
residual adapters on the demo catalog and Fashion-MNIST, plus the re-ranking head), evaluates on the test
splits with bootstrap intervals, exports the catalog adapter as encoder version 2 fused into the towers
(validated against PyTorch) and measures what the head costs fused and as a separate step.
``--reuse`` evaluates heads an earlier run trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapt.run import CATALOG, RERANKER, AdaptConfig, evaluate_all, load_heads, train_all, trained_reranker
from adapt.serving import export_version
from vitrine.measure import describe_hardware
from vitrine.tables import markdown_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt", description=__doc__)
    ap.add_argument("--artifacts", default="var/artifacts")
    ap.add_argument("--out", default="var/adapt")
    ap.add_argument("--reuse", action="store_true", help="evaluate the heads of an earlier run")
    ap.add_argument("--version", type=int, default=2, help="encoder version the adapter is exported as")
    ap.add_argument("--skip-eval", action="store_true", help="with --reuse: the tables of the last eval")
    ns = ap.parse_args(argv)
    cfg = AdaptConfig(artifacts=Path(ns.artifacts), out=Path(ns.out), progress=False)
    manifest = json.loads((cfg.out / "manifest.json").read_text()) if ns.reuse else train_all(cfg)
    if not (ns.reuse and ns.skip_eval):
        evaluate_all(cfg)
    pair, spec = load_heads(cfg.out / CATALOG / "residual.pt")
    source = {"heads": "catalog residual", **spec.to_dict()}
    served = export_version(pair, cfg.artifacts, str(ns.version), source, cross_encoder=trained_reranker(cfg))

    lines = [
        f"Hardware: {describe_hardware()}. Encoder weights: {manifest['weights']} "
        f"(export {manifest['encoders_sha']}); heads trained here.",
        "",
        (cfg.out / "report.md").read_text(),
        "#### Training (validation picks the mixing ratio; seconds on this host)",
        "",
    ]
    rows = []
    for name, d in manifest["datasets"].items():
        runs = d["runs"]
        res, naive = runs["residual adapter"], runs["naive heads"]
        grid = ", ".join(f"a={a}: {g['val']:.3f}" for a, g in res["alpha_grid"].items())
        seconds = sum(g["train_seconds"] for g in res["alpha_grid"].values()) + naive["train_seconds"]
        rows.append(
            [
                name,
                d["validation_metric"],
                f"{runs['zero-shot']['val']:.3f}",
                f"{naive['val']:.3f}",
                grid,
                res["chosen_alpha"],
                d["feature_seconds"],
                round(seconds, 1),
            ]
        )
    lines += markdown_table(
        [
            "data",
            "val metric",
            "zero-shot",
            "naive",
            "residual by ratio",
            "chosen a",
            "features s",
            "training s",
        ],
        rows,
    )
    if RERANKER in manifest["datasets"].get(CATALOG, {}).get("runs", {}):
        r = manifest["datasets"][CATALOG]["runs"][RERANKER]
        lines += [
            "",
            f"Cross-encoder: {r['queries']} training queries, {r['pairs']} pairs, "
            f"{r['spec']['rerank_layers']} block(s) + head trained for {r['spec']['rerank_epochs']} epochs; "
            f"frozen blocks' pass {r['feature_seconds']} s, total {r['seconds']} s; "
            f"loss by epoch {r['losses']}.",
        ]
    lines += ["", "#### Serving the adapter (batch 1, ms, median of 5, one thread)", ""]
    headers = ["encoder", "min cosine vs PyTorch", "tower", "fused", "tower, then head", "head alone"]
    served_rows = []
    for m, e in served["models"].items():
        if "cost" not in e:
            continue
        c = e["cost"]
        served_rows.append(
            [m, f"{e['validation']['min_cosine']:.6f}", c["tower_ms"], c["fused_ms"],
             c["tower_then_head_ms"], c["head_alone_ms"]]
        )  # fmt: skip
    lines += markdown_table(headers, served_rows)
    ce = served["models"].get("cross_encoder")
    if ce:
        v = ce["validation"]
        lines += [
            "",
            f"Trained cross-encoder served as cross_encoder version {ns.version} "
            f"({ce['trained_blocks']} block(s) + head trained): max |logit diff| vs PyTorch "
            f"{v['max_abs_diff']:.1e} on {v['pools']} probe pools, same order: {v['same_order']}.",
        ]
    print("\n".join(lines))
    (cfg.out / "benchmark.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
