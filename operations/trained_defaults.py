"""``vitrine up`` serves trained models by default: catalog adapters and a cross-encoder trained in the
run, each deployed only when its held-out evaluation, computed in the same run, beats what serves.

Cheap by construction, so ``up`` stays within 1.5x its time without training:

- **features are the index's stored vectors.** The catalog was just embedded by the served towers, so
  the CLIP vectors of its photos and titles are read back from the index (under a second for 2,000
  products) instead of running the image tower again (minutes);
- **the adapters are heads.** A residual adapter sits on the frozen tower's output, so a product's adapted
  vector is the head applied to its stored vector: the adapted spaces are filled from the stored vectors
  (``operations.trained_deploy``), and only queries and products ingested later run the adapted towers
  (fused graphs, validated against tower -> head);
- **the cross-encoder trains its top block and head** over the cached output of the frozen blocks
  (``adapt.reranker``), and the exported and trained heads are compared on the same cached pools.

The data: the demo catalog split by product (``adapt.data.product_split``); the adapters are trained on
the training products and chosen on validation R@10, the cross-encoder on the generator's labelled
queries over the training products; both are compared on held-out products and queries
(``adapt.reranker.labelled_queries``: test (kind, colour) combinations never seen in training). A model
"beats" what serves when the 95% bootstrap interval of its paired per-query gain lies above zero.

Each step is skipped when done: the report (``<var>/adapt/up/report.json``) is keyed by the export and
the catalog, the trained weights are kept beside it, and deploying finds what is already in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from operations.trained_deploy import NotIngested, catalog_products, stored_vectors
from vitrine import ranking
from vitrine.catalog import LabelledQuery, Product
from vitrine.reranking import rerank_default


def say(message: str) -> None:
    print(f"[vitrine] {message}", file=sys.stderr, flush=True)


REPORT = "report.json"
HEADS = "residual.pt"
RERANKER = "reranker.pt"
MIN_HELD_OUT = 50
"""Fewest held-out products a comparison is made on: below it no gain can clear its interval (6 held-out
products of a 24-product catalog all sit in everyone's top 10), so training would only cost time."""
RERANK_DEPTH = 50
"""Candidates the held-out comparison re-ranks: the gateway's default depth."""


@dataclass(frozen=True)
class UpTraining:
    """What ``up`` trains, sized to fit its time budget (measured: docs/ADAPTATION.md)."""

    alphas: tuple[float, ...] = (0.1,)
    epochs: int = 25
    patience: int = 4
    rerank_mined: int = 16
    rerank_relevant: int = 6
    rerank_same_kind: int = 6
    rerank_epochs: int = 2
    seed: int = 0

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Comparison:
    """One trained model against the one serving, on the same held-out queries."""

    model: str
    metric: str
    baseline: str
    before: ranking.Estimate
    after: ranking.Estimate
    gain: ranking.Estimate
    queries: int

    @property
    def wins(self) -> bool:
        """Deploy only on a gain whose 95% interval lies above zero: a tie or a noisy lead keeps what
        serves."""
        return self.gain.low > 0.0

    def line(self, deployed_as: str = "") -> str:
        """The comparison and its verdict (``deployed_as`` names the version, once it is known)."""
        won = f"DEPLOYED as {deployed_as}" if deployed_as else "beats the exported model: to be deployed"
        verdict = won if self.wins else "not deployed (no held-out gain)"
        return (
            f"{self.model}: {self.metric} {self.before.mean:.3f} {self.baseline} -> {self.after.mean:.3f} "
            f"trained (gain {self.gain.mean:+.3f} [{self.gain.low:+.3f}, {self.gain.high:+.3f}], "
            f"{self.queries} held-out queries): {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "metric": self.metric,
            "baseline": self.baseline,
            "queries": self.queries,
            "wins": self.wins,
            **{k: getattr(self, k).to_dict() for k in ("before", "after", "gain")},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        est = {k: ranking.Estimate(**d[k]) for k in ("before", "after", "gain")}
        return cls(d["model"], d["metric"], d["baseline"], queries=int(d["queries"]), **est)


def compare(model: str, metric: str, baseline: str, before: np.ndarray, after: np.ndarray) -> Comparison:
    """Per-query scores of what serves (``before``) and of the trained model (``after``), paired."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    return Comparison(
        model,
        metric,
        baseline,
        ranking.bootstrap(before, seed=3),
        ranking.bootstrap(after, seed=3),
        ranking.bootstrap(after - before, seed=3),
        len(before),
    )


def deployed_versions(adapter: Comparison, reranker: Comparison | None, version: int) -> dict[str, int]:
    """The versions to serve: the new ``version`` for each model that beat what serves on held-out
    data, the exported models (version 1) for the others."""
    return {
        "encoder_version": version if adapter.wins else 1,
        "reranker_version": version if reranker is not None and reranker.wins else 1,
    }


@dataclass
class Trained:
    """A run's outcome: the comparisons, and the trained models when they win (None otherwise)."""

    adapter: Comparison
    reranker: Comparison | None
    reranker_weights: str
    """The weights of the cross-encoder serving before this run (``partial``, ``pretrained``, ...)."""
    heads: Any = None
    cross_encoder: Any = None
    seconds: dict[str, float] = field(default_factory=dict)


def cache_key(artifacts: Path, catalog: Path, settings: UpTraining) -> str:
    """The export's towers and cross-encoder, the catalog and the settings: what the models depend on."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    shas = {k: m.get("sha256", "") for k, m in sorted(manifest.get("models", {}).items())}
    digest = hashlib.sha256(catalog.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([shas, digest, settings.key()]).encode()).hexdigest()[:20]


# ---- data ----------------------------------------------------------------------------------------------


async def embed_queries(triton_url: str, texts: Sequence[str], chunk: int = 16) -> np.ndarray:
    """The served base text tower's vectors of ``texts`` (through Triton, as a search embeds them)."""
    from gateway.triton_client import TritonModels

    models = TritonModels(triton_url)
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(texts), chunk):
            vecs = await asyncio.gather(*(models.embed_text(t, 60.0) for t in texts[start : start + chunk]))
            out.extend(v for v, _ in vecs)
    finally:
        await models.close()
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


# ---- training and the held-out comparisons --------------------------------------------------------------


def train_adapter(settings: UpTraining, feats: dict[str, Any]) -> tuple[Any, Comparison, dict[str, Any]]:
    """Residual adapters for each ratio, the ratio chosen on validation R@10; compared with zero-shot
    (what serves) on the held-out products' text -> image R@10."""
    from adapt import metrics
    from adapt.heads import HeadKind
    from adapt.train import TrainSpec, apply, train

    best, grid = None, {}
    for alpha in settings.alphas:
        spec = TrainSpec(
            head=HeadKind.RESIDUAL,
            alpha=alpha,
            epochs=settings.epochs,
            patience=settings.patience,
            seed=settings.seed,
        )
        result = train(spec, feats["train"], feats["val"], "instance", progress=True)
        grid[str(alpha)] = round(result.val_metric, 4)
        if best is None or result.val_metric > best.val_metric:
            best = result
    assert best is not None
    test = feats["test"]
    before = metrics.instance_metrics(test.text, test.image)["R@10"]
    image, text = apply(best.model, test)
    after = metrics.instance_metrics(text, image)["R@10"]
    comparison = compare("catalog adapters", "R@10", "zero-shot CLIP", before, after)
    return best, comparison, {"val_r@10_by_alpha": grid, "chosen_alpha": best.spec.alpha}


def _orders(pools: Sequence[Sequence[Product]], scores: Sequence[np.ndarray]) -> list[list[str]]:
    return [
        [pool[i].id for i in np.argsort(-s, kind="stable")] for pool, s in zip(pools, scores, strict=True)
    ]


def retrieval_pools(
    heads: Any, image: np.ndarray, query_vecs: np.ndarray, products: Sequence[Product], depth: int
) -> list[list[Product]]:
    """Each query's top ``depth`` products by text -> image retrieval (through ``heads`` when given)."""
    import torch

    if heads is not None:
        with torch.no_grad():
            image = heads.image(torch.from_numpy(image)).numpy()
            query_vecs = heads.text(torch.from_numpy(query_vecs)).numpy()
    return [[products[j] for j in np.argsort(-(q @ image.T), kind="stable")[:depth]] for q in query_vecs]


def train_reranker(
    settings: UpTraining,
    artifacts: Path,
    queries: tuple[list[LabelledQuery], list[LabelledQuery]],
    mined: list[list[Product]],
    pools: list[list[Product]],
    products: Sequence[Product],
) -> tuple[Any, Comparison, dict[str, Any]]:
    """The cross-encoder's top block and head trained on the training queries (hard negatives
    ``mined``), then scored with its exported head and its trained head on the held-out queries'
    ``pools``: NDCG@10 of each ordering, paired per query."""
    from adapt import reranker

    spec = reranker.RerankSpec(
        rerank_mined=settings.rerank_mined,
        rerank_relevant=settings.rerank_relevant,
        rerank_same_kind=settings.rerank_same_kind,
        rerank_epochs=settings.rerank_epochs,
    )
    train_q, test_q = queries
    enc = reranker.Encoder(artifacts, spec.rerank_layers)
    exported = reranker.snapshot(enc)
    report = reranker.train(enc, train_q, products, mined, spec, settings.seed, progress=True)
    before, after = [], []
    for q, pool in zip(test_q, pools, strict=True):
        b, a = reranker.paired_scores(
            enc, exported, q.text, [p.passage(reranker.PASSAGE_WORDS) for p in pool]
        )
        before.append(b)
        after.append(a)
    ndcg = {
        name: reranker.ranking_metrics(_orders(pools, s), test_q)["NDCG@10"]
        for name, s in (("before", before), ("after", after))
    }
    comparison = compare("cross-encoder", "NDCG@10", "as exported", ndcg["before"], ndcg["after"])
    return enc, comparison, {k: report[k] for k in ("queries", "pairs", "losses", "seconds")}


def reranker_weights(artifacts: Path, version: int = 1) -> str:
    """Cross-encoder ``version``'s weights as the model repository states them."""
    from model_repository.render import reranker_weights as weights_of

    return weights_of(artifacts, version)


def train_and_compare(
    settings: UpTraining, artifacts: Path, catalog: Path, index_address: str, collection: str, triton_url: str
) -> tuple[Trained, dict[str, Any]]:
    """Everything ``up`` trains, with its held-out comparisons; returns the outcome and the report's
    details (sizes, choices, times)."""
    from adapt import reranker
    from adapt.data import product_split
    from adapt.features import Features
    from vitrine.items import IMAGE, TITLE

    t0 = time.perf_counter()
    products = catalog_products(catalog)
    vectors = asyncio.run(stored_vectors(index_address, collection, [p.id for p in products], (IMAGE, TITLE)))
    parts = product_split(len(products), settings.seed)
    feats = {
        name: Features(vectors[IMAGE][idx], vectors[TITLE][idx], np.asarray(idx, np.int64))
        for name, idx in parts.items()
    }
    seconds = {"read_vectors": time.perf_counter() - t0}
    say(
        f"training catalog adapters on {len(parts['train'])} products' stored vectors "
        f"(validation {len(parts['val'])}, held out {len(parts['test'])})"
    )
    t0 = time.perf_counter()
    best, adapter_cmp, adapter_details = train_adapter(settings, feats)
    seconds["adapters"] = time.perf_counter() - t0
    say(adapter_cmp.line() + f" ({seconds['adapters']:.0f} s)")

    weights = reranker_weights(artifacts)
    train_p = [products[i] for i in parts["train"]]
    test_p = [products[i] for i in parts["test"]]
    queries = reranker.labelled_queries(train_p, test_p, settings.seed)
    details: dict[str, Any] = {
        "products": {k: len(v) for k, v in parts.items()},
        "adapter": adapter_details,
    }
    rerank_cmp, enc = None, None
    if queries[0] and queries[1]:
        t0 = time.perf_counter()
        say(f"training the cross-encoder on {len(queries[0])} labelled queries ({len(queries[1])} held out)")
        qvecs = asyncio.run(embed_queries(triton_url, [q.text for q in (*queries[0], *queries[1])]))
        n_train = len(queries[0])
        # Hard negatives from the adapter's retrieval; held-out pools from what will serve.
        mined = retrieval_pools(
            best.model, feats["train"].image, qvecs[:n_train], train_p, settings.rerank_mined
        )
        served = best.model if adapter_cmp.wins else None
        pools = retrieval_pools(served, feats["test"].image, qvecs[n_train:], test_p, RERANK_DEPTH)
        enc, rerank_cmp, details["reranker"] = train_reranker(
            settings, artifacts, queries, mined, pools, train_p
        )
        seconds["reranker"] = time.perf_counter() - t0
        say(rerank_cmp.line() + f" ({seconds['reranker']:.0f} s)")
    trained = Trained(adapter_cmp, rerank_cmp, weights, best.model, enc, seconds)
    return trained, details


# ---- the banner ----------------------------------------------------------------------------------------


def banner_lines(report: dict[str, Any], reranker_weights_served: str) -> list[str]:
    """What ``up`` trained, how each model compared on held-out data, what serves, and whether searches
    re-rank by default (and why)."""
    lines = [
        "TRAINED HERE, IN THIS RUN (demo catalog; compared on held-out products and queries):"
        if not report.get("reused")
        else f"TRAINED HERE (an earlier run, {report['trained_at']}; compared on held-out data):"
    ]
    versions = report["deployed"]
    adapter = Comparison.from_dict(report["adapter"])
    lines.append("  " + adapter.line(f"encoder version {versions['encoder_version']}"))
    if report.get("reranker"):
        rr = Comparison.from_dict(report["reranker"])
        lines.append("  " + rr.line(f"cross-encoder version {versions['reranker_version']}"))
    else:
        lines.append("  cross-encoder: not trained (no labelled queries over this catalog)")
    advice = rerank_default(reranker_weights_served)
    lines.append(
        f"Re-ranking by default (the page's switch, the demo search): {'ON' if advice.on else 'OFF'}"
    )
    lines.append(f"  because {advice.reason}")
    return lines


# ---- the step ``up`` runs ------------------------------------------------------------------------------


def _load_report(out: Path, key: str) -> dict[str, Any] | None:
    path = out / REPORT
    try:
        report = dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
    return report if report.get("key") == key else None


def _train(settings: UpTraining, live: Any, catalog: Path, out: Path, key: str) -> dict[str, Any]:
    """Train, compare, export the winners as a new version; the report (written last) says what won."""
    import torch

    from operations import trained_deploy

    trained, details = train_and_compare(
        settings, live.artifacts, catalog, live.index_address, live.collection, live.triton_urls[0]
    )
    version = trained_deploy.next_version(live.artifacts)
    adapter_wins = trained.adapter.wins
    reranker_wins = trained.reranker is not None and trained.reranker.wins
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if adapter_wins:
        torch.save(trained.heads.state_dict(), out / HEADS)
    trained_deploy.export(
        live.artifacts,
        version,
        trained.heads if adapter_wins else None,
        trained.cross_encoder if reranker_wins else None,
        {"trained_by": "vitrine up", "key": key, "settings": dataclasses.asdict(settings)},
    )
    trained.seconds["export"] = time.perf_counter() - t0
    report = {
        "key": key,
        "trained_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "deployed": deployed_versions(trained.adapter, trained.reranker, version),
        "adapter": trained.adapter.to_dict(),
        "reranker": trained.reranker.to_dict() if trained.reranker is not None else None,
        "heads": {"hidden": trained.heads.image.mlp[0].out_features, "alpha": trained.heads.image.alpha},
        "exported_reranker_weights": trained.reranker_weights,
        "details": details,
        "seconds": {k: round(v, 1) for k, v in trained.seconds.items()},
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _heads(out: Path, report: dict[str, Any]) -> Any:
    import torch

    from adapt.heads import AdapterPair, HeadKind
    from vitrine.contracts import EMBED_DIM

    h = report["heads"]
    pair = AdapterPair(EMBED_DIM, int(h["hidden"]), HeadKind.RESIDUAL, float(h["alpha"]), 0.07)
    pair.load_state_dict(torch.load(out / HEADS, weights_only=True))
    return pair.eval()


def serve_trained(var: Path, catalog: Path, live: Any, settings: UpTraining | None = None) -> list[str]:
    """``up``'s step: train and compare (once per export and catalog), deploy the winners, and return
    the banner's lines (the comparisons, what serves, and the re-rank default with its reason)."""
    from adapt.data import product_split
    from operations import trained_deploy

    settings = settings or UpTraining()
    out = var / "adapt" / "up"
    key = cache_key(live.artifacts, catalog, settings)
    t0, cpu0 = time.monotonic(), time.process_time()
    report = _load_report(out, key)
    held_out = len(product_split(len(catalog_products(catalog)), settings.seed)["test"])
    if report is None and held_out < MIN_HELD_OUT:
        reason = f"{held_out} held-out products are too few to show a gain (at least {MIN_HELD_OUT})"
        say(f"trained models skipped: {reason}")
        advice = rerank_default(reranker_weights(live.artifacts))
        return [
            f"TRAINED MODELS SKIPPED: {reason}; the exported models serve",
            f"Re-ranking by default (the page's switch, the demo search): {'ON' if advice.on else 'OFF'}",
            f"  because {advice.reason}",
        ]
    if report is None:
        try:
            report = _train(settings, live, catalog, out, key)
        except NotIngested as exc:
            say(f"trained models skipped: {exc}")
            return [f"TRAINED MODELS SKIPPED: {exc}", "  re-run `make up` to resume the ingest, then train"]
    else:
        say(f"trained models already compared ({out / REPORT}); deploying what won")
        report["reused"] = True
    enc_v, rr_v = report["deployed"]["encoder_version"], report["deployed"]["reranker_version"]
    heads = _heads(out, report) if enc_v != 1 else None
    done = asyncio.run(trained_deploy.deploy(live, catalog, enc_v, rr_v, heads))
    if done["filled"]:
        say(
            f"adapted spaces filled from the stored vectors ({done['filled']} products, no photo re-embedded)"
        )
    served = trained_deploy.serving(live.gateway_pages[0]) if live.gateway_pages else {}
    say(f"trained models step done in {time.monotonic() - t0:.0f} s ({time.process_time() - cpu0:.0f} s CPU)")
    return banner_lines(report, str(served.get("reranker_weights", reranker_weights(live.artifacts, rr_v))))


def rerank_advice(stack: Any) -> tuple[bool, str]:
    """Whether the first gateway re-ranks by default, and why (its ``/v1/serving``); off when it cannot
    say."""
    from operations import trained_deploy

    pages = trained_deploy.Live.of(stack).gateway_pages
    try:
        got = trained_deploy.serving(pages[0]) if pages else {}
    except (OSError, ValueError, KeyError) as exc:
        return False, f"the gateway could not say whether its cross-encoder is trained ({exc})"
    return bool(got.get("rerank_by_default", False)), str(got.get("reason", "unknown"))
