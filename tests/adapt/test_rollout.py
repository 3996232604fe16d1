"""Serving adapted encoders: Triton versions, pinned versions, a deploy under load, and rollback.

Real parts throughout: the tiny export with an adapter and a re-trained cross-encoder exported as
version 2, the embedded tritonserver over the rendered repository, the index service, the gateway in
process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch

from adapt import reranker
from adapt.heads import AdapterPair, HeadKind
from adapt.serving import export_version
from operations.rollout import RolloutTarget, deploy, read_serving, rollback, serve_version
from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine.contracts import EMBED_TEXT_IO, RERANK_IO, Model, Tensor, ensemble_name
from vitrine.gateway.v1 import gateway_pb2 as pb

QUERIES = (
    "red leather ankle boots",
    "blue canvas sneakers",
    "striped cotton t-shirt",
    "silk dress",
    "handbag",
)


@dataclass
class Adapted:
    grpc_url: str
    repo: str
    cross: reranker.Encoder
    """The cross-encoder exported as version 2, in PyTorch."""


@pytest.fixture(scope="module")
def adapted_triton(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapted]:
    """Triton serving a copy of the tiny export; then, while it serves, a seeded adapter (visibly
    non-zero heads) and a cross-encoder with a re-drawn head are exported as version 2, rendered and
    loaded, as a live deploy does (the deploy itself loads the cross-encoder version)."""
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
        cross = reranker.Encoder(art, layers=1)
        torch.nn.init.normal_(cross.model.classifier.weight, std=1.0)
        export_version(pair, art, "2", {"test": "seeded heads"}, measure=False, cross_encoder=cross)
        asyncio.run(serve_version(triton.grpc_url, 2, art, Path(triton.repo)))
        yield Adapted(triton.grpc_url, str(triton.repo), cross)
    finally:
        stack.stop()


@dataclass
class Live:
    handle: GatewayHandle
    target: RolloutTarget
    catalog: Path


@pytest_asyncio.fixture
async def live(
    adapted_triton: Any,
    index_server: Any,
    small_catalog: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Live]:
    """A gateway following the serving file, or (parametrized ``"postgres"``) a PostgreSQL pointer."""
    serving = tmp_path / "serving.json"
    over_postgres = getattr(request, "param", "file") == "postgres"
    state_url = request.getfixturevalue("postgres_dsn") if over_postgres else ""
    config = gateway_config_for(
        adapted_triton.grpc_url,
        index_server.address,
        serving_file=str(serving),
        state_url=state_url,
        health_interval_s=0.05,
    )
    handle = await start_gateway(config, small_catalog)
    target = RolloutTarget(
        adapted_triton.grpc_url,
        index_server.address,
        config.pipeline.collection,
        serving,
        state_url=state_url,
    )
    yield Live(handle, target, small_catalog)
    await stop_gateway(handle)


def clip_search(text: str, rerank: bool) -> pb.SearchRequest:
    """A search through the CLIP spaces, the ones a catalog adapter changes (the default text mode reads
    the lexical and MiniLM spaces, which a CLIP rollout leaves alone)."""
    return pb.SearchRequest(text=text, top_k=10, rerank=rerank, text_match=pb.TEXT_MATCH_FUSION)


async def answers(handle: GatewayHandle, rerank: bool = False) -> dict[str, tuple[str, ...]]:
    out = {}
    for q in QUERIES:
        reply = await handle.stub.Search(clip_search(q, rerank), timeout=30)
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


def test_trained_cross_encoder_is_served_as_version_2(adapted_triton: Any, tiny_artifacts: Path) -> None:
    """cross_encoder serves versions 1 and 2; rerank_v2 (loaded as a deploy loads it) scores as the
    trained model does in PyTorch, rerank as the exported one."""
    import tritonclient.grpc as tc

    from operations.rollout import load_reranker
    from vitrine import triton as request

    async def load() -> int:
        from gateway.triton_client import TritonModels

        models = TritonModels(adapted_triton.grpc_url)
        try:
            return await load_reranker(models, 2)
        finally:
            await models.close()

    assert asyncio.run(load()) == 2
    client = tc.InferenceServerClient(adapted_triton.grpc_url)
    assert sorted(client.get_model_metadata(Model.CROSS_ENCODER.value).versions) == ["1", "2"]
    query, passages = (
        "red leather boots",
        ["red leather ankle boots", "a blue canvas bag", "green silk dress"],
    )

    def scores(model: str) -> np.ndarray:
        res = client.infer(
            model, request.inputs(RERANK_IO, {Tensor.QUERY: [query], Tensor.PASSAGES: passages})
        )
        return np.asarray(request.output(RERANK_IO, res, Tensor.SCORES)).reshape(-1)

    served_v1, served_v2 = scores(ensemble_name(Model.RERANK, 1)), scores(ensemble_name(Model.RERANK, 2))
    exported = reranker.Encoder(tiny_artifacts, layers=0)
    np.testing.assert_allclose(served_v1, reranker.scores(exported, query, passages), atol=1e-3)
    np.testing.assert_allclose(served_v2, reranker.scores(adapted_triton.cross, query, passages), atol=1e-3)
    assert not np.allclose(served_v1, served_v2, atol=1e-2)


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
    before = {False: await answers(handle), True: await answers(handle, rerank=True)}
    seen: list[tuple[bool, str, tuple[str, ...]]] = []
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def searcher(q: str, rerank: bool) -> None:
        while not done.is_set():
            try:
                reply = await handle.stub.Search(clip_search(q, rerank), timeout=30)
                seen.append((rerank, q, tuple(h.product.id for h in reply.hits)))
            except Exception as exc:  # every failure is a test failure
                failures.append(exc)

    tasks = [asyncio.create_task(searcher(q, rerank)) for q in QUERIES for rerank in (False, True)]
    report = await deploy(live.target, 2, live.catalog, batch=8, progress=False, settle_s=0.2)
    # The gateway follows the serving file within a health interval; searches keep running meanwhile.
    for _ in range(200):
        if handle.gateway.pipeline.serving.version == 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    done.set()
    await asyncio.gather(*tasks)

    serving = handle.gateway.pipeline.serving
    assert (serving.version, serving.reranker_version) == (2, 2)
    assert report["missing_ids"] == [] and report["products"] == len(handle.products)
    assert report["reranker_version"] == 2
    after = {False: await answers(handle), True: await answers(handle, rerank=True)}
    assert failures == []
    assert len(seen) > 2 * len(QUERIES)
    assert any(after[False][q] != before[False][q] for q in QUERIES), "the adapted encoder changed no answer"
    # Every answer during the switch is wholly the old versions' or wholly the new ones': a query vector
    # of one version against product vectors of the other (or a half-filled space), or one version's
    # candidates re-ranked by the other's cross-encoder, would differ from both.
    mixed = [(r, q, ids) for r, q, ids in seen if ids not in (before[r][q], after[r][q])]
    assert mixed == []

    assert rollback(live.target.serving_file) == (1, 1)
    for _ in range(200):
        if handle.gateway.pipeline.serving.version == 1:
            break
        await asyncio.sleep(0.05)
    assert handle.gateway.pipeline.serving.reranker_version == 1
    assert {False: await answers(handle), True: await answers(handle, rerank=True)} == before
    state = json.loads(live.target.serving_file.read_text())
    assert (state["encoder_version"], state["reranker_version"]) == (1, 1)
    assert read_serving(live.target.serving_file)["history"] == []


async def test_a_product_ingested_during_a_deploy_is_in_the_new_spaces(live: Live) -> None:
    """The catalog file the deploy walks does not hold a product ingested meanwhile; the gateway writes
    the pending version's vectors for it, so after the switch it is found like every other product."""
    handle = live.handle
    deploying = asyncio.create_task(
        deploy(live.target, 2, live.catalog, batch=8, progress=False, settle_s=0.5)
    )
    for _ in range(200):
        if handle.gateway.pipeline.serving.pending_version == 2:
            break
        await asyncio.sleep(0.05)
    assert handle.gateway.pipeline.serving.pending_version == 2
    assert handle.gateway.pipeline.serving.version == 1  # still answering with the old version
    source = next(iter(handle.products.values()))
    late = pb.Product(id="added-during-deploy", title=source.title, category=list(source.category), price=1.0)
    try:
        upserted = await handle.stub.UpsertProducts(
            iter([pb.UpsertProductsRequest(product=late, image_bytes=handle.image(source.id))]), timeout=60
        )
        assert upserted.upserted == 1 and not upserted.errors
        await deploying
        for _ in range(200):
            if handle.gateway.pipeline.serving.version == 2:
                break
            await asyncio.sleep(0.05)
        serving = handle.gateway.pipeline.serving
        assert (serving.version, serving.pending_version) == (2, 1)
        similar = await handle.stub.SimilarItems(pb.SimilarItemsRequest(id=late.id, top_k=3), timeout=30)
        assert len(similar.by_image) == 3 and len(similar.by_title) == 3  # it has version 2's vectors
    finally:  # the collection outlives this test
        await deploying
        await handle.stub.DeleteProducts(pb.DeleteProductsRequest(ids=[late.id]), timeout=30)


@pytest.mark.parametrize("live", ["postgres"], indirect=True)
async def test_over_postgresql_a_product_ingested_through_another_replica_gets_the_pending_vectors(
    live: Live,
) -> None:
    """Two gateways follow one PostgreSQL pointer; the second polls once a minute, so it learns of the
    deploy by NOTIFY alone. A product it ingests while the deploy re-embeds the catalog gets the pending
    version's vectors, and after the switch the first gateway finds it; rollback reaches both."""
    first = live.handle
    second = await start_gateway(replace(first.gateway.config, port=0, health_interval_s=60.0))
    gateways = (first.gateway, second.gateway)
    deploying = asyncio.create_task(
        deploy(live.target, 2, live.catalog, batch=8, progress=False, settle_s=0.5)
    )
    source = next(iter(first.products.values()))
    late = pb.Product(id="added-via-replica", title=source.title, category=list(source.category), price=1.0)
    try:
        for _ in range(200):
            if second.gateway.pipeline.serving.pending_version == 2:
                break
            await asyncio.sleep(0.05)
        assert second.gateway.pipeline.serving.pending_version == 2
        upserted = await second.stub.UpsertProducts(
            iter([pb.UpsertProductsRequest(product=late, image_bytes=first.image(source.id))]), timeout=60
        )
        assert upserted.upserted == 1 and not upserted.errors
        await deploying
        for _ in range(200):
            if all(g.pipeline.serving.version == 2 for g in gateways):
                break
            await asyncio.sleep(0.05)
        assert all(
            (g.pipeline.serving.version, g.pipeline.serving.pending_version) == (2, 1) for g in gateways
        )
        similar = await first.stub.SimilarItems(pb.SimilarItemsRequest(id=late.id, top_k=3), timeout=30)
        assert len(similar.by_image) == 3 and len(similar.by_title) == 3  # it has version 2's vectors
        assert not live.target.serving_file.exists()  # the pointer is the database's row

        assert rollback(live.target.serving_file, live.target.state_url) == (1, 1)
        for _ in range(200):
            if all(g.pipeline.serving.version == 1 for g in gateways):
                break
            await asyncio.sleep(0.05)
        assert all(g.pipeline.serving.version == 1 for g in gateways)
    finally:
        await deploying
        await first.stub.DeleteProducts(pb.DeleteProductsRequest(ids=[late.id]), timeout=30)
        await stop_gateway(second)


async def test_a_gateway_pinned_to_version_2_answers_with_it(
    live: Live, adapted_triton: Any, index_server: Any
) -> None:
    """A second gateway started with encoder_version=2 on the same catalog gives the deployed answers."""
    await deploy(live.target, 2, live.catalog, batch=8, progress=False, settle_s=0.2)
    for _ in range(200):
        if live.handle.gateway.pipeline.serving.version == 2:
            break
        await asyncio.sleep(0.05)
    deployed = await answers(live.handle)
    pinned_config = replace(live.handle.gateway.config, port=0, serving_file="", encoder_version=2)
    pinned = await start_gateway(pinned_config)
    try:
        assert await answers(pinned) == deployed
    finally:
        await stop_gateway(pinned)
