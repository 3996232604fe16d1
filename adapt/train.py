"""Train adapter heads on cached features: symmetric InfoNCE, learnable temperature, FAISS hard negatives.

One epoch: the current image vectors of the training split go into a FAISS inner-product index; each
anchor brings its nearest images of *other* groups into its batch (seed 003's hard-negative mining), so
in-batch negatives are the look-alikes the model most confuses. The loss is InfoNCE in both directions
with every same-group pair positive (instance level: only the diagonal; class level: all images of the
class), so one trainer serves a catalog and a labelled image set. Validation R@10 (instance level) or
P@10 (class level) decides early stopping and which epoch is kept. Seeded end to end: the same spec and
features give the same weights.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adapt import metrics
from adapt.features import Features
from adapt.heads import AdapterPair, HeadKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    head: HeadKind = field(default=HeadKind.RESIDUAL, metadata={"help": "residual or naive"})
    alpha: float = field(default=0.2, metadata={"help": "residual mixing ratio a"})
    hidden: int = field(default=512, metadata={"help": "MLP hidden width"})
    epochs: int = field(default=40, metadata={"help": "most epochs"})
    batch: int = field(default=128, metadata={"help": "pairs per batch (anchors plus hard negatives)"})
    hard_negatives: int = field(default=3, metadata={"help": "FAISS-mined neighbours per anchor; 0 = off"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    temperature: float = field(default=0.07, metadata={"help": "initial temperature (learnable)"})
    patience: int = field(default=6, metadata={"help": "epochs without validation gain before stopping"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batches and mining"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["head"] = self.head.value
        return d


@dataclass
class TrainResult:
    model: AdapterPair
    spec: TrainSpec
    best_epoch: int
    val_metric: float
    history: list[dict[str, float]]
    seconds: float


def validation_score(model: AdapterPair | None, feats: Features, level: str) -> float:
    """R@10 of each text's own image (instance level) or mean P@10 of the class prompts (class level)."""
    image, text = apply(model, feats)
    if level == "instance":
        return float(metrics.instance_metrics(text, image)["R@10"].mean())
    prompts, labels = class_prompt_vectors(text, feats.groups)
    gallery = min(metrics.GALLERY, len(image))
    return float(metrics.class_metrics(image, labels, prompts, gallery)["P@10"].mean())


def class_prompt_vectors(text: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One text vector per class (rows ordered by class id) and the labels unchanged."""
    classes = np.unique(groups)
    prompts = np.stack([text[np.flatnonzero(groups == c)[0]] for c in classes])
    remap = {int(c): i for i, c in enumerate(classes)}
    return prompts, np.asarray([remap[int(g)] for g in groups])


@torch.no_grad()
def apply(model: AdapterPair | None, feats: Features) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) vectors after the heads; ``None`` is zero-shot (the features themselves)."""
    if model is None:
        return feats.image, feats.text
    model.eval()
    image = model.image(torch.from_numpy(feats.image)).numpy()
    text = model.text(torch.from_numpy(feats.text)).numpy()
    return image, text


def _loss(model: AdapterPair, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE: -log of the softmax mass on same-group columns, both ways."""
    logits = model.scale() * model.text(text) @ model.image(image).T
    positive = groups[:, None] == groups[None, :]

    def direction(lg: torch.Tensor) -> torch.Tensor:
        pos = lg.masked_fill(~positive, float("-inf"))
        return (torch.logsumexp(lg, dim=1) - torch.logsumexp(pos, dim=1)).mean()

    return 0.5 * (direction(logits) + direction(logits.T))


def _hard_neighbours(image: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """For every item, its ``k`` nearest images (inner product, FAISS) in other groups; -1 pads."""
    import faiss

    index = faiss.IndexFlatIP(image.shape[1])
    index.add(np.ascontiguousarray(image, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(image, dtype=np.float32), min(len(image), 4 * k + 8))
    out = np.full((len(image), k), -1, np.int64)
    for i, row in enumerate(found):
        other = [j for j in row if j >= 0 and groups[j] != groups[i]][:k]
        out[i, : len(other)] = other
    return out


def _batches(n: int, hard: np.ndarray | None, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    per_anchor = 1 + (hard.shape[1] if hard is not None else 0)
    anchors = rng.permutation(n)
    step = max(1, batch // per_anchor)
    out = []
    for start in range(0, n, step):
        chosen = anchors[start : start + step]
        if hard is not None:
            extra = hard[chosen].reshape(-1)
            chosen = np.concatenate([chosen, extra[extra >= 0]])
        out.append(np.unique(chosen))
    return out


def train(
    spec: TrainSpec, train_feats: Features, val_feats: Features, level: str, progress: bool = True
) -> TrainResult:
    """Train one pair of heads; the epoch with the best validation score is the one returned."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # The heads are a few small matrices: one thread is fastest and never fights other work for cores.
    torch.set_num_threads(1)
    try:
        return _train(spec, train_feats, val_feats, level, progress, t0)
    finally:
        torch.set_num_threads(threads)


def _train(
    spec: TrainSpec, train_feats: Features, val_feats: Features, level: str, progress: bool, t0: float
) -> TrainResult:
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    dim = train_feats.image.shape[1]
    model = AdapterPair(dim, spec.hidden, spec.head, spec.alpha, spec.temperature)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    image = torch.from_numpy(train_feats.image)
    text = torch.from_numpy(train_feats.text)
    groups = torch.from_numpy(train_feats.groups)
    best = validation_score(model, val_feats, level)
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    history = [{"epoch": 0, "val": best}]
    bar = tqdm(range(1, spec.epochs + 1), desc=f"adapt {spec.head.value}", unit="epoch", disable=not progress)
    for epoch in bar:
        hard = None
        if spec.hard_negatives > 0:
            mined, _ = apply(model, train_feats)
            hard = _hard_neighbours(mined, train_feats.groups, spec.hard_negatives)
        model.train()
        losses = []
        for idx in _batches(len(image), hard, spec.batch, rng):
            if len(idx) < 2:
                continue
            sel = torch.from_numpy(idx)
            loss = _loss(model, image[sel], text[sel], groups[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        score = validation_score(model, val_feats, level)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": score})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val=f"{score:.3f}")
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= spec.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, spec, best_epoch, best, history, time.perf_counter() - t0)


def training_metric(model: AdapterPair | None, feats: Features, level: str) -> float:
    """The same score on the training split: what a test can check training improves."""
    return validation_score(model, feats, level)
