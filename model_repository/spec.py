"""The model repository, declared once and rendered for each runtime target.

Every model is one :class:`ModelSpec`; :func:`render_config` turns a spec into a Triton ``ModelConfig``
message for :attr:`Target.CPU` (the embedded tritonserver: Python-backend models running the ONNX graphs
through onnxruntime, ``KIND_CPU``) or :attr:`Target.GPU` (NVIDIA's Triton container: the native
onnxruntime backend with the TensorRT accelerator in fp16, ``KIND_GPU``). Pre-processing stays a Python
model on both targets. Rendering goes through the protobuf message, so a config that is not a valid
``ModelConfig`` cannot be written.

Batching choices (measured by ``python -m benchmarks.triton``, see docs/BENCHMARKS.md):

* Encoders batch dynamically with preferred sizes; text is padded to ``CLIP_TEXT_BUCKETS`` by the
  tokenizer so requests of similar length share a shape (Triton only batches equal shapes).
* CPU queue delays are 0 everywhere (docs/BENCHMARKS.md, "Latency at the floor"): a delay is paid in
  full by every lone request, while under load requests queue behind the busy instances and leave as
  one batch without it (the text encoder: 150 vs 148 req/s at concurrency 8 with and without 2 ms, and
  a lone query 1.55x vs 1.27x the in-process floor).
* CPU encoders adapt their threads to the load (``adaptive_threads``): every core for a request that
  runs alone, the cores divided among the instances while they overlap.
  GPU delays (1-2 ms) are a starting point, not a measurement: there a batch of 32 costs little more
  than one, so waiting pays; re-measure on the GPU host.
* Every batching model has a bounded queue (``max_queue_size``) with ``REJECT``: overload is refused
  with UNAVAILABLE at once instead of queueing until every caller's deadline has passed.
* ``rerank`` has ``max_batch_size 0`` (one query and n passages per request); its tokenizer emits the
  n pairs as a batch of n for the ``cross_encoder``, which batches pairs of concurrent requests when
  their length bucket matches. PASSAGES holds at most ``MAX_PASSAGES``; dims cannot bound a variable
  axis, so the ensemble and its tokenizer (which refuses more) state the limit in a config parameter
  (``MAX_PASSAGES_PARAMETER``), where a client reading only Triton's model config finds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vitrine.contracts import (
    CLIP_IMAGE_SIZE,
    EMBED_DIM,
    EMBED_IMAGE_IO,
    EMBED_MINILM_IO,
    EMBED_TEXT_IO,
    MAX_PASSAGES,
    MAX_PASSAGES_PARAMETER,
    MINILM_DIM,
    RERANK_IO,
    USER_TOWER_IO,
    EnsembleIO,
    Model,
    Target,
    Tensor,
    TensorSpec,
)

VERSION = "1"
"""Every model is served as version 1; artifacts carry their own provenance in the manifest."""


class Role(str, Enum):
    PREPROCESS = "preprocess"  # Python backend on every target
    ENCODER = "encoder"  # ONNX graph: Python backend + onnxruntime on CPU, onnxruntime/TensorRT on GPU
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Io:
    name: Tensor
    dtype: str  # a ``DataType`` name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Batching:
    preferred: tuple[int, ...]
    max_queue_delay_us: int  # CPU target: chosen from the embedded-server benchmark
    max_queue_size: int
    gpu_queue_delay_us: int | None = None  # GPU target, where it differs (not measured here: no GPU)
    cpu: bool = True
    """False: the CPU target renders no batcher, so each request executes alone (where merging requests
    only makes every one of them wait for the whole merged batch)."""

    def delay_us(self, target: Target) -> int:
        if target is Target.GPU and self.gpu_queue_delay_us is not None:
            return self.gpu_queue_delay_us
        return self.max_queue_delay_us


@dataclass(frozen=True)
class Step:
    model: Model
    input_map: dict[str, str]  # step tensor -> ensemble tensor
    output_map: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    model: Model
    role: Role
    inputs: tuple[Io, ...]
    outputs: tuple[Io, ...]
    max_batch_size: int
    batching: Batching | None = None
    instances: dict[Target, int] = field(default_factory=lambda: {Target.CPU: 1, Target.GPU: 1})
    cpu_threads: int = 0
    """onnxruntime intra-op threads per CPU instance of an encoder (0: every core)."""
    tokenizes: Model | None = None
    """CPU target: this encoder also takes TEXT and does the work of this tokenizer model itself
    (``model_repository.text_feeds``), and its ensemble runs it as one step instead of two: a lone query
    crosses one Python-backend hop, not two. Other targets keep the two steps."""
    adaptive_threads: bool = False
    """CPU target: each instance runs a request on every core while no sibling instance computes, and on
    the cores divided among the instances while one does (``runtime.AdaptiveSession``): a lone request
    uses the whole machine, concurrent ones never put more busy threads than cores on it."""
    source: str | None = None  # Python-backend source under model_repository/backends/
    artifact: str | None = None  # directory of the artifacts holding this model's files
    files: tuple[str, ...] = ()  # artifact files placed next to model.py (tokenizers)
    parameters: dict[str, str] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    keep_versions: int = 0
    """> 0: Triton serves the latest N versions, so a new version is deployed while the previous one still
    answers (``version_policy: latest``); 0: version 1 only."""
    versioned: bool = False
    """An encoder served in several pinned versions side by side: version 1 from the export, version v
    (an adapted tower) from ``<artifacts>/versions/<v>/<model>/`` (``version_policy: specific``), and each
    ensemble over it rendered once per version with its step pinned (``ensemble_name``)."""
    cacheable: bool = False
    """Its answer is a pure function of its inputs, so Triton's response cache may answer a repeated
    request (``RenderOptions.response_cache_mb``); pinned versions keep separate entries (the key holds
    the model name and version)."""


TWO_INSTANCES = {Target.CPU: 2, Target.GPU: 2}
"""Batched Python models whose compute is short: one instance behind Triton's dynamic batcher showed
requests left queued ~500 ms after the instance had finished (traced); two instances never did."""


def _same(*names: Tensor) -> dict[str, str]:
    return {n.value: n.value for n in names}


def _io(t: TensorSpec, reshape: tuple[int, ...] | None = None) -> Io:
    return Io(t.name, "TYPE_STRING" if t.dtype == "BYTES" else f"TYPE_{t.dtype}", t.dims, reshape)


def _public(io: EnsembleIO, reshape: dict[Tensor, tuple[int, ...]] | None = None) -> dict[str, object]:
    """An ensemble's inputs, outputs and batch size, taken from its contract (declared once there)."""
    reshape = reshape or {}
    return {
        "model": io.model,
        "role": Role.ENSEMBLE,
        "inputs": tuple(_io(t) for t in io.input_specs),
        "outputs": tuple(_io(t, reshape.get(t.name)) for t in io.output_specs),
        "max_batch_size": io.max_batch_size,
        "cacheable": True,  # tokenize/decode -> encoder: the same inputs always give the same outputs
    }


PASSAGE_LIMIT = {MAX_PASSAGES_PARAMETER: str(MAX_PASSAGES)}
"""Stated by the ``rerank`` ensemble and the tokenizer that enforces it."""

T = Tensor
SPECS: tuple[ModelSpec, ...] = (
    # ---- embed_text: TEXT -> tokens padded to a bucket -> CLIP text tower ----
    ModelSpec(
        Model.CLIP_TEXT_TOKENIZE,
        Role.PREPROCESS,
        inputs=(Io(T.TEXT, "TYPE_STRING", (1,)),),
        outputs=(
            Io(T.INPUT_IDS, "TYPE_INT64", (-1,)),
            Io(T.EOT_INDEX, "TYPE_INT64", (1,)),
            Io(T.TRUNCATED, "TYPE_BOOL", (1,)),
        ),
        max_batch_size=64,
        batching=Batching(preferred=(), max_queue_delay_us=0, max_queue_size=256),
        source="clip_text_tokenize.py",
        # Two instances: in front of a single busy instance, Triton's batcher left requests queued ~500 ms
        # after the instance was free again (traced; docs/BENCHMARKS.md, "the 0.5 s stall, traced").
        instances=TWO_INSTANCES,
        artifact="tokenizers/clip",
        files=("tokenizer.json",),
    ),
    ModelSpec(
        Model.CLIP_TEXT_ENCODER,
        Role.ENCODER,
        inputs=(Io(T.INPUT_IDS, "TYPE_INT64", (-1,)), Io(T.EOT_INDEX, "TYPE_INT64", (1,))),
        outputs=(Io(T.EMBEDDING, "TYPE_FP32", (EMBED_DIM,)),),
        max_batch_size=64,
        # CPU: no queue delay. A 2 ms delay cost every lone query 2 ms (served p50 1.55x the in-process
        # floor against 1.27x without it) and bought nothing at concurrency 8 (150 vs 148 req/s): requests
        # queue while both instances compute and leave as one batch anyway (docs/BENCHMARKS.md, "Latency
        # at the floor").
        batching=Batching(
            preferred=(8, 16, 32, 64), max_queue_delay_us=0, max_queue_size=256, gpu_queue_delay_us=1_000
        ),
        artifact="clip_text_encoder",
        versioned=True,
        # Two instances (one alone behind the batcher left requests queued ~0.5 s after it was free:
        # traced), threads adapted to the load: a lone query on every core, concurrent ones on a core
        # each (``adaptive_threads``).
        instances={Target.CPU: 2, Target.GPU: 1},
        adaptive_threads=True,
        tokenizes=Model.CLIP_TEXT_TOKENIZE,
    ),
    ModelSpec(
        **_public(EMBED_TEXT_IO),  # type: ignore[arg-type]
        steps=(
            Step(
                Model.CLIP_TEXT_TOKENIZE,
                _same(T.TEXT),
                _same(T.INPUT_IDS, T.EOT_INDEX, T.TRUNCATED),
            ),
            Step(Model.CLIP_TEXT_ENCODER, _same(T.INPUT_IDS, T.EOT_INDEX), _same(T.EMBEDDING)),
        ),
    ),
    # ---- embed_image: encoded bytes -> decode/resize/crop/normalise -> CLIP image tower ----
    ModelSpec(
        Model.CLIP_IMAGE_PREPROCESS,
        Role.PREPROCESS,
        inputs=(Io(T.IMAGE, "TYPE_STRING", (1,)),),
        outputs=(Io(T.PIXEL_VALUES, "TYPE_FP32", (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)),),
        max_batch_size=32,
        batching=Batching(preferred=(), max_queue_delay_us=0, max_queue_size=128),
        source="clip_image_preprocess.py",
        instances=TWO_INSTANCES,  # the same ~500 ms queue stall as the text tokenizer's, traced
    ),
    ModelSpec(
        Model.CLIP_IMAGE_ENCODER,
        Role.ENCODER,
        inputs=(Io(T.PIXEL_VALUES, "TYPE_FP32", (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)),),
        outputs=(Io(T.EMBEDDING, "TYPE_FP32", (EMBED_DIM,)),),
        max_batch_size=32,
        batching=Batching(
            preferred=(4, 8, 16, 32),
            max_queue_delay_us=0,
            max_queue_size=128,
            gpu_queue_delay_us=2_000,
            cpu=False,
        ),
        artifact="clip_image_encoder",
        versioned=True,
        # CPU: two instances, no batcher, threads adapted to the load. Behind the batcher one 2-thread
        # instance served *fewer* images/s at concurrency 8 than at 1; two unbatched instances of two
        # threads each kept a lone photo on both cores but oversubscribed them under load (0.76-0.85x the
        # in-process floor at c=8); adapted, a lone photo still gets both cores and concurrent ones a core
        # each (0.95x at c=8; docs/BENCHMARKS.md, "Latency at the floor"). The GPU keeps its batcher.
        instances={Target.CPU: 2, Target.GPU: 1},
        adaptive_threads=True,
    ),
    ModelSpec(
        **_public(EMBED_IMAGE_IO),  # type: ignore[arg-type]
        steps=(
            Step(Model.CLIP_IMAGE_PREPROCESS, _same(T.IMAGE), _same(T.PIXEL_VALUES)),
            Step(Model.CLIP_IMAGE_ENCODER, _same(T.PIXEL_VALUES), _same(T.EMBEDDING)),
        ),
    ),
    # ---- embed_minilm: TEXT -> WordPiece padded to a bucket -> MiniLM -> mean over the mask, L2 norm ----
    ModelSpec(
        Model.MINILM_TOKENIZE,
        Role.PREPROCESS,
        inputs=(Io(T.TEXT, "TYPE_STRING", (1,)),),
        outputs=(
            Io(T.INPUT_IDS, "TYPE_INT64", (-1,)),
            Io(T.ATTENTION_MASK, "TYPE_INT64", (-1,)),
            Io(T.TRUNCATED, "TYPE_BOOL", (1,)),
        ),
        max_batch_size=64,
        batching=Batching(preferred=(), max_queue_delay_us=0, max_queue_size=256),
        source="minilm_tokenize.py",
        instances=TWO_INSTANCES,  # as the CLIP tokenizer: one batched instance stalls its queue
        artifact="tokenizers/minilm",
        files=("tokenizer.json",),
    ),
    ModelSpec(
        Model.MINILM_ENCODER,
        Role.ENCODER,
        inputs=(Io(T.INPUT_IDS, "TYPE_INT64", (-1,)), Io(T.ATTENTION_MASK, "TYPE_INT64", (-1,))),
        outputs=(Io(T.EMBEDDING, "TYPE_FP32", (MINILM_DIM,)),),
        max_batch_size=64,
        # The CLIP text encoder's batching and thread layout: MiniLM-L6 reads ~90 MB of weights per
        # forward against CLIP text's ~250 MB, so it is the cheaper of the two.
        batching=Batching(
            preferred=(8, 16, 32, 64), max_queue_delay_us=0, max_queue_size=256, gpu_queue_delay_us=1_000
        ),
        artifact="minilm_encoder",
        # Not ``versioned``: the catalog adapters are CLIP's; the minilm space follows this model alone.
        instances={Target.CPU: 2, Target.GPU: 1},
        adaptive_threads=True,
        tokenizes=Model.MINILM_TOKENIZE,
    ),
    ModelSpec(
        **_public(EMBED_MINILM_IO),  # type: ignore[arg-type]
        steps=(
            Step(
                Model.MINILM_TOKENIZE,
                _same(T.TEXT),
                _same(T.INPUT_IDS, T.ATTENTION_MASK, T.TRUNCATED),
            ),
            Step(Model.MINILM_ENCODER, _same(T.INPUT_IDS, T.ATTENTION_MASK), _same(T.EMBEDDING)),
        ),
    ),
    # ---- rerank: one query + n passages -> n pairs, padded to a bucket -> cross-encoder ----
    ModelSpec(
        Model.RERANK_TOKENIZE,
        Role.PREPROCESS,
        inputs=(Io(T.QUERY, "TYPE_STRING", (1,)), Io(T.PASSAGES, "TYPE_STRING", (-1,))),
        outputs=(
            Io(T.INPUT_IDS, "TYPE_INT64", (-1, -1)),
            Io(T.ATTENTION_MASK, "TYPE_INT64", (-1, -1)),
            Io(T.TOKEN_TYPE_IDS, "TYPE_INT64", (-1, -1)),
            Io(T.TRUNCATED, "TYPE_BOOL", (-1,)),
        ),
        max_batch_size=0,
        source="rerank_tokenize.py",
        artifact="tokenizers/cross_encoder",
        files=("tokenizer.json",),
        instances={Target.CPU: 2, Target.GPU: 2},
        parameters=PASSAGE_LIMIT,
    ),
    ModelSpec(
        Model.CROSS_ENCODER,
        Role.ENCODER,
        inputs=(
            Io(T.INPUT_IDS, "TYPE_INT64", (-1,)),
            Io(T.ATTENTION_MASK, "TYPE_INT64", (-1,)),
            Io(T.TOKEN_TYPE_IDS, "TYPE_INT64", (-1,)),
        ),
        outputs=(Io(T.LOGITS, "TYPE_FP32", (1,)),),
        max_batch_size=MAX_PASSAGES,
        # CPU: no merging. A merged batch of four 50-pair requests computed 4x as long as one (traced:
        # 1.6-1.7 s vs 0.4-0.5 s) and every request in it waited for all of it, so merging bought no
        # throughput and doubled the tail. GPU: merging is what a GPU is for.
        batching=Batching(
            preferred=(64, 128, 256),
            max_queue_delay_us=0,
            max_queue_size=64,
            gpu_queue_delay_us=1_000,
            cpu=False,
        ),
        artifact="cross_encoder",
        versioned=True,  # a cross-encoder trained on the catalog (``vitrine adapt``) is served as version 2
        # CPU: two instances, threads adapted to the load. Single-threaded instances served concurrent
        # re-ranks at the floor but left a lone request on one core (served 1.8x the floor's p50); two
        # threads each served a lone one at the floor but lost 14% at c=8. Adapted: 1.04x the floor's
        # p50 at c=1, 0.98x its throughput at c=8 (docs/BENCHMARKS.md, "Latency at the floor"). The
        # gateway's halves (``PipelineSettings.rerank_parts``) still let one search use both instances.
        instances={Target.CPU: 2, Target.GPU: 1},
        adaptive_threads=True,
        # Pairs run length-sorted, 16 at a time, each sub-batch padded to its own bucket: short pairs stop
        # paying for a long neighbour's padding (docs/BENCHMARKS.md, "Re-ranking at the floor").
        parameters={"length_sorted_rows": "16"},
    ),
    ModelSpec(
        # The head emits [n, 1]; the ensemble's reshape hands clients SCORES [n] (verified on 2.51).
        **_public(RERANK_IO, reshape={T.SCORES: (-1, 1)}),  # type: ignore[arg-type]
        parameters=PASSAGE_LIMIT,
        steps=(
            Step(
                Model.RERANK_TOKENIZE,
                _same(T.QUERY, T.PASSAGES),
                _same(T.INPUT_IDS, T.ATTENTION_MASK, T.TOKEN_TYPE_IDS, T.TRUNCATED),
            ),
            Step(
                Model.CROSS_ENCODER,
                _same(T.INPUT_IDS, T.ATTENTION_MASK, T.TOKEN_TYPE_IDS),
                {T.LOGITS.value: T.SCORES.value},
            ),
        ),
    ),
)

USER_TOWER_SPEC = ModelSpec(
    # A shopper's padded history -> user vector. Not in ``SPECS``: it exists only once a recommender was
    # trained (its artifacts are a directory of their own), and it is deployed while serving as a new
    # version next to the previous one (``render_version``); Triton batches histories of equal shape.
    Model.USER_TOWER,
    Role.ENCODER,
    inputs=tuple(_io(t) for t in USER_TOWER_IO.input_specs),
    outputs=tuple(_io(t) for t in USER_TOWER_IO.output_specs),
    max_batch_size=USER_TOWER_IO.max_batch_size,
    batching=Batching(preferred=(8, 16, 32, 64), max_queue_delay_us=500, max_queue_size=256),
    instances=TWO_INSTANCES,  # a batched single instance is where the ~500 ms queue stall was traced
    artifact=Model.USER_TOWER.value,
    cpu_threads=1,
    keep_versions=2,
)
OPTIONAL_SPECS: tuple[ModelSpec, ...] = (USER_TOWER_SPEC,)
"""Models rendered from artifacts of their own when those exist (``render_version``)."""

SPEC_BY_MODEL: dict[Model, ModelSpec] = {s.model: s for s in (*SPECS, *OPTIONAL_SPECS)}


SECOND_CHOICE_PRIORITY = 1000
"""Rate-limiter priority of every instance after the first: Triton gives an instance of priority p 1/p
of the scheduling chances of one of priority 1 when both are free."""

TOKENIZER_FILE = "tokenizer.json"
"""A tokenizing encoder's tokenizer, in its model directory (shared by every version)."""


def cpu_steps(spec: ModelSpec) -> tuple[Step, ...]:
    """An ensemble's steps on the CPU target: a tokenizer step folded into the encoder step after it when
    that encoder ``tokenizes`` (the tokenizer's outputs the encoder does not consume, TRUNCATED, come
    from the encoder)."""
    steps = spec.steps
    if len(steps) < 2:
        return steps
    first, second = steps[0], steps[1]
    encoder = SPEC_BY_MODEL.get(second.model)
    if encoder is None or encoder.tokenizes is not first.model:
        return steps
    consumed = set(second.input_map.values())
    passed = {k: v for k, v in first.output_map.items() if v not in consumed}
    return (Step(second.model, dict(first.input_map), {**second.output_map, **passed}), *steps[2:])


def versioned_steps(spec: ModelSpec) -> list[Model]:
    """The versioned encoders an ensemble runs."""
    return [s.model for s in spec.steps if s.model in SPEC_BY_MODEL and SPEC_BY_MODEL[s.model].versioned]


ENCODER_SOURCE = "onnx_encoder.py"
"""On the CPU target every encoder is this one Python model around an onnxruntime session."""

ONNX_FILE = "model.onnx"


def _io_message(io: Io, cls: type) -> object:
    msg = cls(name=io.name.value, data_type=mc.DataType.Value(io.dtype), dims=list(io.dims))
    if io.reshape is not None:
        msg.reshape.SetInParent()
        msg.reshape.shape.extend(io.reshape)
    return msg


def set_batching(
    config: mc.ModelConfig, batching: Batching, target: Target, queue_delay_us: int | None = None
) -> None:
    """The dynamic batcher of ``batching`` on ``target`` (``queue_delay_us`` overrides the delay)."""
    config.ClearField("dynamic_batching")
    db = config.dynamic_batching
    db.preferred_batch_size.extend(batching.preferred)
    db.max_queue_delay_microseconds = batching.delay_us(target) if queue_delay_us is None else queue_delay_us
    db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
    db.default_queue_policy.max_queue_size = batching.max_queue_size
    db.default_queue_policy.allow_timeout_override = True


def render_config(
    spec: ModelSpec,
    target: Target,
    *,
    dynamic_batching: bool = True,
    queue_delay_us: int | None = None,
    parameters: dict[str, str] | None = None,
    versions: Sequence[int] = (),
    name: str | None = None,
    response_cache: bool = False,
) -> mc.ModelConfig:
    """The ``ModelConfig`` of one model on one target.

    ``dynamic_batching=False`` renders the same model without a batcher (each request is one execution),
    the baseline the benchmark compares against; ``queue_delay_us`` overrides every batcher's delay (for
    measuring the choice); ``parameters`` adds per-render values (file names). ``versions``: a versioned
    encoder serves exactly these; a versioned ensemble pins its versioned steps to ``versions[0]`` under
    ``name`` (default: version 1 under the model's own name). ``response_cache`` enables Triton's
    response cache on cacheable models (the server needs ``--cache-config``).
    """
    config = mc.ModelConfig(name=name or spec.model.value, max_batch_size=spec.max_batch_size)
    if response_cache and spec.cacheable:
        config.response_cache.enable = True
    config.input.extend(_io_message(io, mc.ModelInput) for io in spec.inputs)
    config.output.extend(_io_message(io, mc.ModelOutput) for io in spec.outputs)
    if target is Target.CPU and spec.role is Role.ENCODER and spec.adaptive_threads:
        config.parameters["adaptive_threads"].string_value = "1"
    elif target is Target.CPU and spec.role is Role.ENCODER and spec.cpu_threads:
        config.parameters["intra_op_threads"].string_value = str(spec.cpu_threads)
    for key, value in {**spec.parameters, **(parameters or {})}.items():
        config.parameters[key].string_value = value

    if target is Target.CPU and spec.role is Role.ENCODER and spec.tokenizes is not None:
        for given in config.input:  # tokens, or TEXT for this model to tokenize
            given.optional = True
        config.input.add(name=T.TEXT.value, data_type=mc.TYPE_STRING, dims=[1], optional=True)
        config.output.add(name=T.TRUNCATED.value, data_type=mc.TYPE_BOOL, dims=[1])
        config.parameters["tokenizer"].string_value = spec.tokenizes.value
        config.parameters["tokenizer_file"].string_value = TOKENIZER_FILE

    if spec.role is Role.ENSEMBLE:
        config.platform = "ensemble"
        for step in cpu_steps(spec) if target is Target.CPU else spec.steps:
            pinned = SPEC_BY_MODEL[step.model].versioned if step.model in SPEC_BY_MODEL else False
            config.ensemble_scheduling.step.add(
                model_name=step.model.value,
                # A versioned encoder's step is pinned, so serving a new version never changes this
                # ensemble's answers; -1 (latest) elsewhere.
                model_version=(versions[0] if versions else int(VERSION)) if pinned else -1,
                input_map=step.input_map,
                output_map=step.output_map,
            )
        return config

    gpu_encoder = target is Target.GPU and spec.role is Role.ENCODER
    if gpu_encoder:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ONNX_FILE
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accel.parameters["precision_mode"] = "FP16"
        accel.parameters["max_workspace_size_bytes"] = str(2 << 30)
    else:
        config.backend = "python"

    if spec.keep_versions:
        config.version_policy.latest.num_versions = spec.keep_versions
    if spec.versioned:
        config.version_policy.specific.versions.extend(versions or [int(VERSION)])
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu_encoder else mc.ModelInstanceGroup.KIND_CPU
    count = spec.instances[target]
    if target is Target.CPU and spec.adaptive_threads and count > 1:
        # One group per instance, the first preferred: with the server's rate limiter on, a lone request
        # goes to the first instance (its weights and activations warm in the caches) instead of
        # alternating between the two; the others take work while it is busy. Measured: a lone query
        # 13.7 vs 16.1 ms, the same throughput at concurrency 8 (docs/BENCHMARKS.md, "Latency at the floor").
        for i in range(count):
            group = config.instance_group.add(name=f"{config.name}_{i}", kind=kind, count=1)
            group.rate_limiter.priority = 1 if i == 0 else SECOND_CHOICE_PRIORITY
    else:
        config.instance_group.add(kind=kind, count=count)

    if spec.batching is not None and dynamic_batching and (spec.batching.cpu or target is not Target.CPU):
        set_batching(config, spec.batching, target, queue_delay_us)

    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(config))
