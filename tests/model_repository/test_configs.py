"""Both renderings parse as Triton ``ModelConfig`` messages and agree with the exported ONNX graphs."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from model_repository.render import Precision, RenderError, RenderOptions, render_repository
from model_repository.spec import SPEC_BY_MODEL, SPECS, Role
from vitrine.contracts import ENSEMBLES, MAX_PASSAGES, MAX_PASSAGES_PARAMETER, Model, Target, Tensor

ONNX_TO_TRITON: dict[int, int] = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
}


def _load(repo: Path) -> dict[str, mc.ModelConfig]:
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), mc.ModelConfig())
    return configs


@pytest.fixture(scope="module", params=[Target.CPU, Target.GPU], ids=lambda t: t.value)
def rendered(request, tiny_artifacts, tmp_path_factory) -> tuple[Target, Path, dict[str, mc.ModelConfig]]:
    target = request.param
    repo = render_repository(
        tiny_artifacts, tmp_path_factory.mktemp(f"repo-{target.value}"), RenderOptions(target=target)
    )
    return target, repo, _load(repo)


def test_every_model_is_rendered_once(rendered):
    _, repo, configs = rendered
    # the user tower is rendered only from a trained recommender's artifacts (tests/recommend)
    assert set(configs) == {m.value for m in Model} - {Model.USER_TOWER.value}
    for name, config in configs.items():
        assert config.name == name
        if config.platform != "ensemble":
            assert (repo / name / "1").is_dir()


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("model", [s.model for s in SPECS if s.role is Role.ENCODER], ids=lambda m: m.value)
def test_encoder_configs_match_their_onnx_graphs(rendered, model):
    target, repo, configs = rendered
    config = configs[model.value]
    graph = onnx.load(str(repo / model.value / "1" / "model.onnx"), load_external_data=False).graph
    # On the CPU a tokenizing encoder also takes TEXT and answers TRUNCATED (its tokenizer's work).
    own = (
        {Tensor.TEXT.value, Tensor.TRUNCATED.value}
        if target is Target.CPU and SPEC_BY_MODEL[model].tokenizes
        else set()
    )
    inputs = [t for t in config.input if t.name not in own]
    outputs = [t for t in config.output if t.name not in own]
    for declared, actual in ((inputs, graph.input), (outputs, graph.output)):
        onnx_io = {vi.name: vi for vi in actual}
        assert [t.name for t in declared] == [vi.name for vi in actual]
        for tensor in declared:
            vi = onnx_io[tensor.name]
            assert tensor.data_type == ONNX_TO_TRITON[vi.type.tensor_type.elem_type], tensor.name
            onnx_dims = _dims(vi)
            assert onnx_dims[0] == -1, f"{tensor.name}: the batch axis must be dynamic"
            assert config.max_batch_size > 0
            assert list(tensor.dims) == onnx_dims[1:], tensor.name
    if target is Target.GPU:
        assert config.platform == "onnxruntime_onnx" and not config.backend
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    else:
        assert config.backend == "python" and not config.platform
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert (repo / model.value / "1" / "model.py").is_file()
    batching = SPEC_BY_MODEL[model].batching
    assert batching is not None
    if target is Target.CPU and not batching.cpu:
        assert not config.HasField("dynamic_batching")  # each request executes alone on the CPU
        return
    assert config.dynamic_batching.preferred_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == batching.delay_us(target)
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT


def test_preprocessing_runs_in_python_on_cpu_for_both_targets(rendered):
    _, repo, configs = rendered
    for spec in SPECS:
        if spec.role is Role.PREPROCESS:
            config = configs[spec.model.value]
            assert config.backend == "python"
            assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
            assert (repo / spec.model.value / "1" / "model.py").is_file()
            for name in spec.files:
                assert (repo / spec.model.value / "1" / name).is_file()


def test_cpu_encoders_run_two_instances_with_adaptive_threads(rendered):
    target, _, configs = rendered
    layouts = (
        (Model.CLIP_TEXT_ENCODER, True),
        (Model.MINILM_ENCODER, True),
        (Model.CLIP_IMAGE_ENCODER, False),
        (Model.CROSS_ENCODER, False),
    )
    for model, cpu_batcher in layouts:
        config = configs[model.value]
        if target is Target.CPU:
            # one group per instance, the first preferred by the rate limiter
            assert [g.count for g in config.instance_group] == [1, 1], model
            assert [g.rate_limiter.priority for g in config.instance_group] == [1, 1000], model
            assert config.parameters["adaptive_threads"].string_value == "1", model
            assert "intra_op_threads" not in config.parameters, model
            assert config.HasField("dynamic_batching") is cpu_batcher, model
            if cpu_batcher:  # a delay is paid by every lone request; the queue batches under load anyway
                assert config.dynamic_batching.max_queue_delay_microseconds == 0, model
        else:
            assert [g.count for g in config.instance_group] == [1], model
            assert "intra_op_threads" not in config.parameters, model
            assert "adaptive_threads" not in config.parameters, model
            assert config.HasField("dynamic_batching"), model  # merging pays on a GPU


def test_ensemble_steps_connect_declared_tensors(rendered):
    _, _, configs = rendered
    for config in configs.values():
        if config.platform != "ensemble":
            continue
        produced = {t.name for t in config.input}
        for step in config.ensemble_scheduling.step:
            model = configs[step.model_name]
            required = {t.name for t in model.input if not t.optional}
            assert required <= set(step.input_map) <= {t.name for t in model.input}, step.model_name
            assert set(step.input_map.values()) <= produced, step.model_name
            assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
            produced |= set(step.output_map.values())
        assert {t.name for t in config.output} <= produced, config.name


def test_cpu_text_ensembles_run_one_tokenizing_encoder_step(rendered):
    """On the CPU a text query crosses one Python-backend hop: the encoder tokenizes it itself."""
    target, repo, configs = rendered
    for ensemble, encoder in (
        (Model.EMBED_TEXT, Model.CLIP_TEXT_ENCODER),
        (Model.EMBED_MINILM, Model.MINILM_ENCODER),
    ):
        steps = configs[ensemble.value].ensemble_scheduling.step
        if target is Target.CPU:
            assert [s.model_name for s in steps] == [encoder.value]
            assert dict(steps[0].input_map) == {Tensor.TEXT.value: Tensor.TEXT.value}
            assert set(steps[0].output_map) == {Tensor.EMBEDDING.value, Tensor.TRUNCATED.value}
            assert (repo / encoder.value / "tokenizer.json").is_file()
        else:
            assert len(steps) == 2 and steps[1].model_name == encoder.value


def test_batching_off_variant_has_no_batcher(tiny_artifacts, tmp_path):
    repo = render_repository(tiny_artifacts, tmp_path, RenderOptions(dynamic_batching=False))
    for config in _load(repo).values():
        assert not config.HasField("dynamic_batching"), config.name


def test_queue_delay_override_applies_to_every_batcher(tiny_artifacts, tmp_path):
    repo = render_repository(tiny_artifacts, tmp_path, RenderOptions(queue_delay_us=0))
    batchers = [c for c in _load(repo).values() if c.HasField("dynamic_batching")]
    batched = {s.model.value for s in SPECS if s.role is Role.ENCODER and s.batching and s.batching.cpu}
    assert batched and {c.name for c in batchers} >= batched
    assert all(c.dynamic_batching.max_queue_delay_microseconds == 0 for c in batchers)


def _artifacts_with_int8(tiny_artifacts: Path, root: Path, servable: set[str]) -> Path:
    """The tiny artifacts (linked) with a manifest that marks int8 servable exactly for ``servable``."""
    root.mkdir()
    for item in tiny_artifacts.iterdir():
        if item.name != "manifest.json":
            (root / item.name).symlink_to(item)
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        assert entry["int8"] is not None, "the tiny export writes int8 graphs"
        entry["int8"]["servable"] = name in servable
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_int8_without_a_servable_graph_is_refused_clearly(tiny_artifacts, tmp_path):
    artifacts = _artifacts_with_int8(tiny_artifacts, tmp_path / "art", servable=set())
    with pytest.raises(RenderError, match="manifest marks no int8 graph servable"):
        render_repository(artifacts, tmp_path / "repo", RenderOptions(precision=Precision.INT8))


def test_int8_is_served_only_where_the_manifest_allows(tiny_artifacts, tmp_path):
    artifacts = _artifacts_with_int8(tiny_artifacts, tmp_path / "art", servable={Model.CROSS_ENCODER.value})
    repo = render_repository(artifacts, tmp_path / "repo", RenderOptions(precision=Precision.INT8))

    def served(model: Model) -> bytes:
        return (repo / model.value / "1" / "model.onnx").read_bytes()

    assert served(Model.CROSS_ENCODER) == (tiny_artifacts / "cross_encoder" / "model.int8.onnx").read_bytes()
    for fp32 in (Model.CLIP_TEXT_ENCODER, Model.CLIP_IMAGE_ENCODER):
        assert served(fp32) == (tiny_artifacts / fp32.value / "model.onnx").read_bytes()


def test_missing_artifacts_are_reported(tmp_path):
    with pytest.raises(RenderError, match=r"manifest\.json not found: run the export first"):
        render_repository(tmp_path / "nowhere", tmp_path / "repo")


def test_rendered_ensembles_are_what_clients_are_told(rendered):
    """Clients build requests from the contracts, never from a config fetched at run time: the rendered
    ensembles must say the same (batch size, tensor names, wire dtypes, dims)."""
    _, _, configs = rendered
    wire = {mc.TYPE_STRING: "BYTES", mc.TYPE_FP32: "FP32", mc.TYPE_BOOL: "BOOL", mc.TYPE_INT64: "INT64"}
    for io in ENSEMBLES:
        config = configs[io.model.value]
        assert config.max_batch_size == io.max_batch_size, io.model
        assert (config.max_batch_size > 0) == io.batched
        for declared, rendered_io in ((io.input_specs, config.input), (io.output_specs, config.output)):
            assert [(t.name.value, t.dtype, list(t.dims)) for t in declared] == [
                (t.name, wire[t.data_type], list(t.dims)) for t in rendered_io
            ], io.model


def test_rerank_states_its_passage_limit(rendered):
    """A client reading only Triton's model config learns how many passages one request may carry: the
    public ensemble and the tokenizer that refuses more state the limit, and the cross-encoder batches
    that many pairs."""
    _, _, configs = rendered
    for model in (Model.RERANK, Model.RERANK_TOKENIZE):
        limit = configs[model.value].parameters[MAX_PASSAGES_PARAMETER].string_value
        assert limit == str(MAX_PASSAGES), model
    assert configs[Model.CROSS_ENCODER.value].max_batch_size == MAX_PASSAGES
    (passages,) = (t for t in configs[Model.RERANK.value].input if t.name == Tensor.PASSAGES.value)
    assert list(passages.dims) == [-1]  # the axis stays variable: dims cannot bound it


def test_a_layout_override_replaces_one_models_cpu_layout(tiny_artifacts, tmp_path):
    from model_repository.render import Layout

    options = RenderOptions(layouts=((Model.CROSS_ENCODER, Layout(1, 2, batching=True)),))
    configs = _load(render_repository(tiny_artifacts, tmp_path, options))
    ce = configs[Model.CROSS_ENCODER.value]
    assert [g.count for g in ce.instance_group] == [1]
    assert ce.parameters["intra_op_threads"].string_value == "2"
    assert ce.HasField("dynamic_batching")
    text = configs[Model.CLIP_TEXT_ENCODER.value]  # untouched: the spec's layout
    assert [g.count for g in text.instance_group] == [1, 1]
