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
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository.preprocess import InputError
from model_repository.runtime import (
    AdaptiveSession,
    BusyBoard,
    LengthSorting,
    Session,
    make_gpu_session,
    make_session,
    run_batched,
)
from model_repository.text_feeds import TextFeeds
from vitrine.contracts import Model, Tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # With ``tokenizer`` (the CPU target's text encoders) a request may bring TEXT instead of tokens:
        # this model then does the tokenizer model's work itself and also answers TRUNCATED.
        self.text: TextFeeds | None = None
        if "tokenizer" in params:
            tokenizer_json = os.path.join(args["model_repository"], params["tokenizer_file"])
            self.text = TextFeeds.for_model(Model(params["tokenizer"]), Path(tokenizer_json))
        extra = {Tensor.TEXT.value, Tensor.TRUNCATED.value} if self.text else set()
        self.inputs = [i["name"] for i in config["input"] if i["name"] not in extra]
        self.outputs = [o["name"] for o in config["output"] if o["name"] not in extra]
        self.logger = pb_utils.Logger
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

    def _feed(self, request: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """A request's graph inputs, and TRUNCATED when it brought TEXT (raises ``InputError``)."""
        text = pb_utils.get_input_tensor_by_name(request, Tensor.TEXT.value) if self.text else None
        if text is None or self.text is None:
            return {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs
            }, None
        tokens = self.text(text.as_numpy())
        if (note := tokens.truncation_note(self.text.context)) is not None:
            self.logger.log_info(note)
        return tokens.feed, tokens.truncated

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds: list[dict[str, np.ndarray]] = []
        truncated: list[np.ndarray | None] = []
        refused: dict[int, str] = {}
        for i, request in enumerate(requests):
            try:
                feed, cut = self._feed(request)
            except InputError as exc:
                refused[i] = str(exc)
                continue
            feeds.append(feed)
            truncated.append(cut)
        with self.session.executing() if isinstance(self.session, AdaptiveSession) else nullcontext():
            results = iter(run_batched(self.session, feeds, self.outputs, self.sorting))
        cuts = iter(truncated)
        responses = []
        for i in range(len(requests)):
            if i in refused:
                error = pb_utils.TritonError(refused[i], pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            result, cut = next(results), next(cuts)
            if result.outputs is None:
                error = pb_utils.TritonError(result.error, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in result.outputs.items()]
            if cut is not None:
                tensors.append(pb_utils.Tensor(Tensor.TRUNCATED.value, cut))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
