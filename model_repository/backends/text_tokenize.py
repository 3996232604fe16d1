"""The request loop of the text tokenizer models (``clip_text_tokenize``, ``minilm_tokenize``): each
request tokenized on its own by ``model_repository.text_feeds``, refused alone with INVALID_ARG when its
text is unusable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import triton_python_backend_utils as pb_utils

from model_repository.preprocess import InputError
from model_repository.text_feeds import TextFeeds
from vitrine.contracts import Model, Tensor


class TokenizerModel:
    tokenizer: ClassVar[Model]

    def initialize(self, args: dict[str, Any]) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        self.feeds = TextFeeds.for_model(self.tokenizer, path)
        self.logger = pb_utils.Logger

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, Tensor.TEXT.value).as_numpy()
            try:
                tokens = self.feeds(raw)
            except InputError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            if (note := tokens.truncation_note(self.feeds.context)) is not None:
                self.logger.log_info(note)
            tensors = [pb_utils.Tensor(name, value) for name, value in tokens.feed.items()]
            tensors.append(pb_utils.Tensor(Tensor.TRUNCATED.value, tokens.truncated))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
