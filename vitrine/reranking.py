"""Whether re-ranking is on by default: only when the served cross-encoder was trained for relevance.

A cross-encoder scores (query, passage) pairs only if its head learned to: offline the export builds the
real MiniLM body with a seeded random head (``partial`` weights), whose scores are noise, and re-ranking
with it scrambles a good retrieval (measured on the demo catalog: NDCG@10 0.158 without re-ranking, 0.015
with it). So the default follows the served model's weights, stated once: the model repository renders
them as the ``weights`` parameter of each ``rerank`` ensemble (``model_repository.render``), the gateway
reads that parameter from Triton for the version it serves, and the page, ``vitrine up``'s banner and its
demo search all take the default from here. A caller can still ask for re-ranking per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitrine.contracts import Weights

WEIGHTS_PARAMETER = "weights"
"""The ``rerank`` ensembles' config parameter naming their cross-encoder's weights."""

TRAINED_HERE = "trained here"
"""A cross-encoder trained on the shop's labelled queries by ``vitrine adapt`` (or ``vitrine up``)."""

UNKNOWN = "unknown"
"""A repository rendered before the parameter existed: treated as untrained."""

RELEVANCE_TRAINED = frozenset({Weights.PRETRAINED.value, TRAINED_HERE})
"""Weights whose head was trained to score relevance: a real cross-encoder checkpoint (ms-marco) or one
trained here. ``partial`` (real body, random head), ``random`` and ``unknown`` are not."""


@dataclass(frozen=True)
class RerankDefault:
    """The served cross-encoder's weights, whether searches re-rank by default, and why, in words."""

    weights: str
    on: bool
    reason: str


def rerank_default(weights: str) -> RerankDefault:
    """On only for a head trained for relevance; never for an untrained one."""
    if weights in RELEVANCE_TRAINED:
        return RerankDefault(weights, True, f"the served cross-encoder is trained ({weights} weights)")
    return RerankDefault(
        weights,
        False,
        f"the served cross-encoder's head is untrained ({weights} weights): its scores would scramble "
        "the results",
    )
