"""Triton Python-backend model: one query and n passages -> n tokenized pairs for the cross-encoder.

The pairs leave as a batch of n, so the ``cross_encoder`` batcher can merge the pairs of concurrent
requests that share a length bucket. Over-long pairs are truncated (passage side first), flagged in
TRUNCATED and logged; no passages, several queries or empty text are refused with INVALID_ARG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository.preprocess import InputError, decode_text, decode_texts
from vitrine.contracts import MAX_PASSAGES, Tensor
from vitrine.tokenization import PairTokenizer


def _pairs(request: Any) -> tuple[str, list[str]]:
    query = pb_utils.get_input_tensor_by_name(request, Tensor.QUERY.value).as_numpy().reshape(-1)
    passages = pb_utils.get_input_tensor_by_name(request, Tensor.PASSAGES.value).as_numpy().reshape(-1)
    if query.size != 1:
        raise InputError(f"QUERY must hold exactly one query, got {query.size}")
    if passages.size == 0:
        raise InputError("PASSAGES is empty: send at least one passage to rerank")
    if passages.size > MAX_PASSAGES:
        raise InputError(f"PASSAGES holds {passages.size} passages; at most {MAX_PASSAGES} per request")
    return decode_text(query[0], "query"), decode_texts(passages, "passage")


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        self.tokenizer = PairTokenizer.from_file(path)
        self.logger = pb_utils.Logger

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                query, passages = _pairs(request)
            except InputError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            batch = self.tokenizer.encode(query, passages)
            truncated = np.asarray(batch.truncated, dtype=bool).reshape(-1)
            if truncated.any():
                self.logger.log_info(f"{int(truncated.sum())} of {truncated.size} rerank pairs truncated")
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(Tensor.INPUT_IDS.value, np.asarray(batch.input_ids, dtype=np.int64)),
                        pb_utils.Tensor(
                            Tensor.ATTENTION_MASK.value, np.asarray(batch.attention_mask, dtype=np.int64)
                        ),
                        pb_utils.Tensor(
                            Tensor.TOKEN_TYPE_IDS.value, np.asarray(batch.token_type_ids, dtype=np.int64)
                        ),
                        pb_utils.Tensor(Tensor.TRUNCATED.value, truncated),
                    ]
                )
            )
        return responses
