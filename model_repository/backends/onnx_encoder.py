"""Triton Python-backend model around one ONNX encoder (the CPU target's stand-in for the ORT backend; on the
gpu-embedded target its CUDA session, or the export's PyTorch fp16 trace where onnxruntime-gpu is missing).
On the CPU target with ``adaptive_threads`` a request running alone gets every core and one running
beside a sibling instance a share of them (``model_repository.runtime.AdaptiveSession``).

Thin by design: ``initialize`` opens the session once, ``execute`` hands the batch to
``model_repository.runtime.run_batched`` and returns one response per request; a request that cannot run
gets its own INVALID_ARG error while its batch neighbours get their results.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository.runtime import (
    AdaptiveSession,
    BusyBoard,
    LengthSorting,
    Session,
    make_gpu_session,
    make_session,
    run_batched,
)
from vitrine.contracts import Tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        self.session: Session
        if params.get("device") == "cuda":  # the gpu-embedded target (model_repository.gpu_embedded)
            fallback = params.get("torch_file")  # PyTorch fp16 trace, where onnxruntime-gpu is missing
            self.session = make_gpu_session(
                path,
                int(args.get("model_instance_device_id", "0")),
                os.path.join(os.path.dirname(path), fallback) if fallback else None,
            )
        elif params.get("adaptive_threads") == "1":  # every core alone, a share of them while a sibling runs
            instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
            board = BusyBoard.for_model(args["model_repository"], args["model_instance_name"])
            self.session = AdaptiveSession.open(path, instances, board)
        else:
            self.session = make_session(path, threads=int(params.get("intra_op_threads", "0")))
        rows = int(params.get("length_sorted_rows", "0"))
        # Set on the cross-encoder: its pairs run in length-sorted sub-batches of this many rows.
        self.sorting = LengthSorting(Tensor.ATTENTION_MASK.value, rows) if rows > 0 else None

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
            for r in requests
        ]
        with self.session.executing() if isinstance(self.session, AdaptiveSession) else nullcontext():
            results = run_batched(self.session, feeds, self.outputs, self.sorting)
        responses = []
        for result in results:
            if result.outputs is None:
                error = pb_utils.TritonError(result.error, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in result.outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
