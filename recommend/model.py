"""The two towers (PyTorch). Both end in L2-normalised ``REC_DIM`` vectors; a score is their dot product.

Item tower: the product's CLIP image and title vectors (projected), category, brand, colour and price-bucket
embeddings, and an id embedding, through a small MLP. Content and attributes let an item with few events
sit near similar items; the id embedding learns what content cannot say.

User tower: the rec-space vectors of the last ``MAX_HISTORY`` events' items (what the index serves, so the
served tower reads exactly what it was trained on), newest first. Each event gets a weight from attention
over the item, its event type, its position (order) and its age (recency), starting from the event-type
prior (purchase > favourite/cart > click > view); the weighted mean goes through a residual MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from recommend.items import CONTENT_DIM, PRICE_BUCKETS
from vitrine.contracts import REC_DIM
from vitrine.events import EVENT_CODE, EVENT_WEIGHT, MAX_HISTORY


@dataclass(frozen=True)
class TowerSpec:
    """Default sizes chosen by validation NDCG@10 on the demo data among three runs (docs/BENCHMARKS.md):
    hidden 128 / attr 16 / id 32 (0.072), hidden 256 / id 64 (0.073), and these (0.075)."""

    dim: int = REC_DIM
    hidden: int = 256
    attr_dim: int = 32
    id_dim: int = 128
    dropout: float = 0.1


class ItemTower(nn.Module):
    def __init__(self, spec: TowerSpec, n_items: int, n_category: int, n_brand: int, n_color: int) -> None:
        super().__init__()
        self.content = nn.Linear(CONTENT_DIM, spec.hidden)
        self.category = nn.Embedding(n_category, spec.attr_dim)
        self.brand = nn.Embedding(n_brand, spec.attr_dim)
        self.color = nn.Embedding(n_color, spec.attr_dim)
        self.price = nn.Embedding(PRICE_BUCKETS, spec.attr_dim)
        self.item = nn.Embedding(n_items, spec.id_dim)
        nn.init.normal_(self.item.weight, std=0.01)
        width = spec.hidden + 4 * spec.attr_dim + spec.id_dim
        self.mlp = nn.Sequential(
            nn.Linear(width, spec.hidden),
            nn.GELU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.dim),
        )

    def forward(
        self,
        content: torch.Tensor,
        category: torch.Tensor,
        brand: torch.Tensor,
        color: torch.Tensor,
        price_bucket: torch.Tensor,
        item_index: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat(
            [
                self.content(content),
                self.category(category),
                self.brand(brand),
                self.color(color),
                self.price(price_bucket),
                self.item(item_index),
            ],
            dim=-1,
        )
        return F.normalize(self.mlp(x), dim=-1)


class UserTower(nn.Module):
    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        n_types = len(EVENT_CODE) + 1
        prior = torch.zeros(n_types)
        for kind, code in EVENT_CODE.items():
            prior[code] = math.log(EVENT_WEIGHT[kind])
        self.type_prior = nn.Parameter(prior)
        self.type_emb = nn.Embedding(n_types, spec.dim)
        self.position = nn.Embedding(MAX_HISTORY, spec.dim)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.attend = nn.Sequential(
            nn.Linear(spec.dim + 1, spec.hidden // 2), nn.Tanh(), nn.Linear(spec.hidden // 2, 1)
        )
        self.mlp = nn.Sequential(
            nn.Linear(spec.dim, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, spec.dim)
        )
        self.register_buffer("positions", torch.arange(MAX_HISTORY), persistent=False)

    def forward(
        self, history: torch.Tensor, event_types: torch.Tensor, age_hours: torch.Tensor
    ) -> torch.Tensor:
        """history [b, H, dim] (newest first, zero rows for padding), event_types [b, H] (0 = pad),
        age_hours [b, H]."""
        x = history + self.type_emb(event_types) + self.position(self.positions)[None]
        age = torch.log1p(age_hours.clamp(min=0.0)).unsqueeze(-1)
        logits = self.attend(torch.cat([x, age], dim=-1)).squeeze(-1) + self.type_prior[event_types]
        mask = event_types > 0
        logits = logits.masked_fill(~mask, -1e4)
        weights = torch.softmax(logits, dim=-1) * mask.to(history.dtype)
        pooled = (weights.unsqueeze(-1) * x).sum(dim=1)
        return F.normalize(pooled + self.mlp(pooled), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, spec: TowerSpec, n_items: int, vocab_sizes: dict[str, int]) -> None:
        super().__init__()
        self.spec = spec
        self.items = ItemTower(
            spec, n_items, vocab_sizes["category"], vocab_sizes["brand"], vocab_sizes["color"]
        )
        self.user = UserTower(spec)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.07)))
