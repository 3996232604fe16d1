"""Length-sorted sub-batches of re-rank pairs: each sub-batch cut to its own width, scores unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_repository.runtime import LengthSorting, make_session, run_batched
from vitrine.catalog import Product
from vitrine.contracts import Tensor
from vitrine.tokenization import PairTokenizer

MASK, IDS, SCORE = Tensor.ATTENTION_MASK.value, Tensor.INPUT_IDS.value, Tensor.LOGITS.value


class _RecordingSession:
    """Scores a row by the sum of its unmasked ids and records every width it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, mask = feed[IDS], feed[MASK]
        self.calls.append(ids.shape)
        return [(ids * mask).sum(axis=1, keepdims=True).astype(np.float32)]


def _pairs(lengths: list[int], width: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = np.arange(1, n + 1) + 100 * row
        mask[row, :n] = 1
    return {IDS: ids, MASK: mask}


def test_rows_run_sorted_in_sub_batches_cut_to_their_own_width() -> None:
    lengths = [60, 5, 33, 9, 12, 7, 64, 3]
    feed = _pairs(lengths, 64)
    session = _RecordingSession()
    sorting = LengthSorting(MASK, rows=3, multiple=8)
    (result,) = run_batched(session, [feed], [SCORE], sorting)  # type: ignore[arg-type]
    expected = (feed[IDS] * feed[MASK]).sum(axis=1, keepdims=True)
    assert result.outputs is not None
    np.testing.assert_array_equal(result.outputs[SCORE], expected)  # back in the request's order
    # Sorted: [3, 5, 7] -> width 8, [9, 12, 33] -> 40, [60, 64] -> 64.
    assert session.calls == [(3, 8), (3, 40), (2, 64)]


def test_requests_merged_by_the_batcher_are_sorted_together_and_split_back() -> None:
    first, second = _pairs([40, 4], 40), _pairs([6, 38, 2], 40)
    session = _RecordingSession()
    results = run_batched(session, [first, second], [SCORE], LengthSorting(MASK, rows=2))  # type: ignore[arg-type]
    for feed, result in zip((first, second), results, strict=True):
        assert result.outputs is not None
        np.testing.assert_array_equal(result.outputs[SCORE], (feed[IDS] * feed[MASK]).sum(1, keepdims=True))
    assert session.calls == [(2, 8), (2, 40), (1, 40)]


def test_without_sorting_one_run_at_full_width() -> None:
    session = _RecordingSession()
    run_batched(session, [_pairs([3, 60], 64)], [SCORE])  # type: ignore[arg-type]
    assert session.calls == [(2, 64)]


def test_cross_encoder_scores_are_unchanged_by_sub_batching(tiny_artifacts: Path) -> None:
    """The real (tiny) cross-encoder: cutting masked padding leaves every pair's score as it was."""
    tokenizer = PairTokenizer.from_file(tiny_artifacts / "tokenizers" / "cross_encoder" / "tokenizer.json")
    session = make_session(tiny_artifacts / "cross_encoder" / "model.onnx", threads=1)
    product = Product(
        "p", "Redfern brown suede ankle boots", " ".join(["warm lined leather sole for rainy days"] * 6)
    )
    passages = [product.passage(words) for words in (0, 1, 3, 5, 8, 12, 20, 30, 2, 0, 4, 16)]
    batch = tokenizer.encode("brown ankle boots", passages)
    feed = {
        IDS: np.asarray(batch.input_ids, dtype=np.int64),
        MASK: np.asarray(batch.attention_mask, dtype=np.int64),
        Tensor.TOKEN_TYPE_IDS.value: np.asarray(batch.token_type_ids, dtype=np.int64),
    }
    (whole,) = run_batched(session, [feed], [SCORE])
    (sorted_,) = run_batched(session, [feed], [SCORE], LengthSorting(MASK, rows=4))
    assert whole.outputs is not None and sorted_.outputs is not None
    np.testing.assert_allclose(sorted_.outputs[SCORE], whole.outputs[SCORE], rtol=0, atol=1e-5)
    assert len(set(np.round(whole.outputs[SCORE].ravel(), 4))) > 1  # the passages really differ


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (0, "Boots. one two three four five"),
        (3, "Boots. one two three"),
        (5, "Boots. one two three four five"),
        (9, "Boots. one two three four five"),
    ],
)
def test_passage_policy_keeps_the_first_description_words(words: int, expected: str) -> None:
    assert Product("p", "Boots", "one two three four five").passage(words) == expected
    assert Product("p", "Boots").passage(words) == "Boots."
