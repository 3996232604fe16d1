"""The GPU target without a container: the embedded tritonserver's CPU rendering, encoders moved to the GPU.

The ``tritonserver`` inside the ``nvidia-pytriton`` wheel is a CUDA build, but it carries no onnxruntime
or TensorRT backend, so on a GPU host without Docker the encoders stay Python-backend models (the same
``onnx_encoder.py``) and run their graphs through onnxruntime's CUDA provider (``onnxruntime-gpu``), or,
where that is not installed, the export's TorchScript fp16 trace on PyTorch CUDA (``export --torch-fp16``).
Everything else (tokenizers, image pre-processing, ensembles, versions) is exactly the CPU rendering;
this module only rewrites each encoder's instance group, batching delay and device parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from model_repository.spec import SPEC_BY_MODEL, Role, set_batching
from vitrine.contracts import Target

DEVICE_PARAMETER = "device"
"""Encoder parameter: ``cuda`` makes ``onnx_encoder.py`` open a CUDA session on its instance's GPU."""
TORCH_FILE_PARAMETER = "torch_file"
"""Encoder parameter: the PyTorch fp16 trace beside the graph, run where onnxruntime has no CUDA provider."""


def move_encoders_to_gpu(
    repository: Path,
    dynamic_batching: bool = True,
    queue_delay_us: int | None = None,
    torch_files: Mapping[str, str] | None = None,
) -> list[str]:
    """Rewrite every encoder's ``config.pbtxt`` under ``repository`` for the GPU (instances, the GPU's
    batcher, even where the CPU rendering has none); returns their names. ``torch_files`` names each
    encoder's PyTorch fp16 trace (placed beside its graph), run where ``onnxruntime-gpu`` is missing."""
    moved = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        spec = next((s for m, s in SPEC_BY_MODEL.items() if m.value == config.name), None)
        if spec is None or spec.role is not Role.ENCODER or config.backend != "python":
            continue
        del config.instance_group[:]
        config.instance_group.add(
            kind=mc.ModelInstanceGroup.KIND_GPU, count=spec.instances.get(Target.GPU, 1)
        )
        if spec.batching is not None and dynamic_batching:
            set_batching(config, spec.batching, Target.GPU, queue_delay_us)
        # Thread counts size CPU sessions; a CUDA session's work is on the device.
        for cpu_only in ("intra_op_threads", "adaptive_threads"):
            if cpu_only in config.parameters:
                del config.parameters[cpu_only]
        config.parameters[DEVICE_PARAMETER].string_value = "cuda"
        if torch_files and config.name in torch_files:
            config.parameters[TORCH_FILE_PARAMETER].string_value = torch_files[config.name]
        config_path.write_text(str(text_format.MessageToString(config)))
        moved.append(config.name)
    return moved
