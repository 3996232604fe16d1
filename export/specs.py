"""One frozen spec per tower: the tensors it exposes, its dynamic axes and how closely it must agree.

The model repository renders its Triton configs from the same contract names, and a test checks every
config against the graphs written from these specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vitrine.contracts import CLIP_IMAGE_SIZE, EMBED_DIM, MINILM_DIM, Model, Tensor

OPSET = 17
"""LayerNormalization became an ONNX op in 17; earlier opsets decompose it and overflow in fp16."""

Dim = int | str
"""A fixed size, or the name of a dynamic axis."""


class Family(str, Enum):
    """Checkpoint a tower is cut from: both CLIP towers share one checkpoint."""

    CLIP = "clip"
    CROSS_ENCODER = "cross_encoder"
    MINILM = "minilm"  # the sentence encoder (all-MiniLM-L6-v2): its own checkpoint and version


class Kind(str, Enum):
    EMBEDDING = "embedding"  # L2-normalised rows: compared by cosine and by retrieval ranking
    SCORE = "score"  # one logit per row: compared by absolute difference and by re-rank ranking


@dataclass(frozen=True)
class TensorSpec:
    name: Tensor
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name.value, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class TowerSpec:
    model: Model
    family: Family
    kind: Kind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = OPSET
    min_cosine: float = 0.9999
    """fp32 embeddings: every row's cosine with PyTorch at least this."""
    max_abs_score: float = 1e-4
    """fp32 scores: every score within this of PyTorch."""
    fp16_min_cosine: float = 0.999
    fp16_max_abs_score: float = 1e-2

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name.value: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }


CLIP_TEXT = TowerSpec(
    model=Model.CLIP_TEXT_ENCODER,
    family=Family.CLIP,
    kind=Kind.EMBEDDING,
    inputs=(
        TensorSpec(Tensor.INPUT_IDS, "int64", ("batch", "seq")),
        TensorSpec(Tensor.EOT_INDEX, "int64", ("batch", 1)),
    ),
    outputs=(TensorSpec(Tensor.EMBEDDING, "float32", ("batch", EMBED_DIM)),),
)

CLIP_IMAGE = TowerSpec(
    model=Model.CLIP_IMAGE_ENCODER,
    family=Family.CLIP,
    kind=Kind.EMBEDDING,
    inputs=(TensorSpec(Tensor.PIXEL_VALUES, "float32", ("batch", 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)),),
    outputs=(TensorSpec(Tensor.EMBEDDING, "float32", ("batch", EMBED_DIM)),),
)

CROSS_ENCODER = TowerSpec(
    model=Model.CROSS_ENCODER,
    family=Family.CROSS_ENCODER,
    kind=Kind.SCORE,
    inputs=(
        TensorSpec(Tensor.INPUT_IDS, "int64", ("batch", "seq")),
        TensorSpec(Tensor.ATTENTION_MASK, "int64", ("batch", "seq")),
        TensorSpec(Tensor.TOKEN_TYPE_IDS, "int64", ("batch", "seq")),
    ),
    outputs=(TensorSpec(Tensor.LOGITS, "float32", ("batch", 1)),),
)

MINILM = TowerSpec(
    # token embeddings -> mean over the attention mask -> L2 norm, all inside the graph
    model=Model.MINILM_ENCODER,
    family=Family.MINILM,
    kind=Kind.EMBEDDING,
    inputs=(
        TensorSpec(Tensor.INPUT_IDS, "int64", ("batch", "seq")),
        TensorSpec(Tensor.ATTENTION_MASK, "int64", ("batch", "seq")),
    ),
    outputs=(TensorSpec(Tensor.EMBEDDING, "float32", ("batch", MINILM_DIM)),),
)

TOWERS: tuple[TowerSpec, ...] = (CLIP_TEXT, CLIP_IMAGE, CROSS_ENCODER, MINILM)
SPECS: dict[Model, TowerSpec] = {t.model: t for t in TOWERS}
