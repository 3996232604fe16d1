"""The pipeline's Triton client (tritonclient.grpc.aio); the index client is ``gateway.index_client``.

Every call goes through ``_call``-style wrappers that hand dependency exceptions to
``gateway.errors.from_dependency``, the one translation point, and pass the caller's remaining time as
the dependency's own deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from gateway.errors import Dependency, Unavailable, from_dependency
from gateway.metrics import GatewayMetrics
from gateway.replicas import Replica, ReplicaSet
from vitrine import triton as triton_request
from vitrine.contracts import (
    BASE_VERSION,
    EMBED_DIM,
    EMBED_IMAGE_IO,
    EMBED_MINILM_IO,
    EMBED_TEXT_IO,
    MINILM_DIM,
    REC_DIM,
    RERANK_IO,
    USER_TOWER_IO,
    EnsembleIO,
    Tensor,
    ensemble_name,
)

T = TypeVar("T")

UNREACHABLE = str(grpc.StatusCode.UNAVAILABLE)
"""tritonclient's status string when the server could not be reached (a missing model is NOT_FOUND)."""
MIN_RETRY_S = 0.05
"""Below this much time left, a retry could only end in DEADLINE_EXCEEDED: the first error stands."""

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
    """Embedder and Reranker over one Triton endpoint or several replicas (``gateway.replicas``).

    ``url`` is an endpoint spec: ``host:port``, a comma-separated list, or ``dns:///name:port``. Every
    inference is idempotent, so one that fails UNAVAILABLE on a replica (it died, or is unloading) is
    sent once more to another healthy replica within what is left of the caller's deadline; the failed
    replica is marked down until its readiness probe passes again.
    """

    def __init__(self, url: str, metrics: GatewayMetrics | None = None) -> None:
        self.url = url
        self.metrics = metrics
        self.replicas: ReplicaSet[Any] = ReplicaSet(url, _connect, on_state=self._on_state)

    @property
    def client(self) -> Any:
        """The first replica's tritonclient (operations that load models speak to one server)."""
        return self.replicas.replicas[0].client

    def _on_state(self, address: str, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.triton_replica_up.labels(address).set(1.0 if up else 0.0)

    async def close(self) -> None:
        for replica in (*self.replicas.replicas, *self.replicas.take_retired()):
            await replica.client.close()

    async def ready(
        self, timeout: float = 2.0, version: int = BASE_VERSION, reranker_version: int = BASE_VERSION
    ) -> bool:
        """Probes every replica (a DNS spec resolved again first when due) and marks each up or down;
        True when at least one is live with every ensemble the gateway calls loaded (the embedders
        pinned to ``version``, the re-ranker to ``reranker_version``)."""
        if self.replicas.refresh():
            for old in self.replicas.take_retired():
                await old.client.close()
        replicas = list(self.replicas.replicas)
        states = await asyncio.gather(
            *(_replica_ready(r.client, timeout, version, reranker_version) for r in replicas)
        )
        for replica, ok in zip(replicas, states, strict=True):
            self.replicas.set_up(replica, ok)
        return any(states)

    async def _infer(
        self,
        io: EnsembleIO,
        values: dict[Tensor, Any],
        timeout: float | None,
        version: str = "",
        model: str = "",
        rows: bool = False,
    ) -> dict[Tensor, np.ndarray]:
        """One request built from the ensemble's contract (batch axis and dtypes are declared, not probed);
        ``model`` names a pinned ensemble of the same contract (``vitrine.contracts.ensemble_name``);
        ``rows``: ``values`` hold several items, one row each, sent as one batch."""
        inputs = triton_request.inputs(io, values, rows)
        outputs = triton_request.outputs(io)
        name = model or io.model.value

        async def infer(client: Any, left: float | None) -> Any:
            return await client.infer(
                name, inputs, model_version=version, outputs=outputs, client_timeout=left
            )

        result = await self._call(infer, timeout)
        out = {}
        for o in io.outputs:
            arr = triton_request.output(io, result, o, rows)
            if arr is None:
                raise from_dependency(
                    Dependency.TRITON, RuntimeError(f"{io.model.value} returned no {o.value}")
                )
            out[o] = arr
        return out

    async def _call(self, call: Callable[[Any, float | None], Awaitable[T]], timeout: float | None) -> T:
        """``call(client, time left)`` on a chosen replica; an idempotent call that found its replica
        UNAVAILABLE goes once to another, if one exists and time is left."""
        first = self.replicas.pick()
        assert first is not None, "a replica set is never empty"
        start = time.monotonic()
        try:
            return await self._on(first, call, timeout)
        except Unavailable:
            second = self.replicas.pick(exclude=first)
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if second is None or (left is not None and left < MIN_RETRY_S):
                raise
            if self.metrics is not None:
                self.metrics.triton_retries.inc()
            return await self._on(second, call, left)

    async def _on(
        self, replica: Replica[Any], call: Callable[[Any, float | None], Awaitable[T]], left: float | None
    ) -> T:
        metrics = self.metrics
        if metrics is not None:
            metrics.triton_requests.labels(replica.address).inc()
        with self.replicas.using(replica):
            try:
                return await call(replica.client, left)
            except Exception as exc:
                error = from_dependency(Dependency.TRITON, exc)
        if metrics is not None:
            metrics.triton_failures.labels(replica.address).inc()
        if isinstance(error, Unavailable):
            self.replicas.set_up(replica, False)
        raise error

    async def embed_text(
        self, text: str, timeout: float | None, version: int = BASE_VERSION
    ) -> tuple[np.ndarray, bool]:
        res = await self._infer(
            EMBED_TEXT_IO, {Tensor.TEXT: [text]}, timeout, model=ensemble_name(EMBED_TEXT_IO.model, version)
        )
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(EMBED_DIM), bool(res[Tensor.TRUNCATED].any())

    async def embed_minilm(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        """all-MiniLM-L6-v2 sentence embedding (the ``minilm`` space) and whether the text was cut."""
        res = await self._infer(EMBED_MINILM_IO, {Tensor.TEXT: [text]}, timeout)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(MINILM_DIM), bool(res[Tensor.TRUNCATED].any())

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

    async def embed_texts(
        self, texts: Sequence[str], timeout: float | None, version: int = BASE_VERSION
    ) -> tuple[np.ndarray, np.ndarray]:
        """Several texts in one request (bulk ingest): their embeddings, one row each, and truncation."""
        name = ensemble_name(EMBED_TEXT_IO.model, version)
        res = await self._infer(EMBED_TEXT_IO, {Tensor.TEXT: list(texts)}, timeout, model=name, rows=True)
        n = len(texts)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(n, EMBED_DIM), _flags(res, n)

    async def embed_minilms(
        self, texts: Sequence[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        res = await self._infer(EMBED_MINILM_IO, {Tensor.TEXT: list(texts)}, timeout, rows=True)
        n = len(texts)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(n, MINILM_DIM), _flags(res, n)

    async def embed_images(
        self, images: Sequence[bytes], timeout: float | None, version: int = BASE_VERSION
    ) -> np.ndarray:
        """Several photos in one request (bulk ingest); one bad photo fails the whole request."""
        name = ensemble_name(EMBED_IMAGE_IO.model, version)
        res = await self._infer(EMBED_IMAGE_IO, {Tensor.IMAGE: list(images)}, timeout, model=name, rows=True)
        return res[Tensor.EMBEDDING].astype(np.float32).reshape(len(images), EMBED_DIM)

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

        async def metadata(client: Any, left: float | None) -> Any:
            try:
                return await client.get_model_metadata(USER_TOWER_IO.model.value, client_timeout=left)
            except InferenceServerException as exc:
                if exc.status() == UNREACHABLE:
                    raise  # this replica is gone: ask another
                return None

        try:
            meta = await self._call(metadata, timeout)
        except Unavailable:
            return 0
        if meta is None:
            return 0
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


def _flags(res: dict[Tensor, np.ndarray], n: int) -> np.ndarray:
    return res[Tensor.TRUNCATED].astype(bool).reshape(n)


def _connect(address: str) -> Any:
    from tritonclient.grpc import aio as triton_aio

    return triton_aio.InferenceServerClient(url=address, channel_args=CHANNEL_OPTIONS)


async def _replica_ready(client: Any, timeout: float, version: int, reranker_version: int) -> bool:
    try:
        async with asyncio.timeout(timeout):
            if not await client.is_server_ready():
                return False
            for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO, RERANK_IO, EMBED_MINILM_IO):
                if io is EMBED_MINILM_IO:  # one version: CLIP's rollouts do not touch it
                    name = io.model.value
                else:
                    name = ensemble_name(io.model, reranker_version if io is RERANK_IO else version)
                if not await client.is_model_ready(name):
                    return False
    except Exception:
        return False
    return True


class PinnedEmbedder:
    """The pipeline's ``Embedder`` for one encoder version: Triton's ensembles pinned to it."""

    def __init__(self, models: TritonModels, version: int) -> None:
        self.models = models
        self.version = version

    async def embed_text(self, text: str, timeout: float | None) -> tuple[np.ndarray, bool]:
        return await self.models.embed_text(text, timeout, self.version)

    async def embed_image(self, image: bytes, timeout: float | None) -> np.ndarray:
        return await self.models.embed_image(image, timeout, self.version)

    async def embed_texts(self, texts: Sequence[str], timeout: float | None) -> tuple[np.ndarray, np.ndarray]:
        return await self.models.embed_texts(texts, timeout, self.version)

    async def embed_images(self, images: Sequence[bytes], timeout: float | None) -> np.ndarray:
        return await self.models.embed_images(images, timeout, self.version)


class PinnedReranker:
    """The pipeline's ``Reranker`` for one cross-encoder version (its pinned ``rerank`` ensemble)."""

    def __init__(self, models: TritonModels, version: int) -> None:
        self.models = models
        self.version = version

    async def rerank(self, query: str, passages: Sequence[str], timeout: float | None) -> np.ndarray:
        return await self.models.rerank(query, passages, timeout, self.version)
