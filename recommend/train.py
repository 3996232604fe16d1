"""``vitrine recommend train``: a seeded two-tower run -> ONNX towers validated against PyTorch + manifest.

Sampled softmax over in-batch negatives with the log-Q correction (each in-batch item's logit is lowered
by the log of its share of training targets, so popular items are not over-penalised for appearing as
negatives more often), targets weighted by their strongest event (``vitrine.events.EVENT_WEIGHT``), the
same item elsewhere in the batch masked (it is not a negative). Early stopping on validation NDCG@10
(the held-out session before each user's last; see ``recommend.data``). Artifacts::

    OUT/manifest.json          version (hash of the weights), data window, counts, spec, vocabularies,
                               metrics, ONNX agreement, weights "trained here"
    OUT/user_tower/model.onnx  served by Triton (model ``user_tower``)
    OUT/item_tower/model.onnx  the item side, for re-embedding products offline
    OUT/item_vectors.npy       every catalog item's rec-space vector (row order: OUT/item_ids.json)
    OUT/model.pt               the PyTorch weights
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from recommend.data import Case, Split, pad
from recommend.evaluate import evaluate_model, rank_lists, ranking_metrics
from recommend.items import ItemTable
from recommend.model import TowerSpec, TwoTower
from recommend.scoring import item_features, score_cases
from vitrine.contracts import ITEM_TOWER, REC_DIM, REC_HISTORY, Model, Tensor

log = logging.getLogger(__name__)

OPSET = 17
COSINE_MIN = 0.9999
"""The served graphs must agree with PyTorch at least this well (as ``export/`` demands of the encoders)."""


class ToleranceError(RuntimeError):
    """An exported tower disagrees with PyTorch beyond the tolerance; the message has the figures."""


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    patience: int = 3
    tower: TowerSpec = field(default_factory=TowerSpec)
    progress: bool = True

    @staticmethod
    def tiny(seed: int = 0) -> TrainSpec:
        """Seconds on any CPU: for tests and ``vitrine up --size tiny``."""
        return TrainSpec(
            seed=seed, epochs=3, batch_size=256, patience=1, tower=TowerSpec(hidden=32, attr_dim=4, id_dim=8)
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(table: ItemTable, spec: TrainSpec) -> TwoTower:
    sizes = {k: len(v) for k, v in table.vocab.items()}
    return TwoTower(spec.tower, len(table), sizes)


def ndcg_at(scores: np.ndarray, cases: list[Case], k: int = 10) -> float:
    return float(np.mean(ranking_metrics(rank_lists(scores, cases, k), cases, k)["ndcg"])) if cases else 0.0


def train_model(table: ItemTable, data: Split, spec: TrainSpec) -> tuple[TwoTower, dict[str, Any]]:
    """Trains with early stopping; returns the best model (by validation NDCG@10) and its history."""
    from tqdm import tqdm

    seed_everything(spec.seed)
    # One thread: these small matrices gain nothing from a second core, and lose a lot when it is busy.
    torch.set_num_threads(1)
    model = build_model(table, spec)
    feats = item_features(table)
    if not data.train:
        raise ValueError("no training examples: too few events (each user needs at least two)")
    hist_items, hist_types, hist_ages = (torch.from_numpy(a) for a in pad([h for h, _, _ in data.train]))
    targets = torch.tensor([t for _, t, _ in data.train], dtype=torch.int64)
    weights = torch.tensor([w for _, _, w in data.train], dtype=torch.float32)
    counts = torch.bincount(targets, minlength=len(table)).float() + 1.0
    log_q = torch.log(counts / counts.sum())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)
    best, best_state, bad, history = -1.0, None, 0, []
    n = len(targets)
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        steps = range(0, n, spec.batch_size)
        for start in tqdm(
            steps,
            desc=f"epoch {epoch + 1}/{spec.epochs}",
            unit="batch",
            disable=not spec.progress,
            leave=False,
        ):
            idx = order[start : start + spec.batch_size]
            item_vecs = model.items(*feats)
            types = hist_types[idx]
            hist = item_vecs[hist_items[idx]] * (types > 0).unsqueeze(-1)
            users = model.user(hist, types, hist_ages[idx])
            tgt = targets[idx]
            temp = model.log_temperature.clamp(math.log(0.01), math.log(1.0)).exp()
            logits = users @ item_vecs[tgt].T / temp - log_q[tgt][None, :]
            same = (tgt[:, None] == tgt[None, :]) & ~torch.eye(len(tgt), dtype=torch.bool)
            logits = logits.masked_fill(same, -1e4)
            loss_each = F.cross_entropy(logits, torch.arange(len(tgt)), reduction="none")
            loss = (loss_each * weights[idx]).sum() / weights[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        val = ndcg_at(score_cases(model, table, data.validation), data.validation)
        history.append({"epoch": epoch + 1, "loss": total / n, "val_ndcg10": val})
        log.info("epoch", extra=history[-1])
        if spec.progress:
            print(f"epoch {epoch + 1}: loss {total / n:.4f}  validation NDCG@10 {val:.4f}", flush=True)
        if val > best:
            best, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= spec.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs": history, "best_val_ndcg10": best}


# ---- export ---------------------------------------------------------------------------------------------


class _UserGraph(torch.nn.Module):
    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.user = model.user

    def forward(
        self, history: torch.Tensor, event_types: torch.Tensor, age_hours: torch.Tensor
    ) -> torch.Tensor:
        return self.user(history, event_types, age_hours)


def _onnx_export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter, as export/ uses: one self-contained file at an exact opset; its
    # deprecation notice is not ours to act on.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _export(module, args, names, output, path)


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path
) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=names,
        output_names=[output],
        dynamic_axes={**{n: {0: "batch"} for n in names}, output: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )


def check_agreement(reference: np.ndarray, served: np.ndarray, what: str) -> dict[str, float]:
    """Cosine per row and the largest absolute difference; ``ToleranceError`` below ``COSINE_MIN``."""
    cos = np.sum(reference * served, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(served, axis=1) + 1e-12
    )
    figures = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(reference - served).max())}
    if figures["min_cosine"] < COSINE_MIN:
        raise ToleranceError(f"{what}: min cosine {figures['min_cosine']:.6f} < {COSINE_MIN} ({figures})")
    return figures


def random_user_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh user-tower inputs: unit vectors, mixed lengths of history (padding included), ages."""
    rng = np.random.default_rng(seed)
    hist = rng.normal(size=(n, REC_HISTORY, REC_DIM)).astype(np.float32)
    hist /= np.linalg.norm(hist, axis=-1, keepdims=True)
    lengths = rng.integers(1, REC_HISTORY + 1, size=n)
    types = rng.integers(1, 7, size=(n, REC_HISTORY)).astype(np.int64)
    for i, k in enumerate(lengths):
        types[i, k:] = 0
        hist[i, k:] = 0.0
    ages = rng.exponential(48.0, size=(n, REC_HISTORY)).astype(np.float32)
    return hist, types, ages


def export_towers(model: TwoTower, table: ItemTable, out: Path, seed: int) -> dict[str, Any]:
    """Both towers to ONNX, each compared with PyTorch on fresh inputs (fails loudly)."""
    import onnxruntime as ort

    model.eval()
    user_path = out / Model.USER_TOWER.value / "model.onnx"
    item_path = out / ITEM_TOWER / "model.onnx"
    dummy = tuple(torch.from_numpy(a) for a in random_user_inputs(2, seed))
    names = [Tensor.HISTORY.value, Tensor.EVENT_TYPES.value, Tensor.AGE_HOURS.value]
    _onnx_export(_UserGraph(model), dummy, names, Tensor.USER_EMBEDDING.value, user_path)
    feats = item_features(table)
    item_names = [
        t.value
        for t in (
            Tensor.CONTENT,
            Tensor.CATEGORY,
            Tensor.BRAND,
            Tensor.COLOR,
            Tensor.PRICE_BUCKET,
            Tensor.ITEM_INDEX,
        )
    ]
    _onnx_export(model.items, tuple(f[:2] for f in feats), item_names, Tensor.ITEM_EMBEDDING.value, item_path)

    fresh = random_user_inputs(64, seed + 1)
    with torch.no_grad():
        ref_user = model.user(*(torch.from_numpy(a) for a in fresh)).numpy()
        ref_items = model.items(*feats).numpy()
    sess = ort.InferenceSession(str(user_path), providers=["CPUExecutionProvider"])
    got_user = sess.run(None, dict(zip(names, fresh, strict=True)))[0]
    sess = ort.InferenceSession(str(item_path), providers=["CPUExecutionProvider"])
    got_items = sess.run(None, {n: f.numpy() for n, f in zip(item_names, feats, strict=True)})[0]
    return {
        Model.USER_TOWER.value: {
            "path": str(user_path.relative_to(out)),
            **check_agreement(ref_user, got_user, "user tower"),
        },
        ITEM_TOWER: {
            "path": str(item_path.relative_to(out)),
            **check_agreement(ref_items, got_items, "item tower"),
        },
    }


def train(
    table: ItemTable, data: Split, spec: TrainSpec, out: Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole run: train, export and validate, item vectors, manifest. Returns the manifest."""
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    model, history = train_model(table, data, spec)
    models = export_towers(model, table, out, spec.seed)
    with torch.no_grad():
        vectors = model.items(*item_features(table)).numpy().astype(np.float32)
    np.save(out / "item_vectors.npy", vectors)
    (out / "item_ids.json").write_text(json.dumps(table.ids))
    torch.save(model.state_dict(), out / "model.pt")
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()[
        :12
    ]
    manifest = {
        "version": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights": "trained here",
        "data": {
            "window": [
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.window[0])),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.window[1])),
            ],
            "train_examples": len(data.train),
            "validation_users": len(data.validation),
            "test_users": len(data.test),
            "items": len(table),
            **(extra or {}),
        },
        "spec": asdict(spec),
        "vocab": table.vocab,
        "training": history,
        "metrics": {"test": evaluate_model(model, table, data.test)},
        "models": models,
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
