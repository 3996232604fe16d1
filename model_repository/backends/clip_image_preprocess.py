"""Triton Python-backend model: encoded image bytes -> CLIP ``pixel_values``.

The decoding rules live in ``model_repository.preprocess``; a request whose bytes are refused gets its
own INVALID_ARG with the reason, and the rest of the batch is normalised in one vectorised pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository.preprocess import InputError, normalize, open_image, resize_and_crop
from vitrine.contracts import CLIP_IMAGE_SIZE, Tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger

    def execute(self, requests: list[Any]) -> list[Any]:
        crops: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, Tensor.IMAGE.value).as_numpy().reshape(-1)
            try:
                # Draft decode: a JPEG arrives at the smallest scale still >= the crop (vitrine.images).
                crops.append(
                    np.stack([resize_and_crop(open_image(bytes(item), CLIP_IMAGE_SIZE)) for item in raw])
                )
                errors.append(None)
            except InputError as exc:
                crops.append(None)
                errors.append(str(exc))
        good = [c for c in crops if c is not None]
        pixels = normalize(np.concatenate(good)) if good else None
        responses = []
        offset = 0
        for crop, error in zip(crops, errors, strict=True):
            if crop is None or pixels is None:
                err = pb_utils.TritonError(error or "image refused", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            n = crop.shape[0]
            out = pb_utils.Tensor(Tensor.PIXEL_VALUES.value, pixels[offset : offset + n])
            offset += n
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
