"""Adapter heads on frozen CLIP embeddings, one per side (image, text).

``residual``: ``normalize((1 - a) * e + a * MLP(e))`` (seed 004). Its last layer starts at zero, so an
untrained adapter *is* zero-shot CLIP and training can only move away from it as far as the loss pays
for; ``a`` bounds how far. ``naive``: ``normalize(MLP(e))``, the two-tower head seed 004 found worse
than zero-shot on pretrained CLIP because it discards the pretrained alignment.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn


class HeadKind(str, Enum):
    RESIDUAL = "residual"
    NAIVE = "naive"


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class Head(nn.Module):
    """One side's head: a two-layer MLP, mixed with its input (residual) or replacing it (naive)."""

    def __init__(self, dim: int, hidden: int, kind: HeadKind, alpha: float) -> None:
        super().__init__()
        self.kind = kind
        self.alpha = float(alpha) if kind is HeadKind.RESIDUAL else 1.0
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if kind is HeadKind.RESIDUAL:
            last = self.mlp[2]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if self.kind is HeadKind.NAIVE:
            return _normalise(self.mlp(embedding))
        return _normalise((1.0 - self.alpha) * embedding + self.alpha * self.mlp(embedding))


class AdapterPair(nn.Module):
    """Image and text heads plus CLIP's learnable logit scale (log of the inverse temperature)."""

    def __init__(self, dim: int, hidden: int, kind: HeadKind, alpha: float, init_temperature: float) -> None:
        super().__init__()
        self.image = Head(dim, hidden, kind, alpha)
        self.text = Head(dim, hidden, kind, alpha)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP's cap on the inverse temperature
