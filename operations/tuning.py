"""Choosing the fused text modes' weights on validation queries only (``vitrine eval --tune``).

Each validation query is searched once per single space through the live gateway (CLIP image, CLIP
title, lexical, MiniLM: the lists a fused mode merges, at the depth it merges them), and every candidate
setting is fused here from those lists with the gateway's own ``fuse`` and weights
(``gateway.text_match``), so a grid of settings costs no further searches. Test queries are never read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.pipeline import fuse
from gateway.text_match import QUERY_TEXT, TextWeights, text_spaces
from gateway.types import Candidate, Fusion, TextMatch
from operations.evaluation import VALIDATION, in_split, score_query
from vitrine import ranking
from vitrine.catalog import LabelledQuery, Product

SINGLE = (TextMatch.IMAGE, TextMatch.TITLE, TextMatch.LEXICAL, TextMatch.MINILM)
"""One space each: what the fused modes are made of."""
_SPACE_OF = {"image": TextMatch.IMAGE, "title": TextMatch.TITLE, "lexical": TextMatch.LEXICAL}

GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
CLIP_GRID = (0.0, 0.25, 0.5, 1.0)

Lists = dict[TextMatch, list[Candidate]]
"""One query's ranked list per single-space mode."""

PLACEHOLDER = Product(id="", title="")
"""Tuning fuses ids and scores only; the products stay on the gateway."""


@dataclass(frozen=True)
class Choice:
    match: TextMatch
    fusion: Fusion
    weights: TextWeights
    ndcg: ranking.Estimate


def fused_ids(
    lists: Lists, match: TextMatch, fusion: Fusion, weights: TextWeights, rrf_k: int, k: int
) -> list[str]:
    """What the gateway returns for ``match`` with these settings, from the single-space lists."""
    spaces = text_spaces(match, weights, 1.0)
    inputs = []
    for space, which, w in spaces:
        single = TextMatch.MINILM if space == "minilm" else _SPACE_OF[space]
        ranked = lists[single]
        if fusion == Fusion.WEIGHTED and which == QUERY_TEXT and len(spaces) > 1 and ranked:
            top = ranked[0].score
            ranked = [Candidate(c.id, c.score / top, c.product) for c in ranked] if top > 0 else ranked
        inputs.append((w, ranked))
    return [c.id for c in fuse(inputs, fusion, rrf_k)[:k]]


def _settings(match: TextMatch) -> list[TextWeights]:
    base = TextWeights()
    if match == TextMatch.LEXICAL_MINILM:
        return [replace(base, lexical_weight=w) for w in GRID]
    if match == TextMatch.ALL:
        return [
            replace(base, lexical_weight=lw, clip_weight=cw) for lw, cw in itertools.product(GRID, CLIP_GRID)
        ]
    return [base]


def tune(queries: Sequence[LabelledQuery], lists: Sequence[Lists], rrf_k: int, k: int) -> list[Choice]:
    """For each fused mode and fusion method, the weights with the best mean NDCG@k on the validation
    queries among ``queries`` (others are skipped), best first."""
    picked = [(q, ls) for q, ls in zip(queries, lists, strict=True) if in_split(q.text, VALIDATION)]
    choices = []
    for match, fusion in itertools.product((TextMatch.LEXICAL_MINILM, TextMatch.ALL), Fusion):
        best: Choice | None = None
        for weights in _settings(match):
            ndcg = [
                score_query(fused_ids(ls, match, fusion, weights, rrf_k, k), q.relevant, k).ndcg
                for q, ls in picked
            ]
            estimate = ranking.bootstrap(ndcg)
            if best is None or estimate.mean > best.ndcg.mean:
                best = Choice(match, fusion, weights, estimate)
        assert best is not None
        choices.append(best)
    return sorted(choices, key=lambda c: -c.ndcg.mean)


def render(choices: Sequence[Choice], n: int) -> str:
    lines = [f"weights chosen on {n} validation queries (NDCG@10, 95% CI over queries)"]
    for c in choices:
        w = c.weights
        lines.append(
            f"  {c.match.value:<15} {c.fusion.value:<9} lexical {w.lexical_weight:<5} minilm "
            f"{w.minilm_weight:<5} clip {w.clip_weight:<5} NDCG@10 {c.ndcg}"
        )
    return "\n".join(lines)
