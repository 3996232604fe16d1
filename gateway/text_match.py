"""Which spaces a text query searches, and with what weight, for each ``TextMatch`` mode.

The modes, from one signal to all of them:

- ``image``, ``title``, ``fusion``: CLIP only (the query's CLIP text vector against the products' image
  vectors, title vectors, or both fused, ``title_weight`` on the title side);
- ``lexical``: BM25 over the product's words (the index's lexical space; embeds nothing);
- ``minilm``: the query's all-MiniLM-L6-v2 vector against the products' title-and-description vectors;
- ``lexical_minilm``: those two fused;
- ``all``: lexical, MiniLM and CLIP (image and title) fused.

A fused mode's weights are ``PipelineSettings``' ``lexical_weight``, ``minilm_weight`` and
``clip_weight``, in proportion (only those of the signals the mode uses count), scaled to the text's
share of the query. They were chosen on validation queries (``vitrine eval --tune``; docs/BENCHMARKS.md),
never on the test queries the evaluation reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import InvalidInput
from gateway.types import TextMatch
from vitrine.items import IMAGE, LEXICAL, MINILM, TITLE

QUERY_VECTOR = "text"
"""A space searched with the query's CLIP text vector."""
SENTENCE_VECTOR = "minilm"
"""A space searched with the query's MiniLM sentence vector."""
QUERY_TEXT = "lexical"
"""A space searched with the query's words, not a vector."""

LEXICAL_QUERY_CHARS = 1024
"""Longest text the index service matches in a lexical space (``index.proto``); longer queries are cut."""

Searched = tuple[str, str, float]
"""(space, what the query brings to it, weight)."""


@dataclass(frozen=True)
class TextWeights:
    """The fused modes' weights (``PipelineSettings`` holds them)."""

    title_weight: float = 0.5
    lexical_weight: float = 1.0
    minilm_weight: float = 1.0
    clip_weight: float = 1.0


SIGNALS: dict[TextMatch, tuple[str, ...]] = {
    TextMatch.IMAGE: ("image",),
    TextMatch.TITLE: ("title",),
    TextMatch.FUSION: ("clip",),
    TextMatch.LEXICAL: ("lexical",),
    TextMatch.MINILM: ("minilm",),
    TextMatch.LEXICAL_MINILM: ("lexical", "minilm"),
    TextMatch.ALL: ("lexical", "minilm", "clip"),
}


def text_spaces(match: TextMatch, weights: TextWeights, share: float) -> list[Searched]:
    """The spaces a text query searches under ``match``; their weights sum to ``share``."""
    signals = SIGNALS[match]
    raw = {
        "image": 1.0,
        "title": 1.0,
        "lexical": weights.lexical_weight,
        "minilm": weights.minilm_weight,
        "clip": weights.clip_weight,
    }
    total = sum(raw[s] for s in signals) or 1.0
    out: list[Searched] = []
    for signal in signals:
        w = share * raw[signal] / total
        if signal == "image":
            out.append((IMAGE, QUERY_VECTOR, w))
        elif signal == "title":
            out.append((TITLE, QUERY_VECTOR, w))
        elif signal == "lexical":
            out.append((LEXICAL, QUERY_TEXT, w))
        elif signal == "minilm":
            out.append((MINILM, SENTENCE_VECTOR, w))
        else:
            out.append((IMAGE, QUERY_VECTOR, w * (1.0 - weights.title_weight)))
            out.append((TITLE, QUERY_VECTOR, w * weights.title_weight))
    return [s for s in out if s[2] > 0.0] or out[:1]


def servable_spaces(
    asked: TextMatch | None, default: TextMatch, weights: TextWeights, share: float, missing: set[str]
) -> list[Searched]:
    """``text_spaces`` of the mode asked for, else of the default; ``missing`` names what this gateway
    cannot search (``QUERY_TEXT``: its index has no lexical space, e.g. Milvus; ``SENTENCE_VECTOR``: no
    sentence encoder). A mode asked for by name needs all its parts (INVALID_ARGUMENT otherwise); the
    default falls back to CLIP fusion, so a gateway without them still answers."""
    spaces = text_spaces(asked or default, weights, share)
    if not any(which in missing for _, which, _ in spaces):
        return spaces
    if asked is not None:
        what = "a lexical space" if QUERY_TEXT in missing else "the MiniLM sentence encoder"
        raise InvalidInput(f"text_match {asked.value!r} needs {what}; this gateway has none")
    return text_spaces(TextMatch.FUSION, weights, share)
