"""Model and tensor names: the one contract shared by the exporter, the Triton configs and every client.

The exporter names ONNX inputs/outputs from here, the model repository renders ``config.pbtxt`` from here,
the gateway and load tests call Triton with these names, and a test checks every rendered config
against its ONNX graph. Nothing else in the code base spells a model or tensor name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

EMBED_DIM = 512
"""CLIP ViT-B/32 projection width; the index stores vectors of this size."""

CLIP_CONTEXT_LENGTH = 77
"""CLIP's positional table holds 77 tokens (BOS + 75 + EOS): longer text is truncated, deliberately."""

CLIP_TEXT_BUCKETS = (8, 16, 32, 77)
"""Token lengths text is padded to, so requests of similar length share a shape and batch together.

CLIP's causal mask makes trailing pad tokens invisible to the EOT position, so padding to a bucket changes
nothing in the embedding while costing far less than padding every query to 77.
"""

CLIP_IMAGE_SIZE = 224
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

RERANK_MAX_LENGTH = 256
"""Token budget of one (query, passage) pair; the passage side is truncated first."""

RERANK_PAIR_BUCKETS = tuple(range(8, RERANK_MAX_LENGTH + 1, 8))
"""Pair lengths a re-rank request is padded to: every multiple of 8 up to the budget.

Unlike text queries, one re-rank request is already a batch (a query times its N candidates), so padding
waste costs more than the cross-request batching coarse buckets would buy: pairs of ~50 tokens padded to a
64 bucket spent ~28% of the cross-encoder's compute on padding. Multiples of 8 keep GPU tensor cores fed.
"""

MINILM_DIM = 384
"""all-MiniLM-L6-v2's sentence embedding width (mean of its token embeddings); the ``minilm`` space."""

MINILM_MAX_LENGTH = 256
"""Tokens the sentence encoder reads ([CLS] + 254 + [SEP]), sentence-transformers' own limit for this
model: longer text is truncated, deliberately, and flagged."""

MINILM_BUCKETS = (8, 16, 32, 64, 128, MINILM_MAX_LENGTH)
"""Token lengths sentence-encoder input is padded to (dynamic batching needs equal shapes). Mean pooling
reads the attention mask, so padding changes nothing in the embedding."""

MAX_IMAGE_PIXELS = 40_000_000
"""Decoded images above this many pixels are refused before decoding (decompression-bomb guard)."""

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MIN_IMAGE_SIDE = 8
MAX_PASSAGES = 256
"""Most passages one ``rerank`` request may carry (also the cross-encoder's max batch size)."""

MAX_PASSAGES_PARAMETER = "max_passages"
"""The ``rerank`` config parameter that states ``MAX_PASSAGES`` to clients: Triton's dims cannot bound a
variable axis (``-1`` is unbounded, a number fixes the shape), so the limit travels as a parameter."""

MAX_TEXT_CHARS = 100_000
"""Text longer than this is refused outright; anything shorter is tokenized and truncated if needed."""


class Model(str, Enum):
    """Triton model names, read as pipelines: pre-processing -> core encoder -> ensemble."""

    CLIP_TEXT_TOKENIZE = "clip_text_tokenize"
    CLIP_TEXT_ENCODER = "clip_text_encoder"
    EMBED_TEXT = "embed_text"

    CLIP_IMAGE_PREPROCESS = "clip_image_preprocess"
    CLIP_IMAGE_ENCODER = "clip_image_encoder"
    EMBED_IMAGE = "embed_image"

    MINILM_TOKENIZE = "minilm_tokenize"
    MINILM_ENCODER = "minilm_encoder"
    EMBED_MINILM = "embed_minilm"

    RERANK_TOKENIZE = "rerank_tokenize"
    CROSS_ENCODER = "cross_encoder"
    RERANK = "rerank"

    # recommendations: rendered only when a recommender was trained (its artifacts are their own directory)
    USER_TOWER = "user_tower"


class Tensor(str, Enum):
    """Tensor names, shared by ONNX graphs, configs and clients."""

    # embed_text ensemble and its steps
    TEXT = "TEXT"  # BYTES [1] per request: UTF-8 query text
    INPUT_IDS = "input_ids"  # INT64 [seq]
    ATTENTION_MASK = "attention_mask"  # INT64 [seq]
    TOKEN_TYPE_IDS = "token_type_ids"  # INT64 [seq] (cross-encoder only)
    EOT_INDEX = "eot_index"  # INT64 [1]: position of CLIP's end-of-text token
    TRUNCATED = "TRUNCATED"  # BOOL [1]: the text was longer than the model's context and was cut
    EMBEDDING = "EMBEDDING"  # FP32 [512] (CLIP) or [384] (MiniLM), L2-normalised

    # embed_image ensemble and its steps
    IMAGE = "IMAGE"  # BYTES [1]: encoded JPEG/PNG/WebP bytes
    PIXEL_VALUES = "pixel_values"  # FP32 [3, 224, 224], CLIP-normalised

    # rerank ensemble and its steps
    QUERY = "QUERY"  # BYTES [1]
    PASSAGES = "PASSAGES"  # BYTES [n]
    SCORES = "SCORES"  # FP32 [n]: cross-encoder logits, higher is more relevant
    LOGITS = "logits"  # FP32 [1] per pair, the cross-encoder head's raw output

    # user_tower: a shopper's last MAX_HISTORY events -> one vector in the index's rec space
    HISTORY = "HISTORY"  # FP32 [MAX_HISTORY, REC_DIM]: rec-space vectors of the items, newest first, 0-padded
    EVENT_TYPES = "EVENT_TYPES"  # INT64 [MAX_HISTORY]: vitrine.events.EVENT_CODE, 0 = padding
    AGE_HOURS = "AGE_HOURS"  # FP32 [MAX_HISTORY]: hours between each event and the request
    USER_EMBEDDING = "USER_EMBEDDING"  # FP32 [REC_DIM], L2-normalised

    # item_tower (offline): content and attributes -> rec-space vector
    CONTENT = "content"  # FP32 [2 * EMBED_DIM]: the product's image and title vectors
    CATEGORY = "category"  # INT64 [1] vocabulary ids (the trained model's manifest holds the vocabularies)
    BRAND = "brand"
    COLOR = "color"
    PRICE_BUCKET = "price_bucket"
    ITEM_INDEX = "item_index"  # INT64 [1]: the id embedding's row
    ITEM_EMBEDDING = "ITEM_EMBEDDING"  # FP32 [REC_DIM], L2-normalised


class Target(str, Enum):
    """Runtime targets rendered from one model-repository specification."""

    CPU = "cpu"  # embedded tritonserver (nvidia-pytriton wheel), Python backend + onnxruntime
    GPU = "gpu"  # NVIDIA Triton container: onnxruntime backend with TensorRT fp16, KIND_GPU
    GPU_EMBEDDED = "gpu-embedded"  # the wheel's tritonserver on a GPU host, no container: the CPU rendering
    # with Python-backend encoders on KIND_GPU running onnxruntime-gpu (model_repository.gpu_embedded)


class Weights(str, Enum):
    """Where an artifact's weights came from; every artifact and every benchmark figure records it."""

    PRETRAINED = "pretrained"  # a real checkpoint (hub id or local directory)
    RANDOM = "random"  # architecture-identical, seeded random weights (offline)
    PARTIAL = "partial"  # real encoder weights with a seeded random head (offline cross-encoder)


class Size(str, Enum):
    FULL = "full"  # ViT-B/32 CLIP + MiniLM-L6 cross-encoder: real compute cost
    TINY = "tiny"  # same graph shapes, a few small layers: for tests


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a client sees it: Triton wire dtype and per-request dims (no batch axis)."""

    name: Tensor
    dtype: str  # "BYTES", "FP32", "BOOL", "INT64"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class EnsembleIO:
    """The public face of one ensemble: what a plain tritonclient sends and receives, and whether requests
    carry a leading batch axis. The model repository renders the ensemble's config from this, and every
    client builds its requests from it (``vitrine.triton``), so nothing is probed at run time."""

    model: Model
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]
    max_batch_size: int
    """0: one request is the whole input (``rerank``: a query and its passages); > 0: Triton batches."""

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(t.name for t in self.input_specs)

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        return tuple(t.name for t in self.output_specs)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def spec(self, tensor: Tensor) -> TensorSpec:
        return next(t for t in (*self.input_specs, *self.output_specs) if t.name == tensor)


EMBED_TEXT_IO = EnsembleIO(
    Model.EMBED_TEXT,
    (TensorSpec(Tensor.TEXT, "BYTES", (1,)),),
    (TensorSpec(Tensor.EMBEDDING, "FP32", (EMBED_DIM,)), TensorSpec(Tensor.TRUNCATED, "BOOL", (1,))),
    max_batch_size=64,
)
EMBED_IMAGE_IO = EnsembleIO(
    Model.EMBED_IMAGE,
    (TensorSpec(Tensor.IMAGE, "BYTES", (1,)),),
    (TensorSpec(Tensor.EMBEDDING, "FP32", (EMBED_DIM,)),),
    max_batch_size=32,
)
RERANK_IO = EnsembleIO(
    Model.RERANK,
    (TensorSpec(Tensor.QUERY, "BYTES", (1,)), TensorSpec(Tensor.PASSAGES, "BYTES", (-1,))),
    (TensorSpec(Tensor.SCORES, "FP32", (-1,)), TensorSpec(Tensor.TRUNCATED, "BOOL", (-1,))),
    max_batch_size=0,
)
EMBED_MINILM_IO = EnsembleIO(
    Model.EMBED_MINILM,
    (TensorSpec(Tensor.TEXT, "BYTES", (1,)),),
    (TensorSpec(Tensor.EMBEDDING, "FP32", (MINILM_DIM,)), TensorSpec(Tensor.TRUNCATED, "BOOL", (1,))),
    max_batch_size=64,
)
"""all-MiniLM-L6-v2 sentence embeddings (real weights offline): WordPiece -> encoder -> mean -> L2 norm."""
ENSEMBLES = (EMBED_TEXT_IO, EMBED_IMAGE_IO, RERANK_IO, EMBED_MINILM_IO)

REC_DIM = 64
"""Width of the recommendation space (user and item tower outputs; the index's ``rec.<version>`` spaces)."""

ITEM_TOWER = "item_tower"
"""Artifact name of the item tower's ONNX graph; it runs offline (its vectors live in the index), not on
Triton, so it is not a ``Model``."""

REC_HISTORY = 20
"""Events the user tower reads (``vitrine.events.MAX_HISTORY`` is the same number)."""

USER_TOWER_IO = EnsembleIO(
    Model.USER_TOWER,
    (
        TensorSpec(Tensor.HISTORY, "FP32", (REC_HISTORY, REC_DIM)),
        TensorSpec(Tensor.EVENT_TYPES, "INT64", (REC_HISTORY,)),
        TensorSpec(Tensor.AGE_HOURS, "FP32", (REC_HISTORY,)),
    ),
    (TensorSpec(Tensor.USER_EMBEDDING, "FP32", (REC_DIM,)),),
    max_batch_size=64,
)
"""Served directly (no ensemble around it): the gateway sends padded histories, Triton batches them."""

BASE_VERSION = 1
"""The exported encoders' Triton version; adapted encoders are served as later versions beside it."""


def ensemble_name(model: Model, version: int = BASE_VERSION) -> str:
    """Triton name of ensemble ``model`` with its versioned encoder pinned to ``version``.

    An ensemble's config is shared by all its versions, so a step cannot follow the version a client
    asks for; each encoder version gets its own ensemble instead: ``embed_text`` runs encoder version 1,
    ``embed_text_v2`` version 2. Inputs and outputs are the same contract for all of them.
    """
    return model.value if version == BASE_VERSION else f"{model.value}_v{version}"
