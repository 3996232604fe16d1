"""Derived graphs: int8 (dynamic quantisation, CPU), fp16 ONNX, TensorRT engines on GPU hosts, and the
TorchScript fp16 trace that the GPU target falls back to where onnxruntime has no CUDA provider."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.errors import ExportError
from export.specs import TowerSpec
from vitrine.torchscript import cuda_unavailable as torch_cuda_unavailable

log = logging.getLogger(__name__)


INT8_ALL = "all weight MatMul/Gemm"
INT8_MLP_DOWN_FP32 = "MLP down-projections kept fp32"


def mlp_down_projections(model: onnx.ModelProto) -> list[str]:
    """MatMuls reading the GELU output (CLIP ``mlp/fc2``, BERT ``output/dense``): their inputs have the
    widest range, so per-tensor int8 activations lose the most there."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm")
        and ("/mlp/fc2/" in n.name or ("/output/dense/" in n.name and "/attention/" not in n.name))
    ]


def int8_schemes(src: Path) -> list[tuple[str, list[str]]]:
    """Schemes to try, fastest first: everything, then everything but the MLP down-projections."""
    down = mlp_down_projections(onnx.load(str(src), load_external_data=False))
    return [(INT8_ALL, []), (INT8_MLP_DOWN_FP32, down)] if down else [(INT8_ALL, [])]


def int8(src: Path, dst: Path, exclude: list[str] | None = None) -> None:
    """Dynamically quantised weights for MatMul/Gemm (the compute of these towers): 2.5-3x on AVX2.

    Activation x activation MatMuls (attention scores) stay fp32 either way: quantize_dynamic only
    quantises MatMuls with a constant weight."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a generic "consider pre-processing" advice on the root logger at every call.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=exclude or [],
        )
    finally:
        logging.disable(previous)


def fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations with fp32 inputs/outputs, so the serving contract is unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


TRANSFORMER_MODEL_TYPE = {
    "clip_text_encoder": "clip",
    "clip_image_encoder": "vit",
    "cross_encoder": "bert",
    "minilm_encoder": "bert",
}
"""onnxruntime.transformers.optimizer's model type per tower: which fusion patterns it looks for."""


def transformer_optimized(
    src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int
) -> dict[str, Any]:
    """The graph with onnxruntime's transformer fusions (attention, skip-LayerNorm, bias-GELU, embedding
    LayerNorm) applied offline, so every session starts from fused kernels instead of the many small
    ops the exporter writes. Returns the fused-operator counts, which say whether the patterns matched.

    ``opt_level=1``: only the portable fusions; level 2 adds CPU- or GPU-specific layouts that would pin
    the graph to one provider."""
    from onnxruntime.transformers.optimizer import optimize_model

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the optimizer logs each pattern it did not find
    try:
        model = optimize_model(
            str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=1
        )
    finally:
        logging.disable(previous)
    model.save_model_to_file(str(dst))
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    return {"model_type": model_type, "fused": fused}


TORCH_FP16_FILE = "model.cuda_fp16.pt"


def cuda_unavailable() -> str | None:
    """Why the fp16 trace cannot be made here, or None when it can."""
    why = torch_cuda_unavailable()
    return f"{why}; the fp16 trace is made on the GPU host (python -m export --torch-fp16)" if why else None


def torchscript(module: Any, example: dict[str, np.ndarray], dst: Path, device: str, *, half: bool) -> None:
    """A TorchScript trace of one tower on ``device`` (weights and activations fp16 with ``half``): the
    GPU-embedded target's PyTorch path where ``onnxruntime-gpu`` is missing (``model_repository.runtime
    .TorchSession``). Traced on the device it serves on, because a trace records the device of tensors
    the model creates inside ``forward`` (CLIP's causal mask). Inputs keep their names (the forward's
    parameters) and fp32/int64 dtypes; the session casts float inputs to the weights' dtype."""
    import copy

    import torch

    tower = copy.deepcopy(module).to(device).eval()
    if half:
        tower = tower.half()
    dtype = torch.float16 if half else torch.float32
    inputs = {
        k: torch.from_numpy(v).to(device, dtype=dtype if v.dtype.kind == "f" else None)
        for k, v in example.items()
    }
    # The tracer warns at every Python-side shape check it freezes (as the ONNX export does); they are
    # expected here and held to account by the validation that follows.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tower, example_kwarg_inputs=inputs, check_trace=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(dst))


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt on a CUDA host); engines skipped"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device; TensorRT engines skipped"
    except ImportError:
        pass
    return None


def tensorrt_engine(spec: TowerSpec, src: Path, dst: Path, *, max_batch: int, max_seq: int) -> dict[str, Any]:
    """fp16 TensorRT plan with one optimisation profile spanning batch 1..max_batch (and seq 1..max_seq)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {spec.model.value}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:

        def shape(batch: int, seq: int, dims: tuple[int | str, ...] = t.shape) -> tuple[int, ...]:
            return tuple(batch if d == "batch" else seq if d == "seq" else int(d) for d in dims)

        profile.set_shape(
            t.name.value, shape(1, 1), shape(max(1, max_batch // 2), max_seq), shape(max_batch, max_seq)
        )
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine for {spec.model.value}")
    dst.write_bytes(bytes(plan))
    return {
        "status": "built",
        "path": dst.name,
        "precision": "fp16",
        "max_batch": max_batch,
        "max_seq": max_seq,
    }
