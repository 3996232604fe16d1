"""Serving adapted encoders: Triton versions, pinned versions, a deploy under load, and rollback.

Real parts throughout: the tiny export with an adapter exported as encoder version 2, the embedded
tritonserver over the rendered repository, the index service, the gateway in process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch

from adapt.heads import AdapterPair, HeadKind
from adapt.serving import export_version
from operations.rollout import RolloutTarget, deploy, read_serving, rollback, serve_version
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine.contracts import EMBED_TEXT_IO, Model, Tensor, ensemble_name
from vitrine.gateway.v1 import gateway_pb2 as pb

QUERIES = (
    "red leather ankle boots",
    "blue canvas sneakers",
    "striped cotton t-shirt",
    "silk dress",
    "handbag",
)


@pytest.fixture(scope="module")
def adapted_triton(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Triton serving a copy of the tiny export; then, while it serves, a seeded adapter (visibly
    non-zero heads) is exported as encoder version 2, rendered and loaded, as a live deploy does."""
    from operations.stack import Stack

    art = tmp_path_factory.mktemp("adapted") / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    stack = Stack(tmp_path_factory.mktemp("adapted-triton"), art)
    try:
        triton = stack.start_triton()
        torch.manual_seed(5)
        pair = AdapterPair(512, 64, HeadKind.RESIDUAL, 0.5, 0.07)
        for head in (pair.image, pair.text):
            torch.nn.init.normal_(head.mlp[2].weight, std=0.2)  # type: ignore[arg-type]
        export_version(pair, art, "2", {"test": "seeded heads"}, measure=False)
        asyncio.run(serve_version(triton.grpc_url, 2, art, Path(triton.repo)))
        yield triton
    finally:
        stack.stop()


@dataclass
class Live:
    handle: GatewayHandle
    target: RolloutTarget
    catalog: Path


@pytest_asyncio.fixture
async def live(
    adapted_triton: Any, index_server: Any, small_catalog: Path, tmp_path: Path
) -> AsyncIterator[Live]:
    serving = tmp_path / "serving.json"
    config = gateway_config_for(
        adapted_triton.grpc_url, index_server.address, serving_file=str(serving), health_interval_s=0.05
    )
    handle = await start_gateway(config, small_catalog)
    target = RolloutTarget(adapted_triton.grpc_url, index_server.address, config.pipeline.collection, serving)
    yield Live(handle, target, small_catalog)
    await stop_gateway(handle)


async def answers(handle: GatewayHandle) -> dict[str, tuple[str, ...]]:
    out = {}
    for q in QUERIES:
        reply = await handle.stub.Search(pb.SearchRequest(text=q, top_k=10), timeout=30)
        out[q] = tuple(h.product.id for h in reply.hits)
    return out


def test_adapted_version_is_rendered_and_pinned(adapted_triton: Any) -> None:
    """Triton serves both encoder versions; embed_text runs version 1 and embed_text_v2 version 2."""
    import tritonclient.grpc as tc

    from vitrine import triton as request

    client = tc.InferenceServerClient(adapted_triton.grpc_url)
    meta = client.get_model_metadata(Model.CLIP_TEXT_ENCODER.value)
    assert sorted(meta.versions) == ["1", "2"]

    def embed(model: str) -> np.ndarray:
        res = client.infer(model, request.inputs(EMBED_TEXT_IO, {Tensor.TEXT: ["red boots"]}))
        return np.asarray(request.output(EMBED_TEXT_IO, res, Tensor.EMBEDDING))

    base, adapted = embed(ensemble_name(Model.EMBED_TEXT, 1)), embed(ensemble_name(Model.EMBED_TEXT, 2))
    direct_v1 = client.infer(
        Model.CLIP_TEXT_ENCODER.value,
        [_ids_input(adapted_triton)[0], _ids_input(adapted_triton)[1]],
        model_version="1",
    ).as_numpy(Tensor.EMBEDDING.value)[0]
    assert np.allclose(base, direct_v1, atol=1e-5)
    assert float(base @ adapted) < 0.99  # a different encoder answers the pinned ensemble
    assert abs(float(np.linalg.norm(adapted)) - 1.0) < 1e-5


def _ids_input(triton: Any) -> list[Any]:
    import tritonclient.grpc as tc

    from vitrine.tokenization import ClipTokenizer

    tok = ClipTokenizer.from_file(Path(triton.repo) / "clip_text_tokenize" / "1" / "tokenizer.json")
    enc = tok.encode_batch(["red boots"])
    ids = tc.InferInput(Tensor.INPUT_IDS.value, list(enc.input_ids.shape), "INT64")
    ids.set_data_from_numpy(enc.input_ids)
    eot = tc.InferInput(Tensor.EOT_INDEX.value, list(enc.eot_index.shape), "INT64")
    eot.set_data_from_numpy(enc.eot_index)
    return [ids, eot]


async def test_deploy_under_concurrent_searches_then_rollback(live: Live) -> None:
    handle = live.handle
    before = await answers(handle)
    seen: list[tuple[str, tuple[str, ...]]] = []
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def searcher(q: str) -> None:
        while not done.is_set():
            try:
                reply = await handle.stub.Search(pb.SearchRequest(text=q, top_k=10), timeout=30)
                seen.append((q, tuple(h.product.id for h in reply.hits)))
            except Exception as exc:  # every failure is a test failure
                failures.append(exc)

    tasks = [asyncio.create_task(searcher(q)) for q in QUERIES for _ in range(2)]
    report = await deploy(live.target, 2, live.catalog, batch=8, progress=False)
    # The gateway follows the serving file within a health interval; searches keep running meanwhile.
    for _ in range(200):
        if handle.gateway.pipeline.serving.version == 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    done.set()
    await asyncio.gather(*tasks)

    assert handle.gateway.pipeline.serving.version == 2
    assert report["missing_ids"] == [] and report["products"] == len(handle.products)
    after = await answers(handle)
    assert failures == []
    assert len(seen) > len(QUERIES)
    assert any(after[q] != before[q] for q in QUERIES), "the adapted encoder changed no answer"
    # Every answer during the switch is wholly the old version's or wholly the new one's: a query vector
    # of one version against product vectors of the other (or a half-filled space) would differ.
    mixed = [(q, ids) for q, ids in seen if ids not in (before[q], after[q])]
    assert mixed == []

    assert rollback(live.target.serving_file) == 1
    for _ in range(200):
        if handle.gateway.pipeline.serving.version == 1:
            break
        await asyncio.sleep(0.05)
    assert await answers(handle) == before
    assert json.loads(live.target.serving_file.read_text())["encoder_version"] == 1
    assert read_serving(live.target.serving_file)["history"] == []


async def test_a_gateway_pinned_to_version_2_answers_with_it(
    live: Live, adapted_triton: Any, index_server: Any
) -> None:
    """A second gateway started with encoder_version=2 on the same catalog gives the deployed answers."""
    await deploy(live.target, 2, live.catalog, batch=8, progress=False)
    for _ in range(200):
        if live.handle.gateway.pipeline.serving.version == 2:
            break
        await asyncio.sleep(0.05)
    deployed = await answers(live.handle)
    from dataclasses import replace

    pinned_config = replace(live.handle.gateway.config, port=0, serving_file="", encoder_version=2)
    pinned = await start_gateway(pinned_config)
    try:
        assert await answers(pinned) == deployed
    finally:
        await stop_gateway(pinned)
