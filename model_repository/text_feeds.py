"""Text -> an encoder's input tensors: the work of the ``clip_text_tokenize`` and ``minilm_tokenize``
models as one function, shared by those models and by a CPU encoder that tokenizes its own requests
(``ModelSpec.tokenizes``: one Python-backend hop instead of two on the lone query's path).

Each request is tokenized on its own so it keeps its own length bucket; ``TRUNCATED`` flags texts cut at
the model's context. Bad text raises :class:`model_repository.preprocess.InputError` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository.preprocess import decode_texts
from vitrine.contracts import Model, Tensor
from vitrine.tokenization import ClipTokenizer, SentenceTokenizer

_TOKENIZERS: dict[Model, tuple[type[ClipTokenizer] | type[SentenceTokenizer], str, Tensor]] = {
    Model.CLIP_TEXT_TOKENIZE: (ClipTokenizer, "CLIP", Tensor.EOT_INDEX),
    Model.MINILM_TOKENIZE: (SentenceTokenizer, "MiniLM", Tensor.ATTENTION_MASK),
}
"""Per tokenizer model: its tokenizer, the model named in truncation notes, the input beside the ids (named
as the batch's attribute)."""


@dataclass(frozen=True)
class Tokenized:
    feed: dict[str, np.ndarray]
    truncated: np.ndarray  # [n, 1] bool
    texts: list[str]

    def truncation_note(self, context: str) -> str | None:
        """The log line for texts cut at the context, or None when none was."""
        if not self.truncated.any():
            return None
        lengths = ", ".join(str(len(self.texts[i])) for i in np.flatnonzero(self.truncated))
        return f"text truncated to the {context} context (characters: {lengths})"


@dataclass(frozen=True)
class TextFeeds:
    """A tokenizer model's work: BYTES text -> the tensors its encoder takes."""

    context: str  # the model named in the truncation note
    encode: Callable[[list[str]], tuple[dict[str, np.ndarray], np.ndarray]]

    @classmethod
    def for_model(cls, tokenizer: Model, tokenizer_json: Path) -> TextFeeds:
        if tokenizer not in _TOKENIZERS:
            raise ValueError(f"{tokenizer.value} is not a text tokenizer model")
        kind, context, second = _TOKENIZERS[tokenizer]
        tok = kind.from_file(tokenizer_json)

        def encode(texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
            b = tok.encode_batch(texts)
            feed = {
                Tensor.INPUT_IDS.value: np.asarray(b.input_ids, dtype=np.int64),
                # CLIP's end-of-text position [n, 1], or MiniLM's attention mask [n, bucket]
                second.value: np.asarray(getattr(b, second.value), dtype=np.int64).reshape(len(texts), -1),
            }
            return feed, np.asarray(b.truncated, dtype=bool).reshape(-1, 1)

        return cls(context, encode)

    def __call__(self, raw: object) -> Tokenized:
        """One request's TEXT tensor -> its feed; raises ``InputError`` for empty, non-UTF-8 or overlong
        text."""
        texts = decode_texts(raw, "text")  # type: ignore[arg-type]
        feed, truncated = self.encode(texts)
        return Tokenized(feed, truncated, texts)
