"""The sentence encoder's export pieces: its tokenizer file, tracing inputs and validation probe.

all-MiniLM-L6-v2 is validated on real texts, not random vectors: a batch of product-like queries and a
small corpus of product passages go through the serving tokenizer, both engines embed them, and the
ranking compared is every query against the corpus (cosine), so top-10 agreement is measured on the
retrieval the ``minilm`` space serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export import validate
from export.checkpoints import Checkpoint
from vitrine.contracts import Tensor
from vitrine.tokenization import SentenceTokenizer, write_pair_tokenizer_json

TOKENIZER_FILE = Path("tokenizers/minilm/tokenizer.json")
CORPUS = 100
"""Passages of the validation corpus each query is ranked against."""
CORPUS_BATCH = 50


def write_tokenizer(out: Path, ckpt: Checkpoint) -> None:
    """The checkpoint's WordPiece tokenizer without baked-in truncation/padding (serving decides those),
    for serving and for the reference alike."""
    write_pair_tokenizer_json(ckpt.path / "tokenizer.json", out / TOKENIZER_FILE)
    write_pair_tokenizer_json(ckpt.path / "tokenizer.json", ckpt.path / "tokenizer.json")


def dummy() -> validate.Feeds:
    ids = np.full((2, 16), 1000, np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    return {Tensor.INPUT_IDS.value: ids, Tensor.ATTENTION_MASK.value: mask}


def probe(out: Path, seed: int, corpus: int = CORPUS) -> validate.RankingProbe:
    """Queries (some beyond 256 tokens, to cross the truncation) and a corpus of passages, tokenized by
    the serving tokenizer; scores: each query's cosine with every corpus passage."""
    tok = SentenceTokenizer.from_file(out / TOKENIZER_FILE)
    n = validate.QUERIES
    texts = [
        validate.product_texts(n - 4, seed + 11),
        validate.product_texts(4, seed + 12, long_every=1),
        *(
            validate.product_passages(min(CORPUS_BATCH, corpus - start), seed + 13 + start)
            for start in range(0, corpus, CORPUS_BATCH)
        ),
    ]
    batches = []
    for group in texts:
        b = tok.encode_batch(group)
        batches.append({Tensor.INPUT_IDS.value: b.input_ids, Tensor.ATTENTION_MASK.value: b.attention_mask})
    return validate.RankingProbe(batches, lambda e: e[:n] @ e[n:].T)
