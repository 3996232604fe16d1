"""Serving tokenizers against the reference tokenizers, id for id, over a varied corpus."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from vitrine.contracts import CLIP_CONTEXT_LENGTH, CLIP_TEXT_BUCKETS, RERANK_MAX_LENGTH, RERANK_PAIR_BUCKETS
from vitrine.tokenization import (
    ClipTokenizer,
    PairTokenizer,
    TokenizerDataError,
    build_clip_tokenizer_json,
    bundled_clip_bpe,
    bundled_minilm_dir,
    clip_vocab_and_merges,
    write_pair_tokenizer_json,
)

CORPUS = [
    "red leather ankle boots",
    "A photo of a CAT",
    "",
    "   ",
    "Café crème brûlée, naïve résumé",
    "Ä Ö Ü ß ø å",
    "北京 烤鸭 和 寿司",
    "العربية ελληνικά русский",
    "😀 emoji 👠👢 in a title 🇫🇷",
    "Price: $19.99 (was $25!) -- 20% off!!!",
    "e-mail: shop@example.com / https://example.com/item?id=42",
    "it's what we'd've done, don't STOP",
    "HELLO   World\t\nnew  line",
    "123456789 0.5 1,000,000 3x4",
    "size 10.5 US / 44 EU (wide fit)",
    "waterproof " * 80,
    "x" * 400,
    "one two three four five six seven eight nine ten " * 9,
]
FTFY_CASES = ["&amp; html &lt;tag&gt;", "ﬁ ligature", "ÃƒÂ© mojibake"]
"""open_clip runs ftfy and HTML unescaping first; transformers' CLIPTokenizer (the reference the served
checkpoints ship with) does not, and neither do we."""

PASSAGES = [
    "Genuine leather ankle boots with a side zip and a stacked heel.",
    "",
    "Café-style bistro chairs, set of 2 — 100% recycled aluminium 🪑",
    "Waterproof trail running shoes. " * 60,
    "ÜBER-comfy hoodie (unisex), sizes XS–XXL; machine washable at 30°C.",
    "北京 烤鸭",
    "a",
]


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "clip" / "tokenizer.json"
    build_clip_tokenizer_json(bundled_clip_bpe(), path)
    return path


@pytest.fixture(scope="module")
def clip(clip_json: Path) -> ClipTokenizer:
    return ClipTokenizer.from_file(clip_json)


@pytest.fixture(scope="module")
def hf_clip() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bundled_clip_bpe())
    factory: Any = CLIPTokenizer
    return factory(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def open_clip_tokenizer() -> Any:
    """OpenAI's pure-Python BPE, loaded from its file: importing open_clip would need torchvision."""
    spec = importlib.util.spec_from_file_location(
        "open_clip_simple_tokenizer", bundled_clip_bpe().parent / "tokenizer.py"
    )
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(bundled_clip_bpe()))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> PairTokenizer:
    path = tmp_path_factory.mktemp("tok") / "pair.json"
    write_pair_tokenizer_json(bundled_minilm_dir() / "tokenizer.json", path)
    return PairTokenizer.from_file(path)


@pytest.fixture(scope="module")
def hf_bert() -> Any:
    """Built from vocab.txt alone, so it does not share our tokenizer.json."""
    import transformers

    lines = (bundled_minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    factory: Any = transformers.BertTokenizer
    return factory(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)


def _rows(batch: Any) -> list[list[int]]:
    return [
        batch.input_ids[i, : int(batch.eot_index[i, 0]) + 1].tolist() for i in range(len(batch.input_ids))
    ]


def test_clip_matches_transformers_id_for_id(clip: ClipTokenizer, hf_clip: Any) -> None:
    texts = CORPUS + FTFY_CASES
    batch = clip.encode_batch(texts)
    for text, ours, truncated in zip(texts, _rows(batch), batch.truncated, strict=True):
        want = hf_clip(text, truncation=True, max_length=CLIP_CONTEXT_LENGTH)["input_ids"]
        assert ours == want, text
        assert bool(truncated) == (len(hf_clip(text)["input_ids"]) > CLIP_CONTEXT_LENGTH), text


def test_clip_matches_openai_bpe_id_for_id(clip: ClipTokenizer, open_clip_tokenizer: Any) -> None:
    batch = clip.encode_batch(CORPUS)
    reference = open_clip_tokenizer(CORPUS, context_length=CLIP_CONTEXT_LENGTH).numpy()
    for text, ours, want in zip(CORPUS, _rows(batch), reference, strict=True):
        assert ours == [int(t) for t in want if t != 0], text


def test_clip_truncates_deliberately_at_77(clip: ClipTokenizer) -> None:
    batch = clip.encode_batch(["short", "waterproof " * 80])
    assert batch.input_ids.shape == (2, CLIP_CONTEXT_LENGTH)
    assert batch.truncated.tolist() == [False, True]
    assert batch.eot_index[:, 0].tolist() == [2, CLIP_CONTEXT_LENGTH - 1]
    assert batch.input_ids[1, 0] == clip.bos_id and batch.input_ids[1, -1] == clip.eos_id


def test_clip_pads_to_the_smallest_fitting_bucket(clip: ClipTokenizer) -> None:
    assert clip.encode_batch(["red boots"]).input_ids.shape == (1, CLIP_TEXT_BUCKETS[0])
    assert clip.encode_batch(["red boots", "a b c d e f g h i j k l"]).input_ids.shape == (2, 16)
    empty = clip.encode_batch([""])
    assert empty.input_ids[0, :2].tolist() == [clip.bos_id, clip.eos_id]
    assert empty.eot_index.tolist() == [[1]] and not empty.truncated[0]
    assert clip.encode_batch([]).input_ids.shape == (0, CLIP_TEXT_BUCKETS[0])
    assert empty.input_ids.dtype == np.int64 and empty.eot_index.dtype == np.int64


@pytest.mark.parametrize("max_length", [RERANK_MAX_LENGTH, 32])
def test_pairs_match_transformers_only_second(pairs: PairTokenizer, hf_bert: Any, max_length: int) -> None:
    tok = PairTokenizer(pairs._tok, max_length)
    query = "Comfy ÜBER leather boots, size 42?"
    batch = tok.encode(query, PASSAGES)
    want = hf_bert(
        [query] * len(PASSAGES), PASSAGES, truncation="only_second", max_length=max_length, padding="longest"
    )
    full = hf_bert([query] * len(PASSAGES), PASSAGES)
    width = len(want["input_ids"][0])
    assert batch.input_ids.shape[1] == next(b for b in (*RERANK_PAIR_BUCKETS, max_length) if b >= width)
    for i, passage in enumerate(PASSAGES):
        assert batch.input_ids[i, :width].tolist() == want["input_ids"][i], passage
        assert batch.attention_mask[i, :width].tolist() == want["attention_mask"][i], passage
        assert batch.token_type_ids[i, :width].tolist() == want["token_type_ids"][i], passage
        assert not batch.attention_mask[i, width:].any() and not batch.input_ids[i, width:].any()
        assert bool(batch.truncated[i]) == (len(full["input_ids"][i]) > max_length), passage


def test_pair_query_longer_than_half_the_budget_is_cut(pairs: PairTokenizer) -> None:
    tok = PairTokenizer(pairs._tok, 64)
    batch = tok.encode("boots " * 100, ["leather ankle boots", "suede"])
    width = int(batch.attention_mask.sum(axis=1).max())
    assert width <= 64
    assert batch.input_ids.shape == (2, next(b for b in (*RERANK_PAIR_BUCKETS, 64) if b >= width))
    assert batch.truncated.tolist() == [True, True]
    query_len = int(np.argmax(batch.input_ids[0] == tok.sep_id)) - 1
    assert query_len == (64 - 3) // 2
    assert (batch.token_type_ids[:, query_len + 2] == 1).all()


def test_missing_or_wrong_tokenizer_files_fail_clearly(tmp_path: Path, clip_json: Path) -> None:
    with pytest.raises(TokenizerDataError, match="not found"):
        ClipTokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(TokenizerDataError, match="not a BERT WordPiece"):
        PairTokenizer.from_file(clip_json)
    bogus = tmp_path / "bogus.txt.gz"
    import gzip

    with gzip.open(bogus, "wt") as f:
        f.write("header\na b\n")
    with pytest.raises(TokenizerDataError, match="not a CLIP BPE"):
        clip_vocab_and_merges(bogus)
