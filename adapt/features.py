"""CLIP features computed by the very ONNX graphs Triton serves, cached per data set and artifact.

The exported encoders run in process through onnxruntime; images pass through ``vitrine.pixels`` (the
served transform) and texts through ``vitrine.tokenization`` (the served tokenizer), so a cached feature
equals what ``embed_image`` / ``embed_text`` return for the same input. Cache files are keyed by the
graph's checksum and the data set, so new weights never reuse stale features.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from vitrine.contracts import Model, Tensor
from vitrine.pixels import pixel_values_of
from vitrine.tokenization import ClipTokenizer

ONNX_FILE = "model.onnx"
CLIP_TOKENIZER = Path("tokenizers/clip/tokenizer.json")


def session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session without idle spinning (it steals cores from everything else)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Encoders:
    """The exported CLIP text and image towers of one artifact directory."""

    artifacts: Path
    batch: int = 32

    def __post_init__(self) -> None:
        self.text_path = self.artifacts / Model.CLIP_TEXT_ENCODER.value / ONNX_FILE
        self.image_path = self.artifacts / Model.CLIP_IMAGE_ENCODER.value / ONNX_FILE
        self._text = session(self.text_path)
        self._image = session(self.image_path)
        self.tokenizer = ClipTokenizer.from_file(self.artifacts / CLIP_TOKENIZER)
        self.digest = hashlib.sha256(
            (file_digest(self.text_path) + file_digest(self.image_path)).encode()
        ).hexdigest()[:16]
        manifest = self.artifacts / "manifest.json"
        models = json.loads(manifest.read_text()).get("models", {}) if manifest.is_file() else {}
        self.weights = str(models.get(Model.CLIP_IMAGE_ENCODER.value, {}).get("weights", "unknown"))

    def embed_texts(self, texts: Sequence[str], progress: str = "") -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(texts), self.batch), desc=progress or "text", disable=not progress):
            enc = self.tokenizer.encode_batch(texts[i : i + self.batch])
            feeds = {Tensor.INPUT_IDS.value: enc.input_ids, Tensor.EOT_INDEX.value: enc.eot_index}
            out.append(self._text.run(None, feeds)[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def embed_images(self, images: Sequence[Image.Image], progress: str = "") -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(images), self.batch), desc=progress or "image", disable=not progress):
            pixels = np.stack([pixel_values_of(im) for im in images[i : i + self.batch]])
            out.append(self._image.run(None, {Tensor.PIXEL_VALUES.value: pixels})[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Features:
    """Cached features of one split: ``image[i]`` and ``text[i]`` belong together; ``groups`` as in
    ``adapt.data.Split``."""

    image: np.ndarray
    text: np.ndarray
    groups: np.ndarray


def cached(
    encoders: Encoders,
    key: str,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    groups: np.ndarray,
    cache_dir: Path | None,
    progress: bool = True,
) -> Features:
    """Features of one split, read from ``cache_dir`` when this graph already embedded this data."""
    path = None
    if cache_dir is not None:
        name = hashlib.sha256(f"{encoders.digest}|{key}|{len(images)}".encode()).hexdigest()[:20]
        path = cache_dir / f"{name}.npz"
        if path.is_file():
            data = np.load(path)
            return Features(data["image"], data["text"], data["groups"])
    unique = sorted(set(texts))
    text_vecs = encoders.embed_texts(unique, progress=f"{key} text" if progress else "")
    row = {t: i for i, t in enumerate(unique)}
    feats = Features(
        encoders.embed_images(images, progress=f"{key} images" if progress else ""),
        text_vecs[[row[t] for t in texts]],
        np.asarray(groups, np.int64),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=feats.image, text=feats.text, groups=feats.groups)
    return feats
