"""``vitrine adapt train`` / ``eval``: every method on every data set by one command, one manifest.

Per data set: zero-shot (the served encoders alone), naive MLP heads (seed 004's baseline) and residual
adapters over a grid of mixing ratios, the ratio chosen by validation score (never by the test split).
``train`` writes the heads and ``manifest.json`` (data, parameters, validation metrics, durations);
``eval`` scores them on the test split with bootstrap intervals and writes ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapt import data, features, metrics, reranker
from adapt.features import Encoders, Features
from adapt.heads import AdapterPair, HeadKind
from adapt.reranker import RerankSpec
from adapt.train import TrainSpec, apply, class_prompt_vectors, train, validation_score
from vitrine import ranking
from vitrine.catalog import Product
from vitrine.tables import markdown_table

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CATALOG = "catalog"
FASHION_MNIST = "fashion-mnist"
ZERO_SHOT = "zero-shot"
NAIVE = "naive heads"
RESIDUAL = "residual adapter"
SHORT_PASSAGE_WORDS = 16
"""The shorter passage policy evaluated beside the default (``reranker.PASSAGE_WORDS``)."""
RERANKER = "re-ranker"
RERANKER_FILE = "reranker.pt"
"""The cross-encoder's trained blocks and head (``reranker.Encoder.trained_state``)."""


@dataclass(frozen=True)
class AdaptConfig:
    artifacts: Path = field(
        default=Path("var/artifacts"), metadata={"help": "export artifacts (ONNX, tokenizers)"}
    )
    out: Path = field(default=Path("var/adapt"), metadata={"help": "heads, feature cache, manifest, report"})
    datasets: tuple[str, ...] = field(
        default=(CATALOG, FASHION_MNIST), metadata={"help": "catalog and/or fashion-mnist (comma-separated)"}
    )
    catalog_size: int = field(default=2000, metadata={"help": "demo catalog products (split by product)"})
    fmnist_train: int = field(default=3000, metadata={"help": "Fashion-MNIST training images (subset)"})
    fmnist_test: int = field(default=2000, metadata={"help": "Fashion-MNIST test images (subset)"})
    alphas: tuple[float, ...] = field(
        default=(0.1, 0.2, 0.35, 0.5), metadata={"help": "residual mixing ratios tried; validation picks one"}
    )
    train: TrainSpec = field(default_factory=TrainSpec)
    rerank: bool = field(default=True, metadata={"help": "also train the cross-encoder (catalog)"})
    rerank_spec: RerankSpec = field(default_factory=RerankSpec)
    progress: bool = field(default=True, metadata={"help": "progress bars"})


def load_dataset(cfg: AdaptConfig, name: str) -> data.Dataset:
    if name == CATALOG:
        return data.catalog_pairs(cfg.catalog_size, seed=cfg.train.seed)
    if name == FASHION_MNIST:
        return data.fashion_mnist(cfg.fmnist_train, cfg.fmnist_test, seed=cfg.train.seed)
    raise ValueError(f"unknown data set {name!r}; choose {CATALOG} or {FASHION_MNIST}")


def split_features(cfg: AdaptConfig, enc: Encoders, ds: data.Dataset, name: str) -> dict[str, Features]:
    seed = cfg.train.seed
    return {
        part: features.cached(
            enc,
            f"{name}-{seed}-{part}",
            getattr(ds, part).images,
            getattr(ds, part).texts,
            getattr(ds, part).groups,
            cfg.out / "cache",
            progress=cfg.progress,
        )
        for part in ("train", "val", "test")
    }


def save_heads(model: AdapterPair, spec: TrainSpec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": spec.to_dict(), "state": model.state_dict()}, path)


def load_heads(path: Path) -> tuple[AdapterPair, TrainSpec]:
    saved = torch.load(path, weights_only=True)
    raw = dict(saved["spec"])
    raw["head"] = HeadKind(raw["head"])
    spec = TrainSpec(**raw)
    dim = int(saved["state"]["image.mlp.0.weight"].shape[1])
    model = AdapterPair(dim, spec.hidden, spec.head, spec.alpha, spec.temperature)
    model.load_state_dict(saved["state"])
    return model.eval(), spec


def train_all(cfg: AdaptConfig) -> dict[str, Any]:
    """Train every method on every data set; write heads and the manifest; return the manifest."""
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    enc = Encoders(cfg.artifacts)
    manifest: dict[str, Any] = {
        "artifacts": str(cfg.artifacts),
        "encoders_sha": enc.digest,
        "weights": enc.weights,
        "parameters": {**_plain(cfg), "train": cfg.train.to_dict()},
        "datasets": {},
    }
    for name in cfg.datasets:
        t0 = time.perf_counter()
        ds = load_dataset(cfg, name)
        feats = split_features(cfg, enc, ds, name)
        t_features = time.perf_counter() - t0
        runs: dict[str, Any] = {}
        naive = train(
            dataclasses.replace(cfg.train, head=HeadKind.NAIVE),
            feats["train"],
            feats["val"],
            ds.level,
            cfg.progress,
        )
        save_heads(naive.model, naive.spec, cfg.out / name / "naive.pt")
        runs[NAIVE] = _run_entry(naive)
        grid = {}
        best = None
        for alpha in cfg.alphas:
            result = train(
                dataclasses.replace(cfg.train, head=HeadKind.RESIDUAL, alpha=alpha),
                feats["train"],
                feats["val"],
                ds.level,
                cfg.progress,
            )
            grid[str(alpha)] = _run_entry(result)
            if best is None or result.val_metric > best.val_metric:
                best = result
        assert best is not None
        save_heads(best.model, best.spec, cfg.out / name / "residual.pt")
        runs[RESIDUAL] = {**_run_entry(best), "alpha_grid": grid, "chosen_alpha": best.spec.alpha}
        runs[ZERO_SHOT] = {"val": validation_score(None, feats["val"], ds.level)}
        if name == CATALOG and cfg.rerank:
            runs[RERANKER] = _train_reranker(cfg, ds, enc, feats["train"], best.model)
        manifest["datasets"][name] = {
            "description": ds.description,
            "level": ds.level,
            "sizes": {p: len(getattr(ds, p)) for p in ("train", "val", "test")},
            "validation_metric": "R@10" if ds.level == "instance" else "P@10",
            "feature_seconds": round(t_features, 1),
            "runs": runs,
        }
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    (cfg.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _splits(ds: data.Dataset) -> tuple[tuple[Product, ...], tuple[Product, ...]]:
    n_train, n_test = len(ds.train), len(ds.test)
    return ds.products[:n_train], ds.products[len(ds.products) - n_test :]


def adapter_pools(
    adapter: AdapterPair,
    enc: Encoders,
    images: Features,
    products: Sequence[Product],
    queries: Sequence[str],
    depth: int,
) -> list[list[Product]]:
    """Each query's top ``depth`` products by the adapter's text -> image retrieval (``images`` are the
    features of ``products``, in order)."""
    with torch.no_grad():
        image = adapter.image(torch.from_numpy(images.image)).numpy()
        text = adapter.text(torch.from_numpy(enc.embed_texts(list(queries)))).numpy()
    return [[products[j] for j in np.argsort(-(t @ image.T), kind="stable")[:depth]] for t in text]


def _train_reranker(
    cfg: AdaptConfig, ds: data.Dataset, enc: Encoders, train_feats: Features, adapter: AdapterPair
) -> dict[str, Any]:
    spec, seed = cfg.rerank_spec, cfg.train.seed
    train_products, test_products = _splits(ds)
    queries, _ = reranker.labelled_queries(train_products, test_products, seed)
    mined = adapter_pools(
        adapter, enc, train_feats, train_products, [q.text for q in queries], spec.rerank_mined
    )
    ce = reranker.Encoder(cfg.artifacts, spec.rerank_layers)
    report = reranker.train(ce, queries, train_products, mined, spec, seed, cfg.progress)
    torch.save(ce.trained_state(), cfg.out / CATALOG / RERANKER_FILE)
    return report


def train_reranker(cfg: AdaptConfig) -> dict[str, Any]:
    """Train the cross-encoder again over the catalog adapter an earlier ``train_all`` saved (new labels,
    other ``rerank_*`` settings) and record it in the manifest; the adapters are untouched."""
    manifest = json.loads((cfg.out / MANIFEST).read_text())
    if CATALOG not in manifest["datasets"]:
        raise ValueError(f"{cfg.out / MANIFEST} has no {CATALOG} adapter; run `vitrine adapt train` first")
    enc = Encoders(cfg.artifacts)
    ds = load_dataset(cfg, CATALOG)
    feats = split_features(cfg, enc, ds, CATALOG)
    adapter = load_heads(cfg.out / CATALOG / "residual.pt")[0]
    report = _train_reranker(cfg, ds, enc, feats["train"], adapter)
    manifest["datasets"][CATALOG]["runs"][RERANKER] = report
    (cfg.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def trained_reranker(cfg: AdaptConfig) -> reranker.Encoder | None:
    """The cross-encoder ``train_all``/``train_reranker`` trained, or None when none was."""
    path = cfg.out / CATALOG / RERANKER_FILE
    return reranker.Encoder.from_saved(cfg.artifacts, path) if path.is_file() else None


def _run_entry(result: Any) -> dict[str, Any]:
    return {
        "spec": result.spec.to_dict(),
        "best_epoch": result.best_epoch,
        "val": round(result.val_metric, 4),
        "train_seconds": round(result.seconds, 2),
        "logit_scale": round(float(result.model.scale().detach()), 3),
        "history": result.history,
    }


def _plain(cfg: AdaptConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


# ---- evaluation -----------------------------------------------------------------------------------


def test_metrics(model: AdapterPair | None, feats: Features, level: str) -> dict[str, np.ndarray]:
    image, text = apply(model, feats)
    if level == "instance":
        return metrics.instance_metrics(text, image)
    prompts, labels = class_prompt_vectors(text, feats.groups)
    return metrics.class_metrics(image, labels, prompts, min(metrics.GALLERY, len(image)))


def evaluate_all(cfg: AdaptConfig) -> dict[str, Any]:
    """Test-split tables for every data set the manifest trained; writes ``report.md`` and returns the
    figures (bootstrap intervals per method and metric)."""
    manifest = json.loads((cfg.out / MANIFEST).read_text())
    enc = Encoders(cfg.artifacts)
    results: dict[str, Any] = {"weights": manifest["weights"], "datasets": {}}
    for name, entry in manifest["datasets"].items():
        ds = load_dataset(cfg, name)
        feats = split_features(cfg, enc, ds, name)["test"]
        rows: dict[str, dict[str, ranking.Estimate]] = {}
        for method, path in ((ZERO_SHOT, None), (NAIVE, "naive.pt"), (RESIDUAL, "residual.pt")):
            model = load_heads(cfg.out / name / path)[0] if path else None
            label = method
            if method == RESIDUAL:
                label = f"{method} (a={entry['runs'][RESIDUAL]['chosen_alpha']})"
            per_query = test_metrics(model, feats, entry["level"])
            rows[label] = {k: ranking.bootstrap(v, seed=1) for k, v in per_query.items()}
        results["datasets"][name] = {
            "description": entry["description"],
            "level": entry["level"],
            "rows": {m: {k: e.to_dict() for k, e in r.items()} for m, r in rows.items()},
            "table": table(rows),
        }
        if name == CATALOG and (cfg.out / CATALOG / RERANKER_FILE).is_file():
            results["rerank"] = evaluate_reranker(cfg, ds, enc, feats)
    (cfg.out / "report.md").write_text(render_report(results, manifest))
    (cfg.out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def evaluate_reranker(cfg: AdaptConfig, ds: data.Dataset, enc: Encoders, feats: Features) -> dict[str, Any]:
    """Held-out queries over the test products: the served adapter's retrieval (text -> image, top
    ``depth``), then re-ranked by the exported cross-encoder and by the trained one; NDCG@10 and MRR."""
    train_products, test_products = _splits(ds)
    _, queries = reranker.labelled_queries(train_products, test_products, cfg.train.seed)
    adapter = load_heads(cfg.out / CATALOG / "residual.pt")[0]
    depth = cfg.rerank_spec.rerank_depth
    pools = adapter_pools(adapter, enc, feats, test_products, [q.text for q in queries], depth)
    passages = [
        (q.text, [p.passage(reranker.PASSAGE_WORDS) for p in pool])
        for q, pool in zip(queries, pools, strict=True)
    ]
    orders: dict[str, list[list[str]]] = {
        "retrieval only (adapter)": [[p.id for p in pool] for pool in pools]
    }
    exported = reranker.Encoder(cfg.artifacts, layers=0)
    trained = reranker.Encoder.from_saved(cfg.artifacts, cfg.out / CATALOG / RERANKER_FILE)
    for label, ce in (
        ("+ cross-encoder as exported (random head)", exported),
        (f"+ trained cross-encoder ({trained.layers} block + head)", trained),
    ):
        orders[label] = [
            [pool[i].id for i in np.argsort(-reranker.scores(ce, text, texts), kind="stable")]
            for (text, texts), pool in zip(passages, pools, strict=True)
        ]
    # The passage policy's alternative: the re-ranker reading 16 description words instead of 32.
    orders[f"+ trained cross-encoder, {SHORT_PASSAGE_WORDS}-word passages"] = [
        [pool[i].id for i in np.argsort(-reranker.scores(trained, q.text, short), kind="stable")]
        for q, pool in zip(queries, pools, strict=True)
        for short in [[p.passage(SHORT_PASSAGE_WORDS) for p in pool]]
    ]
    agreement, int8_scores = reranker.int8_agreement(trained, cfg.out / CATALOG / "cross_encoder", passages)
    orders["+ trained cross-encoder, int8 (dynamic)"] = [
        [pool[i].id for i in np.argsort(-sc, kind="stable")]
        for sc, pool in zip(int8_scores, pools, strict=True)
    ]
    rows = {
        label: {k: ranking.bootstrap(v, seed=2) for k, v in reranker.ranking_metrics(o, queries).items()}
        for label, o in orders.items()
    }
    return {
        "queries": len(queries),
        "depth": depth,
        "rows": {m: {k: e.to_dict() for k, e in r.items()} for m, r in rows.items()},
        "table": table(rows),
        "int8": agreement,
    }


def table(rows: dict[str, dict[str, ranking.Estimate]]) -> str:
    """One row per method, ``mean [low, high]`` per metric."""
    names = list(next(iter(rows.values())))
    cells = [[method, *(est[n] for n in names)] for method, est in rows.items()]
    return "\n".join(markdown_table(["method", *names], cells))


def render_report(results: dict[str, Any], manifest: dict[str, Any]) -> str:
    parts = []
    for name, r in results["datasets"].items():
        parts.append(
            f"### {name}: test split, {r['level']} level\n\n"
            f"Data: {r['description']}. Encoder weights: {results['weights']} (adapters trained here). "
            "Mean [95% bootstrap interval over queries].\n\n" + r["table"] + "\n"
        )
    if "rerank" in results:
        r = results["rerank"]
        parts.append(
            f"### catalog re-ranking: {r['queries']} held-out queries, top {r['depth']} re-ranked\n\n"
            "Cross-encoder: MiniLM-L6 encoder (pretrained weights) with its head as exported (seeded "
            "random: partial weights), or with its top blocks and head trained here; retrieval by the "
            "residual adapter. "
            "Mean [95% bootstrap interval over queries].\n\n" + r["table"] + "\n\n"
            f"int8 (dynamic) vs fp32 of the trained cross-encoder on these pools: top-10 overlap "
            f"{r['int8']['top10_overlap']:.3f}, identical top-10 order "
            f"{r['int8']['top10_identical_order']:.3f}.\n"
        )
    return "\n".join(parts)
