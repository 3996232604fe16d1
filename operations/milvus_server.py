"""milvus-lite as the stack's index tier (``vitrine up --index milvus-lite``), in place of the FAISS
index service.

milvus-lite holds its data directory for one process only, and the main job reaches the index from
several (gateways, recommender training and deploy): so the stack runs milvus-lite's own server
(``python -m milvus_lite server``) as a child process over ``<var>/milvus/vitrine.db``, and everything
else speaks to it as to any Milvus, ``milvus://127.0.0.1:<port>``. It proves API conformance, never
Milvus's performance (milvus-lite is a pure-Python reimplementation: docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from operations.launcher import ChildServer, Probe

if TYPE_CHECKING:
    from operations.assembly import Stack


class IndexChoice(StrEnum):
    FAISS = "faiss"
    MILVUS_LITE = "milvus-lite"


def milvus_ready(address: str, timeout_s: float = 2.0) -> Probe:
    """Readiness of a Milvus endpoint: it answers GetVersion."""

    def probe() -> bool:
        from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            try:
                milvus_pb2_grpc.MilvusServiceStub(channel).GetVersion(
                    milvus_pb2.GetVersionRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return True

    return probe


class MilvusLiteServer(ChildServer):
    """``python -m milvus_lite server`` over one data directory; ``address`` is the ``milvus://`` form
    the gateway's ``index_address`` and the operations tools take."""

    def __init__(self, data_dir: Path, port: int, *, host: str = "127.0.0.1", log_file: Path | None = None,
                 **kw: Any) -> None:  # fmt: skip
        self.data_dir = Path(data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"{host}:{port}"
        self.address = f"milvus://{self.endpoint}"
        argv = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                "--host", host, "--port", str(port)]  # fmt: skip
        super().__init__("milvus-lite", argv, milvus_ready(self.endpoint), log_file=log_file, **kw)


def start_index(stack: Stack, choice: str, port: int) -> Any:
    """The stack's index tier: the FAISS index service (``stack.start_index``), or a milvus-lite server
    over ``<work>/milvus/vitrine.db`` on ``port`` that the stack's gateways are pointed at."""
    if IndexChoice(choice) == IndexChoice.FAISS:
        return stack.start_index()
    server = MilvusLiteServer(stack.work / "milvus" / "vitrine.db", port, log_file=stack.logs / "milvus.log")
    stack.index = server  # type: ignore[assignment]
    server.start()
    return server
