"""PyTorch reference outputs computed from an export's saved checkpoints with transformers' own code.

Served outputs are compared with this, so it shares nothing with the serving path: transformers'
tokenizers, ``CLIPModel.get_*_features`` and ``CLIPImageProcessorPil`` (shortest side to 224 bicubic,
centre crop, rescale, CLIP mean/std) rather than the ONNX towers and ``vitrine.tokenization``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.towers import load_clip, load_cross_encoder
from vitrine.contracts import CLIP_CONTEXT_LENGTH, MINILM_MAX_LENGTH, RERANK_MAX_LENGTH

FloatArray = npt.NDArray[np.float32]


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features``; 4.x returned the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TorchReference:
    def __init__(self, artifacts_dir: Path) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPTokenizer

        root = Path(artifacts_dir) / "checkpoints"
        self._clip: Any = load_clip(root / "clip")
        self._clip_tok = CLIPTokenizer.from_pretrained(root / "clip")
        config = root / "clip" / "preprocessor_config.json"
        options = json.loads(config.read_text()) if config.is_file() else {}
        options.pop("image_processor_type", None)
        options.pop("processor_class", None)
        self._image_processor = CLIPImageProcessorPil(**options)
        self._cross: Any = load_cross_encoder(root / "cross_encoder")
        self._pair_tok = AutoTokenizer.from_pretrained(root / "cross_encoder")
        self._minilm_root = root / "minilm"
        self._minilm: Any = None

    def _sentence(self) -> tuple[Any, Any]:
        """transformers' BertModel and tokenizer of the exported sentence encoder (loaded on first use)."""
        from transformers import AutoModel, AutoTokenizer

        if self._minilm is None:
            model = AutoModel.from_pretrained(self._minilm_root, attn_implementation="eager").eval()
            self._minilm = (model, AutoTokenizer.from_pretrained(self._minilm_root))
        return self._minilm

    @torch.inference_mode()
    def embed_minilm(self, texts: Sequence[str]) -> FloatArray:
        """sentence-transformers' recipe for all-MiniLM-L6-v2 (its modules.json: Transformer with
        max_seq_length 256 -> Pooling mean -> Normalize), written out with transformers' own code."""
        model, tok = self._sentence()
        enc = tok(
            list(texts), padding=True, truncation=True, max_length=MINILM_MAX_LENGTH, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> FloatArray:
        enc = self._clip_tok(
            list(texts), padding=True, truncation=True, max_length=CLIP_CONTEXT_LENGTH, return_tensors="pt"
        )
        out = _features(
            self._clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        )
        return torch.nn.functional.normalize(out, dim=-1).numpy().astype(np.float32)

    def pixel_values(self, images: Sequence[Any]) -> FloatArray:
        out = self._image_processor(list(images), return_tensors="np")["pixel_values"]
        return np.asarray(out, dtype=np.float32)

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: FloatArray) -> FloatArray:
        out = _features(self._clip.get_image_features(pixel_values=torch.from_numpy(pixel_values)))
        return torch.nn.functional.normalize(out, dim=-1).numpy().astype(np.float32)

    def embed_image(self, images: Sequence[Any]) -> FloatArray:
        return self.embed_pixels(self.pixel_values(images))

    @torch.inference_mode()
    def rerank(self, query: str, passages: Sequence[str]) -> FloatArray:
        enc = self._pair_tok(
            [query] * len(passages),
            list(passages),
            padding=True,
            truncation="only_second",
            max_length=RERANK_MAX_LENGTH,
            return_tensors="pt",
        )
        return self._cross(**enc).logits[:, 0].numpy().astype(np.float32)
