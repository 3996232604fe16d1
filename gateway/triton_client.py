"""The pipeline's Triton client (tritonclient.grpc.aio); the index client is ``gateway.index_client``.

Every call goes through ``_call``-style wrappers that hand dependency exceptions to
``gateway.errors.from_dependency``, the one translation point, and pass the caller's remaining time as
the dependency's own deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.errors import Dependency, GatewayError, from_dependency
from vitrine import triton as triton_request
from vitrine.contracts import (
    BASE_VERSION,
    EMBED_DIM,
    EMBED_IMAGE_IO,
    EMBED_TEXT_IO,
    REC_DIM,
    RERANK_IO,
    USER_TOWER_IO,
    EnsembleIO,
    Tensor,
    ensemble_name,
)

# A dependency that restarts should be found again within a couple of seconds, not after gRPC's default
# reconnect backoff (which grows to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class TritonModels:
    """Embedder and Reranker over one Triton endpoint."""

    def __init__(self, url: str) -> None:
        from tritonclient.grpc import aio as triton_aio

        self.url = url
        self.client = triton_aio.InferenceServerClient(url=url, channel_args=CHANNEL_OPTIONS)

    async def close(self) -> None:
        await self.client.close()

    async def ready(
        self, timeout: float = 2.0, version: int = BASE_VERSION, reranker_version: int = BASE_VERSION
    ) -> bool:
        """Server live and every ensemble the gateway calls loaded (the embedders pinned to ``version``,
        the re-ranker to ``reranker_version``)."""
        try:
            async with asyncio.timeout(timeout):
                if not await self.client.is_server_ready():
                    return False
                for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO, RERANK_IO):
                    name = ensemble_name(io.model, reranker_version if io is RERANK_IO else version)
                    if not await self.client.is_model_ready(name):
                        return False
        except Exception:
            return False
        return True

    async def _infer(
        self,
        io: EnsembleIO,
        values: dict[Tensor, Any],
        timeout: float | None,
        version: str = "",
        model: str = "",
    ) -> dict[Tensor, np.ndarray]:
        """One request built from the ensemble's contract (batch axis and dtypes are declared, not probed);
        ``model`` names a pinned ensemble of the same contract (``vitrine.contracts.ensemble_name``)."""
        try:
            result = await self.client.infer(
                model or io.model.value,
                triton_request.inputs(io, values),
                model_version=version,
                outputs=triton_request.outputs(io),
                client_timeout=timeout,
            )
        except GatewayError:
            raise
        except Exception as exc:
            raise from_dependency(Dependency.TRITON, exc) from exc
        out = {}
        for o in io.outputs:
            arr = triton_request.output(io, result, o)
            if arr is None:
                raise from_dependency(
                    Dependency.TRITON, RuntimeError(f"{io.model.value} returned no {o.value}")
                )
            out[o] = arr
        return out

    async def embed_text(
        self, text: str, timeout: float | None, version: int = BASE_VERSION
    ) -> tuple[np.ndarray, bool]:
        res = await self._infer(
            EMBED_TEXT_IO, {Tensor.TEXT: [text]}, timeout, model=ensemble_name(EMBED_TEXT_IO.model, version)
        )
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(EMBED_DIM), bool(res[Tensor.TRUNCATED].any())

    async def embed_image(
        self, image: bytes, timeout: float | None, version: int = BASE_VERSION
    ) -> np.ndarray:
        res = await self._infer(
            EMBED_IMAGE_IO,
            {Tensor.IMAGE: [image]},
            timeout,
            model=ensemble_name(EMBED_IMAGE_IO.model, version),
        )
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(EMBED_DIM)

    async def rerank(
        self, query: str, passages: Sequence[str], timeout: float | None, version: int = BASE_VERSION
    ) -> np.ndarray:
        res = await self._infer(
            RERANK_IO,
            {Tensor.QUERY: [query], Tensor.PASSAGES: list(passages)},
            timeout,
            model=ensemble_name(RERANK_IO.model, version),
        )
        return res[Tensor.SCORES].astype(np.float32).reshape(len(passages))

    async def user_tower_version(self, timeout: float | None) -> int:
        """The newest ``user_tower`` version Triton serves; 0 when no recommender is deployed (a missing
        model is not an outage: recommendations fall back to trending)."""
        from tritonclient.utils import InferenceServerException

        try:
            meta = await self.client.get_model_metadata(USER_TOWER_IO.model.value, client_timeout=timeout)
        except InferenceServerException:
            return 0
        except Exception as exc:
            raise from_dependency(Dependency.TRITON, exc) from exc
        return max((int(v) for v in meta.versions if str(v).isdigit()), default=0)

    async def embed_user(
        self, version: int, history: np.ndarray, types: np.ndarray, ages: np.ndarray, timeout: float | None
    ) -> np.ndarray:
        res = await self._infer(
            USER_TOWER_IO,
            {Tensor.HISTORY: history, Tensor.EVENT_TYPES: types, Tensor.AGE_HOURS: ages},
            timeout,
            version=str(version),
        )
        return res[Tensor.USER_EMBEDDING].astype(np.float32).reshape(REC_DIM)


class PinnedEmbedder:
    """The pipeline's ``Embedder`` for one encoder version: Triton's ensembles pinned to it."""

    def __init__(self, models: TritonModels, version: int) -> None:
        self.models = models
        self.version = version

    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        return await self.models.embed_text(text, timeout, self.version)

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        return await self.models.embed_image(image, timeout, self.version)


class PinnedReranker:
    """The pipeline's ``Reranker`` for one cross-encoder version (its pinned ``rerank`` ensemble)."""

    def __init__(self, models: TritonModels, version: int) -> None:
        self.models = models
        self.version = version

    async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray:
        return await self.models.rerank(query, passages, timeout, self.version)
