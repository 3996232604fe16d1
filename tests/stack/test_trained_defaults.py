"""`vitrine up` deploys a trained model only when it beats the exported one on held-out data, and never
re-ranks by default with an untrained cross-encoder head."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.calls import Calls
from gateway.ingest import IngestRoots
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline, PipelineSettings
from operations.trained_defaults import Comparison, compare, deployed_versions
from vitrine.reranking import TRAINED_HERE, UNKNOWN, rerank_default


@pytest.mark.parametrize("weights", ["partial", "random", UNKNOWN, "", "anything else"])
def test_an_untrained_head_never_reranks_by_default(weights: str) -> None:
    advice = rerank_default(weights)
    assert advice.on is False
    assert "untrained" in advice.reason and f"({weights} weights)" in advice.reason


@pytest.mark.parametrize("weights", ["pretrained", TRAINED_HERE])
def test_a_head_trained_for_relevance_reranks_by_default(weights: str) -> None:
    advice = rerank_default(weights)
    assert advice.on is True and "trained" in advice.reason


def _scores(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    return np.clip(rng.normal(mean, 0.1, n), 0.0, 1.0)


def test_a_trained_model_is_deployed_only_when_it_beats_the_exported_one() -> None:
    rng = np.random.default_rng(0)
    exported = _scores(rng, 80, 0.3)
    better = compare("cross-encoder", "NDCG@10", "as exported", exported, exported + 0.2)
    same = compare("cross-encoder", "NDCG@10", "as exported", exported, exported)
    noisy = compare("cross-encoder", "NDCG@10", "as exported", exported, _scores(rng, 80, 0.31))
    worse = compare("catalog adapters", "R@10", "zero-shot CLIP", exported, exported - 0.1)
    assert better.wins and better.gain.mean == pytest.approx(0.2)
    assert not same.wins and not noisy.wins and not worse.wins
    assert deployed_versions(better, better, 3) == {"encoder_version": 3, "reranker_version": 3}
    assert deployed_versions(worse, better, 3) == {"encoder_version": 1, "reranker_version": 3}
    assert deployed_versions(better, noisy, 3) == {"encoder_version": 3, "reranker_version": 1}
    assert deployed_versions(worse, None, 3) == {"encoder_version": 1, "reranker_version": 1}
    again = Comparison.from_dict(better.to_dict())  # the report keeps it for the next `up`
    assert (
        again.wins and again.queries == 80 and again.after.mean == pytest.approx(better.after.mean, abs=1e-4)
    )
    assert "DEPLOYED as cross-encoder version 3" in better.line("cross-encoder version 3")
    assert "not deployed" in noisy.line("cross-encoder version 3")


@pytest.mark.parametrize(("weights", "on"), [("partial", False), (TRAINED_HERE, True)])
def test_the_gateway_default_follows_the_served_cross_encoder(weights: str, on: bool) -> None:
    asked: list[int] = []

    async def served_weights(version: int, timeout: float | None) -> str:
        asked.append(version)
        return weights

    pipeline = Pipeline(None, None, None, PipelineSettings())  # type: ignore[arg-type]
    calls = Calls(
        pipeline,
        GatewayMetrics(),
        4,
        lambda exc: None,
        upsert_batch=8,
        ingest=IngestRoots(()),
        reranker_weights=served_weights,
    )
    info = asyncio.run(calls.serving(5.0))
    assert asked == [pipeline.serving.reranker_version]
    assert info.rerank_default.on is on and info.rerank_default.weights == weights
