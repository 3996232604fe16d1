"""``vitrine ingest`` sends a batch again when the stack answered "too busy" (not "bad batch"), and stops
with the reason when it keeps failing; every row is counted once either way."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from operations import client
from vitrine.gateway.v1 import gateway_pb2 as pb


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "busy"


class Stub:
    """The gateway's stub: each batch's first ``failures`` sends are refused with ``code``."""

    failures = 1
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    sends: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def __init__(self, channel: Any) -> None:
        pass

    def UpsertProducts(self, messages: Iterator[pb.UpsertProductsRequest], **kw: Any) -> Any:
        ids = [m.product.id for m in messages]
        with self.lock:
            n = self.sends[ids[0]] = self.sends.get(ids[0], 0) + 1
        if n <= self.failures:
            raise Refused(self.code)
        return pb.UpsertProductsResponse(upserted=len(ids))


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 a photo")
    rows = [{"id": f"r{i}", "title": f"lamp {i}", "image": "a.jpg"} for i in range(10)]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(client.pb_grpc, "ProductSearchStub", Stub)
    monkeypatch.setattr(client, "RETRY_BACKOFF_S", 0.0)
    Stub.sends = {}
    return path


def test_a_busy_answer_is_retried_and_every_row_stored(catalog: Path) -> None:
    Stub.failures, Stub.code = 1, grpc.StatusCode.DEADLINE_EXCEEDED
    summary = client.ingest(client.Connection("127.0.0.1:1"), catalog, 4, False, streams=2)
    assert (summary.error, summary.rows, summary.upserted) == ("", 10, 10)
    assert Stub.sends == {"r0": 2, "r4": 2, "r8": 2}


def test_a_refusal_that_persists_stops_ingestion_with_its_reason(catalog: Path) -> None:
    Stub.failures, Stub.code = client.RETRIES + 1, grpc.StatusCode.UNAVAILABLE
    summary = client.ingest(client.Connection("127.0.0.1:1"), catalog, 4, False, streams=1)
    assert summary.error == "UNAVAILABLE: busy" and summary.upserted == 0
    assert Stub.sends["r0"] == client.RETRIES + 1
