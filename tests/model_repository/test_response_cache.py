"""Triton's response cache in front of the public ensembles (``RenderOptions.response_cache_mb``): a
repeated request is answered from the cache, byte for byte, without running a model; other requests and
uncacheable models are untouched, and it is off unless asked for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loadtest import triton_metrics
from model_repository.render import RenderOptions, render_repository
from operations.servers import TritonServer
from operations.stack import Stack
from tests.model_repository.client import embed_text, rerank, statistics
from vitrine.contracts import Model, Tensor

pytestmark = pytest.mark.slow

CACHED = {Model.EMBED_TEXT.value, Model.EMBED_IMAGE.value, Model.EMBED_MINILM.value, Model.RERANK.value}


@pytest.fixture(scope="module")
def cached_triton(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    stack = Stack(
        tmp_path_factory.mktemp("cached"), tiny_artifacts, render=RenderOptions(response_cache_mb=8)
    )
    try:
        yield stack.start_triton()
    finally:
        stack.stop()


def _enabled(repo: Path) -> set[str]:
    configs = (text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt"))
    return {c.name for c in configs if c.response_cache.enable}


def test_only_the_public_ensembles_are_cached_and_only_when_asked(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    assert _enabled(render_repository(tiny_artifacts, tmp_path / "off", RenderOptions())) == set()
    assert (
        _enabled(render_repository(tiny_artifacts, tmp_path / "on", RenderOptions(response_cache_mb=8)))
        == CACHED
    )


async def test_a_repeated_query_is_answered_from_the_cache(cached_triton: TritonServer) -> None:
    async with grpcclient.InferenceServerClient(cached_triton.grpc_url) as client:
        first = (await embed_text(client, "red leather ankle boots")).as_numpy(Tensor.EMBEDDING.value)
        encoded, _ = await statistics(client, Model.CLIP_TEXT_ENCODER, at_least=1)
        again = (await embed_text(client, "red leather ankle boots")).as_numpy(Tensor.EMBEDDING.value)
        other = (await embed_text(client, "blue canvas sneakers")).as_numpy(Tensor.EMBEDDING.value)
        after, _ = await statistics(client, Model.CLIP_TEXT_ENCODER, at_least=encoded + 1)
        stats = await client.get_inference_statistics(Model.EMBED_TEXT.value, as_json=True)
        passages = ["Brown suede boots", "A steel dive watch"]
        scores = [(await rerank(client, "boots", passages)).as_numpy(Tensor.SCORES.value) for _ in range(2)]
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert after == encoded + 1  # the repeat never reached the encoder; the new query did
    entry = stats["model_stats"][0]["inference_stats"]
    assert int(entry["cache_hit"]["count"]) == 1 and int(entry["cache_miss"]["count"]) == 2
    assert np.array_equal(scores[0], scores[1])
    counters = triton_metrics.per_model({}, triton_metrics.snapshot(cached_triton.metrics_url))
    assert counters[Model.EMBED_TEXT.value]["cache_hit_rate"] == pytest.approx(1 / 3)
    assert counters[Model.RERANK.value]["cache_hit_rate"] == pytest.approx(1 / 2)
    assert "cache_hit_rate" not in counters[Model.CLIP_TEXT_ENCODER.value]
