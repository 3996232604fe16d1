"""Retrieval metrics over embedding matrices, one value per query.

Every metric returns one value per query so :func:`vitrine.ranking.bootstrap` can resample queries for
an interval, as the seeds' tables report them; ranked-list metrics (NDCG@K, MRR over a re-ranked pool)
are :mod:`vitrine.ranking`'s.
"""

from __future__ import annotations

import numpy as np


def instance_ranks(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each text's own image (row i matches column i) among all images."""
    sims = text @ image.T
    own = np.diagonal(sims)[:, None]
    return (sims > own).sum(axis=1)


def instance_metrics(text: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
    """Instance level (one matching image per text): R@1, R@5, R@10 and reciprocal rank per query."""
    ranks = instance_ranks(text, image)
    return {
        "R@1": (ranks < 1).astype(float),
        "R@5": (ranks < 5).astype(float),
        "R@10": (ranks < 10).astype(float),
        "MRR": 1.0 / (ranks + 1.0),
    }


GALLERY = 500
"""Class-level retrieval ranks each prompt over galleries of this many test images: ten prompts alone
are too few queries for an interval, and a gallery of 500 holds ~50 images of each class."""


def class_metrics(
    image: np.ndarray, labels: np.ndarray, prompts: np.ndarray, gallery: int = GALLERY, k: int = 10
) -> dict[str, np.ndarray]:
    """Class level (many images match a prompt): mAP@10 and P@10 per (prompt, gallery), and zero-shot
    classification correctness per image (nearest of the prompts)."""
    ap, prec = [], []
    for start in range(0, len(image) - gallery + 1, gallery):
        sims = prompts @ image[start : start + gallery].T
        lab = labels[start : start + gallery]
        for c in range(len(prompts)):
            top = np.argsort(-sims[c], kind="stable")[:k]
            rel = (lab[top] == c).astype(float)
            hits = np.cumsum(rel)
            n_rel = min(k, int((lab == c).sum()))
            ap.append(float((rel * hits / np.arange(1, k + 1)).sum() / n_rel) if n_rel else 0.0)
            prec.append(float(rel.mean()))
    correct = (np.argmax(image @ prompts.T, axis=1) == labels).astype(float)
    return {"mAP@10": np.asarray(ap), "P@10": np.asarray(prec), "accuracy": correct}
