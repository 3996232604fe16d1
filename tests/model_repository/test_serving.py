"""The rendered repository served by a real embedded tritonserver: fidelity, batching, bad input.

Every test talks to Triton the way a plain tritonclient user would (gRPC, raw text and image bytes);
reference values come from transformers' own PyTorch code on the same tiny random-weight checkpoints.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from collections.abc import AsyncIterator

import numpy as np
import pytest
import tritonclient.grpc as syncclient
import tritonclient.grpc.aio as grpcclient
from PIL import Image

from operations.servers import TritonServer
from tests.model_repository.client import (
    bytes_input,
    embed_image,
    embed_minilm,
    embed_text,
    error_of,
    rerank,
    statistics,
)
from tests.model_repository.images import photo, png_bomb, truncated_jpeg
from vitrine.contracts import EMBED_DIM, MAX_PASSAGES, MAX_PASSAGES_PARAMETER, MINILM_DIM, Model, Tensor

pytestmark = pytest.mark.slow

TEXTS = [
    "red leather ankle boots",
    "a",
    "Waterproof hiking jacket with detachable hood, size M — colour: forest green",
    "chaussures de course légères 🏃",
    "the " * 90 + "end",  # beyond CLIP's 75 tokens: truncated the same way on both sides
]
PASSAGES = [
    "Red leather ankle boots with a stacked heel.",
    "Blue cotton t-shirt, crew neck.",
    "Hiking boots, waterproof leather upper, Vibram sole. " * 4,
    "Ankle boots",
    "A kitchen knife set of five with a wooden block, stainless steel blades, dishwasher safe. " * 20,
]


@pytest.fixture(scope="module")
def reference(tiny_artifacts):
    from export.reference import TorchReference

    return TorchReference(tiny_artifacts)


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[grpcclient.InferenceServerClient]:
    async with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


async def test_embed_text_matches_pytorch(client, reference):
    results = await asyncio.gather(*(embed_text(client, t) for t in TEXTS))
    served = np.concatenate([r.as_numpy(Tensor.EMBEDDING.value) for r in results])
    truncated = [bool(r.as_numpy(Tensor.TRUNCATED.value).item()) for r in results]
    expected = reference.embed_text(TEXTS)
    assert served.shape == (len(TEXTS), EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    cosine = (served * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert truncated == [False, False, False, False, True]


async def test_embed_text_batch_of_texts_in_one_request(client, reference):
    texts = TEXTS[:3]
    result = await client.infer(
        Model.EMBED_TEXT.value, [bytes_input(Tensor.TEXT, [t.encode() for t in texts], (3, 1))]
    )
    served = result.as_numpy(Tensor.EMBEDDING.value)
    assert served.shape == (3, EMBED_DIM)
    assert ((served * reference.embed_text(texts)).sum(axis=1) >= 0.9999).all()


async def test_embed_minilm_matches_pytorch(client, reference):
    """The sentence-encoder ensemble (tokenize, encode, mean-pool, normalise) against transformers'
    own tokenizer and model with sentence-transformers' pooling; the long text crosses 256 tokens."""
    texts = [*TEXTS[:4], "the " * 300 + "end"]
    results = await asyncio.gather(*(embed_minilm(client, t) for t in texts))
    served = np.concatenate([r.as_numpy(Tensor.EMBEDDING.value) for r in results])
    truncated = [bool(r.as_numpy(Tensor.TRUNCATED.value).item()) for r in results]
    assert served.shape == (len(texts), MINILM_DIM)
    cosine = (served * reference.embed_minilm(texts)).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert truncated == [False, False, False, False, True]


async def test_embed_image_matches_pytorch(client, reference):
    images = [
        photo(640, 480, seed=1),
        photo(300, 517, seed=2, fmt="PNG"),
        photo(120, 90, seed=3, fmt="WEBP"),
        photo(256, 256, seed=4, fmt="PNG", mode="RGBA"),
    ]
    results = await asyncio.gather(*(embed_image(client, data) for data in images))
    served = np.concatenate([r.as_numpy(Tensor.EMBEDDING.value) for r in results])
    expected = reference.embed_image([Image.open(io.BytesIO(d)) for d in images])
    cosine = (served * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine


async def test_rerank_matches_pytorch(client, reference):
    result = await rerank(client, "leather boots", PASSAGES)
    scores = result.as_numpy(Tensor.SCORES.value)
    assert scores.shape == (len(PASSAGES),)
    np.testing.assert_allclose(scores, reference.rerank("leather boots", PASSAGES), atol=1e-4, rtol=0)
    assert result.as_numpy(Tensor.TRUNCATED.value).tolist() == [False, False, False, False, True]


async def test_concurrent_text_requests_are_batched(client):
    before = await statistics(client, Model.CLIP_TEXT_ENCODER)
    texts = [f"product number {i} in red" for i in range(64)]
    results = await asyncio.gather(*(embed_text(client, t) for t in texts))
    after = await statistics(client, Model.CLIP_TEXT_ENCODER, at_least=before[0] + len(texts))
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} requests: no batching"
    # Batched rows come back to their own request.
    unique = {r.as_numpy(Tensor.EMBEDDING.value).tobytes() for r in results}
    assert len(unique) == 64


async def test_concurrent_rerank_requests_execute_alone_on_the_cpu(client, reference):
    """The CPU cross-encoder has no batcher (merging only made every request wait for the whole merged
    batch): 16 concurrent requests of 10 pairs are 16 executions, each answered with its own scores."""
    before = await statistics(client, Model.CROSS_ENCODER)
    queries = [f"query {i}" for i in range(16)]
    passages = [[f"passage {j} of {i}" for j in range(10)] for i in range(16)]
    results = await asyncio.gather(*(rerank(client, q, p) for q, p in zip(queries, passages, strict=True)))
    after = await statistics(client, Model.CROSS_ENCODER, at_least=before[0] + 160)
    assert after[0] - before[0] == 160  # pairs
    assert after[1] - before[1] == 16  # executions: one per request
    for i in (0, 7, 15):
        np.testing.assert_allclose(
            results[i].as_numpy(Tensor.SCORES.value), reference.rerank(queries[i], passages[i]), atol=1e-4
        )


async def _with_neighbours(good: list, bad) -> tuple[list, object]:
    outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
    return list(outcomes[:-1]), outcomes[-1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (truncated_jpeg(), "image data is corrupt or truncated"),
        (b"%PDF-1.7 not an image", "image bytes are not a JPEG, PNG or WebP image"),
        (photo(1, 1, fmt="PNG"), "image is 1x1 pixels; its shorter side must be at least 8"),
        (png_bomb(), "at most 40000000 pixels are accepted"),
    ],
    ids=["corrupt", "not-image", "1x1", "decompression-bomb"],
)
async def test_bad_image_fails_alone(client, triton, data, message):
    good = [embed_image(client, photo(200, 160, seed=s)) for s in range(3)]
    results, bad = await _with_neighbours(good, embed_image(client, data))
    error = error_of(bad)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()
    assert all(r.as_numpy(Tensor.EMBEDDING.value).shape == (1, EMBED_DIM) for r in results)
    assert await client.is_server_ready()


async def test_empty_text_fails_alone(client):
    good = [embed_text(client, f"good neighbour {i}") for i in range(3)]
    results, bad = await _with_neighbours(good, embed_text(client, ""))
    error = error_of(bad)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "text is empty" in error.message()
    assert all(r.as_numpy(Tensor.EMBEDDING.value).shape == (1, EMBED_DIM) for r in results)
    assert await client.is_server_ready()


async def test_overlong_text_is_truncated_and_says_so(client, triton):
    long_text = ("ankle boots in soft red leather " * 400)[:10_000]
    good = [embed_text(client, f"good neighbour {i}") for i in range(3)]
    results, long_result = await _with_neighbours(good, embed_text(client, long_text))
    assert isinstance(long_result, grpcclient.InferResult), long_result
    assert long_result.as_numpy(Tensor.TRUNCATED.value).tolist() == [[True]]
    assert long_result.as_numpy(Tensor.EMBEDDING.value).shape == (1, EMBED_DIM)
    assert all(not r.as_numpy(Tensor.TRUNCATED.value).any() for r in results)
    assert "text truncated to the CLIP context (characters: 10000)" in triton.log_file.read_text()


async def test_zero_passages_fail_alone(client):
    good = [rerank(client, "boots", PASSAGES[:2]) for _ in range(3)]
    results, bad = await _with_neighbours(good, rerank(client, "boots", []))
    error = error_of(bad)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "PASSAGES is empty" in error.message()
    assert all(r.as_numpy(Tensor.SCORES.value).shape == (2,) for r in results)


async def test_too_many_passages_are_refused(client):
    error = error_of(
        (await asyncio.gather(rerank(client, "q", ["p"] * (MAX_PASSAGES + 1)), return_exceptions=True))[0]
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"at most {MAX_PASSAGES} per request" in error.message()


async def test_the_passage_limit_is_read_from_tritons_model_config(client):
    config = (await client.get_model_config(Model.RERANK.value)).config
    assert config.parameters[MAX_PASSAGES_PARAMETER].string_value == str(MAX_PASSAGES)


async def test_several_queries_in_one_rerank_are_refused(client):
    request = client.infer(
        Model.RERANK.value,
        [
            bytes_input(Tensor.QUERY, [b"boots", b"hats"], (2,)),
            bytes_input(Tensor.PASSAGES, [b"red boots"], (1,)),
        ],
    )
    good = [rerank(client, "boots", PASSAGES[:2]) for _ in range(2)]
    results, bad = await _with_neighbours(good, request)
    error = error_of(bad)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    # Triton's frontend checks the declared shape [1] before the model runs.
    assert "unexpected shape for input 'QUERY' for model 'rerank'. Expected [1], got [2]" in error.message()
    assert all(r.as_numpy(Tensor.SCORES.value).shape == (2,) for r in results)


async def test_mismatched_batch_sizes_are_refused(client):
    """Inputs of one request that disagree on the batch size never reach the model's neighbours."""
    ids = np.ones((3, 16), dtype=np.int64)
    inputs = []
    for name, value in (
        (Tensor.INPUT_IDS, ids),
        (Tensor.ATTENTION_MASK, ids[:2]),
        (Tensor.TOKEN_TYPE_IDS, np.zeros_like(ids)),
    ):
        tensor = grpcclient.InferInput(name.value, list(value.shape), "INT64")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    good = [rerank(client, "boots", PASSAGES[:2]) for _ in range(2)]
    results, bad = await _with_neighbours(good, client.infer(Model.CROSS_ENCODER.value, inputs))
    error = error_of(bad)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "batch size" in error.message()
    assert all(r.as_numpy(Tensor.SCORES.value).shape == (2,) for r in results)
    assert await client.is_server_ready()


def test_metrics_port_serves_inference_counters_and_latency_summaries(triton):
    # A synchronous request first, so the counters exist whatever ran before.
    with syncclient.InferenceServerClient(triton.grpc_url) as c:
        c.infer(Model.EMBED_TEXT.value, [_sync_text("metrics probe")])
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="embed_text",version="1"}' in text
    assert 'nv_inference_exec_count{model="clip_text_encoder",version="1"}' in text
    assert "nv_inference_request_summary_us" in text


def _sync_text(text: str) -> syncclient.InferInput:
    tensor = syncclient.InferInput(Tensor.TEXT.value, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.asarray([[text.encode()]], dtype=object))
    return tensor
