"""The two-tower's scores: every item through the item tower, each case's history through the user
tower, their dot products.

Training validates with them and evaluation ranks with them, so both read one definition (and
evaluation does not reach into training for it).
"""

from __future__ import annotations

import numpy as np
import torch

from recommend.data import Case, pad
from recommend.items import ItemTable
from recommend.model import TwoTower


def item_features(table: ItemTable) -> list[torch.Tensor]:
    """The item tower's inputs for every catalog item, in table order (the ONNX item tower's too)."""
    return [
        torch.from_numpy(table.content),
        torch.from_numpy(table.category),
        torch.from_numpy(table.brand),
        torch.from_numpy(table.color),
        torch.from_numpy(table.price_bucket),
        torch.arange(len(table), dtype=torch.int64),
    ]


def user_vectors(model: TwoTower, item_vecs: torch.Tensor, cases: list[Case]) -> torch.Tensor:
    """One user vector per case from its history's item vectors (padding rows zeroed)."""
    items, types, ages = (torch.from_numpy(a) for a in pad([c.history for c in cases]))
    hist = item_vecs[items] * (types > 0).unsqueeze(-1)
    return model.user(hist, types, ages)


@torch.no_grad()
def score_cases(model: TwoTower, table: ItemTable, cases: list[Case]) -> np.ndarray:
    """[cases, items] scores (user . item) from the PyTorch model, in eval mode."""
    model.eval()
    item_vecs = model.items(*item_features(table))
    out = []
    for start in range(0, len(cases), 1024):
        out.append(user_vectors(model, item_vecs, cases[start : start + 1024]) @ item_vecs.T)
    return torch.cat(out).numpy() if out else np.zeros((0, len(table)), dtype=np.float32)
