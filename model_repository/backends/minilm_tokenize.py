"""Triton Python-backend model: UTF-8 text -> BERT WordPiece ids and mask for the MiniLM sentence encoder,
padded to a length bucket (``vitrine.tokenization.SentenceTokenizer``).

As the CLIP tokenizer: each request keeps its own bucket, text past the context is truncated, flagged and
logged, empty text is refused with INVALID_ARG; the work is ``model_repository.text_feeds``.
"""

from __future__ import annotations

from model_repository.backends.text_tokenize import TokenizerModel
from vitrine.contracts import Model


class TritonPythonModel(TokenizerModel):
    tokenizer = Model.MINILM_TOKENIZE
