"""PyTorch modules with exactly the serving signatures, cut from the saved checkpoints.

The text tower reads the embedding at an explicit ``eot_index`` instead of CLIP's argmax over token ids
(argmax over int64 fails in some runtimes), and both CLIP towers L2-normalise inside the graph so every
runtime returns index-ready vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class ClipTextTower(nn.Module):
    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection

    def forward(self, input_ids: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids).last_hidden_state
        index = eot_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        pooled = torch.gather(hidden, 1, index).squeeze(1)
        return _normalise(self.text_projection(pooled))


class ClipImageTower(nn.Module):
    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return _normalise(self.visual_projection(pooled))


class CrossEncoderTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.logits


class SentenceTower(nn.Module):
    """A BERT encoder as a sentence encoder, as sentence-transformers runs all-MiniLM-L6-v2: token
    embeddings averaged over the attention mask, then L2-normalised (its ``Pooling`` + ``Normalize``
    modules), so the served vector is index-ready."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        # not ``F.normalize``: its expand_as leaves the graph's output width symbolic instead of 384
        return pooled / torch.linalg.vector_norm(pooled, dim=-1, keepdim=True).clamp(min=1e-12)


def load_sentence_encoder(path: Path) -> Any:
    from transformers import BertModel

    return BertModel.from_pretrained(path, attn_implementation="eager", add_pooling_layer=False).eval()


def load_clip(path: Path) -> Any:
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(path, attn_implementation="eager").eval()


def load_cross_encoder(path: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
