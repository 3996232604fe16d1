"""Triton Python-backend model: UTF-8 text -> CLIP token ids padded to a length bucket.

Each request is tokenized on its own so it keeps its own bucket (a short query is not padded to a long
neighbour's length); the encoder's batcher then groups requests of equal buckets. Text beyond CLIP's
context is truncated, flagged in TRUNCATED and logged; empty text is refused with INVALID_ARG. The work
itself is ``model_repository.text_feeds`` (which the CPU encoder also runs on its own requests).
"""

from __future__ import annotations

from model_repository.backends.text_tokenize import TokenizerModel
from vitrine.contracts import Model


class TritonPythonModel(TokenizerModel):
    tokenizer = Model.CLIP_TEXT_TOKENIZE
