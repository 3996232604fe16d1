"""What this gateway serves, for people choosing defaults: model versions and whether to re-rank.

The served cross-encoder's weights are read from Triton, from the ``weights`` parameter the model
repository renders into each ``rerank`` ensemble (``vitrine.reranking``), for the version the gateway
serves at the moment of the call, so the answer follows a rollout or a rollback without a restart. The
page starts its re-rank switch from ``rerank_default.on``; the API itself never re-ranks unless a request
asks (re-ranking 50 candidates costs far more than the rest of a search on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import Dependency, from_dependency
from vitrine.contracts import RERANK_IO, ensemble_name
from vitrine.reranking import UNKNOWN, WEIGHTS_PARAMETER, RerankDefault


@dataclass(frozen=True)
class ServingInfo:
    encoder_version: int
    reranker_version: int
    rerank_default: RerankDefault


async def reranker_weights(client: object, version: int, timeout: float | None) -> str:
    """The ``weights`` parameter of the ``rerank`` ensemble pinned to ``version`` (``unknown`` when the
    repository does not state it). ``client``: a ``tritonclient.grpc.aio.InferenceServerClient``."""
    name = ensemble_name(RERANK_IO.model, version)
    try:
        config = await client.get_model_config(name, as_json=True, client_timeout=timeout)  # type: ignore[attr-defined]
    except Exception as exc:
        raise from_dependency(Dependency.TRITON, exc) from exc
    params = config.get("config", {}).get("parameters", {})
    value = params.get(WEIGHTS_PARAMETER, {}).get("string_value", "")
    return str(value) or UNKNOWN
