"""The CLI's defaults: where ``vitrine up`` serves and where it keeps its files.

Read from the stack's own configuration (its ports, its ``var/`` directory) and the gateway's (host,
collection, index kind of new spaces), so every command finds a local stack without flags and a default
changed there is changed for every command. Nothing here reads the environment: these are the
declarations' defaults, not a running stack's settings.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig
from operations.stack import StackConfig

_STACK = StackConfig()
_GATEWAY = GatewayConfig()

HOST = _GATEWAY.host
GATEWAY = f"{HOST}:{_STACK.gateway_port}"
INDEX = f"{HOST}:{_STACK.index_port}"
TRITON_GRPC_PORT = _STACK.triton_grpc_port
TRITON_HTTP_PORT = _STACK.triton_http_port
TRITON_METRICS_PORT = _STACK.triton_metrics_port
TRITON = f"{HOST}:{TRITON_GRPC_PORT}"
COLLECTION = _GATEWAY.pipeline.collection
INDEX_KIND = _GATEWAY.index_kind

VAR = Path(_STACK.var)
CATALOG = VAR / "catalog" / "catalog.jsonl"
EVENTS = VAR / "events" / "demo.jsonl"
RECOMMENDER = VAR / "recommender"
MODEL_REPOSITORY = VAR / "model_repository"
SERVING_FILE = VAR / "serving.json"
