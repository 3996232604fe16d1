"""Small helpers for talking to the served ensembles the way any tritonclient user would."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from vitrine.contracts import Model, Tensor


def bytes_input(name: Tensor, values: Sequence[bytes], shape: Sequence[int]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name.value, list(shape), "BYTES")
    tensor.set_data_from_numpy(np.asarray(values, dtype=object).reshape(shape))
    return tensor


async def embed_text(client: grpcclient.InferenceServerClient, text: str) -> grpcclient.InferResult:
    return await client.infer(Model.EMBED_TEXT.value, [bytes_input(Tensor.TEXT, [text.encode()], (1, 1))])


async def embed_minilm(client: grpcclient.InferenceServerClient, text: str) -> grpcclient.InferResult:
    return await client.infer(Model.EMBED_MINILM.value, [bytes_input(Tensor.TEXT, [text.encode()], (1, 1))])


async def embed_image(client: grpcclient.InferenceServerClient, data: bytes) -> grpcclient.InferResult:
    return await client.infer(Model.EMBED_IMAGE.value, [bytes_input(Tensor.IMAGE, [data], (1, 1))])


async def rerank(
    client: grpcclient.InferenceServerClient, query: str, passages: Sequence[str]
) -> grpcclient.InferResult:
    return await client.infer(
        Model.RERANK.value,
        [
            bytes_input(Tensor.QUERY, [query.encode()], (1,)),
            bytes_input(Tensor.PASSAGES, [p.encode() for p in passages], (len(passages),)),
        ],
    )


async def statistics(
    client: grpcclient.InferenceServerClient, model: Model, at_least: int = 0, timeout_s: float = 10.0
) -> tuple[int, int]:
    """(inference_count, execution_count) of one model: batches formed = fewer executions than inferences.

    Triton records an execution's statistics after its responses are sent, so a caller that has just had
    its answers waits (bounded) until ``inference_count`` reaches ``at_least`` before reading both counts;
    past the bound it gets the counts as they are, for the caller's assertion to report.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        stats = await client.get_inference_statistics(model.value, as_json=True)
        entry = stats["model_stats"][0]
        counts = int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))
        if counts[0] >= at_least or asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.05)


def error_of(outcome: object) -> InferenceServerException:
    assert isinstance(outcome, InferenceServerException), f"expected an error, got {outcome!r}"
    return outcome
