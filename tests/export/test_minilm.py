"""The real all-MiniLM-L6-v2 through the export path: ONNX against PyTorch on real texts, and against
sentence-transformers' recipe (transformers' own tokenizer, mean pooling, normalisation) on a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from export import minilm, validate
from export.checkpoints import offline_minilm
from export.pipeline import export_onnx
from export.specs import MINILM
from export.towers import SentenceTower, load_sentence_encoder
from vitrine.contracts import MINILM_DIM, MINILM_MAX_LENGTH, Size, Weights
from vitrine.tokenization import SentenceTokenizer

CORPUS = 50
"""A smaller corpus than the export's own probe: the real model costs seconds per hundred passages here."""
QUERIES = [
    "red leather ankle boots",
    "crimson booties",
    "boots for rainy days",
    "porcelain coffee cup",
    "noise cancelling headphones for the commute",
]
LONG = "the " * 300 + "end"  # beyond 256 tokens: truncated the same way on both sides


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("minilm")
    ckpt = offline_minilm(Size.FULL, 0, out / "checkpoints" / "minilm", random_weights=False)
    minilm.write_tokenizer(out, ckpt)
    tower = SentenceTower(load_sentence_encoder(ckpt.path)).eval()
    path = out / "minilm_encoder" / "model.onnx"
    export_onnx(MINILM, tower, minilm.dummy(), path, 17)

    @torch.inference_mode()
    def run_torch(feeds: validate.Feeds) -> np.ndarray:
        return np.asarray(tower(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy())

    figures = validate.validate(MINILM, path, run_torch, minilm.probe(out, seed=0, corpus=CORPUS))
    return {"ckpt": ckpt, "out": out, "path": path, "figures": figures}


def _served(exported: dict[str, Any], texts: list[str]) -> np.ndarray:
    tok = SentenceTokenizer.from_file(exported["out"] / minilm.TOKENIZER_FILE)
    batch = tok.encode_batch(texts)
    session = validate.session(exported["path"])
    out = session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]
    return np.asarray(out)


@torch.inference_mode()
def _sentence_transformers_recipe(ckpt_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt_dir)
    model = AutoModel.from_pretrained(ckpt_dir).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=MINILM_MAX_LENGTH, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return np.asarray(torch.nn.functional.normalize(pooled, dim=-1).numpy())


def test_export_validates_against_pytorch_on_real_texts(exported: dict[str, Any]) -> None:
    assert exported["ckpt"].weights is Weights.PRETRAINED
    figures = exported["figures"]
    assert figures["min_cosine"] >= 0.9999
    assert figures["top10_overlap"] == 1.0 and figures["top10_agreement_within_noise"] == 1.0
    assert figures["rows"] == validate.QUERIES + CORPUS


def test_served_path_matches_the_sentence_transformers_recipe(exported: dict[str, Any]) -> None:
    corpus = validate.product_passages(30, seed=5)
    served = _served(exported, QUERIES + corpus)
    expected = _sentence_transformers_recipe(exported["ckpt"].path, QUERIES + corpus)
    assert served.shape == (len(QUERIES) + len(corpus), MINILM_DIM)
    long_served, long_expected = (
        _served(exported, [LONG]),
        _sentence_transformers_recipe(exported["ckpt"].path, [LONG]),
    )
    cosine = np.concatenate([(served * expected).sum(axis=1), (long_served * long_expected).sum(axis=1)])
    assert cosine.min() >= 0.9999, cosine.min()
    n = len(QUERIES)
    assert validate.topk_agreement(served[:n] @ served[n:].T, expected[:n] @ expected[n:].T) == 1.0


def test_real_weights_put_paraphrases_together(exported: dict[str, Any]) -> None:
    """What random weights cannot do: a paraphrase sits closer than a different product."""
    boots, booties, mug = _served(exported, ["red leather ankle boots", "crimson booties", "ceramic mug"])
    assert float(boots @ booties) > float(boots @ mug) + 0.1
