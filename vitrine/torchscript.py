"""A TorchScript tower run like an onnxruntime session: the export validates its PyTorch fp16 trace
through this class, and the GPU-embedded target serves the trace through it (``model_repository.runtime``).
PyTorch is imported on first use only."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class TorchSession:
    """A TorchScript tower (``export --torch-fp16``) behind onnxruntime's ``run`` signature, on one torch
    device: the GPU-embedded target's PyTorch path on hosts without ``onnxruntime-gpu``.

    Inputs are matched by the traced forward's parameter names; float inputs are cast to the weights'
    dtype (fp16) on the device and outputs come back as fp32 numpy, so the serving contract is the ONNX
    graph's."""

    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.inputs = [a.name for a in self.module.forward.schema.arguments[1:]]
        self.dtype = next(self.module.parameters()).dtype

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[np.ndarray]:
        torch = self._torch
        missing = [n for n in self.inputs if n not in input_feed]
        if missing:
            raise ValueError(f"missing inputs {missing}; the model takes {self.inputs}")
        args = []
        for name in self.inputs:
            value = torch.from_numpy(np.ascontiguousarray(input_feed[name])).to(self.device)
            args.append(value.to(self.dtype) if value.is_floating_point() else value)
        with torch.inference_mode():
            out = self.module(*args)
        values = [o.float().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
        if output_names is not None and len(output_names) != len(values):
            raise ValueError(f"the model returns {len(values)} outputs, {len(output_names)} were asked")
        return values


def cuda_unavailable() -> str | None:
    """Why PyTorch cannot run on a CUDA device here, or None when it can (the export's trace and the
    GPU target's serving ask the same question)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else f"PyTorch {torch.__version__} sees no CUDA device"
