"""Triton Python-backend model: UTF-8 text -> WordPiece ids and attention mask for the MiniLM encoder.

Each request is tokenized on its own so it keeps its own length bucket; the encoder's batcher groups
requests of equal buckets. Text beyond 256 tokens is truncated, flagged in TRUNCATED and logged; empty
text is refused with INVALID_ARG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository.preprocess import InputError, decode_texts
from vitrine.contracts import Tensor
from vitrine.tokenization import SentenceTokenizer


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        self.tokenizer = SentenceTokenizer.from_file(path)
        self.logger = pb_utils.Logger

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, Tensor.TEXT.value).as_numpy()
            try:
                texts = decode_texts(raw, "text")
            except InputError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            batch = self.tokenizer.encode_batch(texts)
            truncated = np.asarray(batch.truncated, dtype=bool).reshape(-1, 1)
            if truncated.any():
                lengths = ", ".join(str(len(texts[i])) for i in np.flatnonzero(truncated))
                self.logger.log_info(f"text truncated to the MiniLM context (characters: {lengths})")
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(Tensor.INPUT_IDS.value, np.asarray(batch.input_ids, dtype=np.int64)),
                        pb_utils.Tensor(
                            Tensor.ATTENTION_MASK.value, np.asarray(batch.attention_mask, dtype=np.int64)
                        ),
                        pb_utils.Tensor(Tensor.TRUNCATED.value, truncated),
                    ]
                )
            )
        return responses
