"""The GPU target without a container: rendered and checked on any host, served only where a GPU is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from model_repository.render import RenderOptions, render_repository
from model_repository.runtime import DeviceUnavailable, make_gpu_session, make_session
from model_repository.spec import SPECS, Role
from vitrine.contracts import Target

ENCODERS = {s.model.value for s in SPECS if s.role is Role.ENCODER}


def _configs(repo: Path) -> dict[str, mc.ModelConfig]:
    return {
        p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")
    }


def test_gpu_embedded_is_the_cpu_rendering_with_encoders_on_the_gpu(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    gpu = _configs(
        render_repository(tiny_artifacts, tmp_path / "gpu", RenderOptions(target=Target.GPU_EMBEDDED))
    )
    cpu = _configs(render_repository(tiny_artifacts, tmp_path / "cpu", RenderOptions(target=Target.CPU)))
    assert set(gpu) == set(cpu) and set(gpu) >= ENCODERS
    for name, config in gpu.items():
        if name in ENCODERS:
            # Still the Python-backend encoder (the wheel has no onnxruntime backend), now on the GPU.
            assert config.backend == "python" and (tmp_path / "gpu" / name / "1" / "model.py").is_file()
            assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
            assert config.parameters["device"].string_value == "cuda"
            assert "intra_op_threads" not in config.parameters
            assert "adaptive_threads" not in config.parameters
            assert config.parameters["onnx_file"].string_value == "model.onnx"
            # GPU batching even where the CPU rendering has none (the cross-encoder): merging pays there.
            assert config.HasField("dynamic_batching"), name
        else:  # tokenizers, image decoding and ensembles: exactly the CPU rendering
            assert config == cpu[name], name


def test_a_gpu_session_without_the_cuda_provider_says_what_to_install(tiny_artifacts: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(DeviceUnavailable, match="install onnxruntime-gpu"):
        make_gpu_session(tiny_artifacts / "cross_encoder" / "model.onnx")


@pytest.mark.gpu
def test_cuda_session_matches_the_cpu_session(tiny_artifacts: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    path = tiny_artifacts / "cross_encoder" / "model.onnx"
    gpu, cpu = make_gpu_session(path), make_session(path, threads=1)
    rng = np.random.default_rng(0)
    feed = {i.name: rng.integers(5, 90, (8, 24)).astype(np.int64) for i in cpu.get_inputs()}
    feed["attention_mask"] = np.ones((8, 24), dtype=np.int64)
    feed["token_type_ids"] = np.zeros((8, 24), dtype=np.int64)
    np.testing.assert_allclose(gpu.run(None, feed)[0], cpu.run(None, feed)[0], atol=1e-4)
