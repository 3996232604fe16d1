"""Bulk ingest against the live test gateway: several upsert streams at once, photos sent in batches,
and still every bad row reported at its line while its neighbours are stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from operations.client import Connection, ingest
from tests.fixtures.stack import GatewayHandle
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow

ROWS = 12
TRUNCATED_LINE = 5  # a JPEG whose header parses but whose body is cut: Triton refuses it
REPEATED = (2, 9)  # one id on two lines, in different batches: the later row is what stays


def _catalog(gateway_stack: GatewayHandle, tmp_path: Path) -> Path:
    jpeg = (gateway_stack.catalog_dir / "images" / "p000003.jpg").read_bytes()
    (tmp_path / "good.jpg").write_bytes(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    rows = []
    for line in range(1, ROWS + 1):
        pid = f"bulk-{REPEATED[0] if line == REPEATED[1] else line}"
        image = "cut.jpg" if line == TRUNCATED_LINE else "good.jpg"
        rows.append({"id": pid, "title": f"bulk lamp {line}", "category": ["Home"], "image": image})
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return catalog


async def test_concurrent_streams_store_every_good_row_and_report_the_bad_one_at_its_line(
    gateway_stack: GatewayHandle, tmp_path: Path
) -> None:
    catalog = _catalog(gateway_stack, tmp_path)
    seen: list[int] = []
    conn = Connection(gateway_stack.address)
    summary = await asyncio.to_thread(
        ingest, conn, catalog, 3, False, streams=3, on_batch=lambda s: seen.append(s.rows)
    )
    stored = sorted({f"bulk-{i}" for i in range(1, ROWS + 1) if i not in (TRUNCATED_LINE, REPEATED[1])})
    try:
        assert summary.error == ""
        assert (summary.rows, summary.upserted) == (ROWS, ROWS - 1)
        assert [(b.line, b.id) for b in summary.bad] == [(TRUNCATED_LINE, f"bulk-{TRUNCATED_LINE}")]
        assert "INVALID_ARGUMENT" in summary.bad[0].reason
        assert summary.rate > 0 and "products/s" in summary.render()
        assert sorted(seen) == seen and seen[-1] == ROWS  # one report per batch, the last with every row
        got = await gateway_stack.stub.GetProducts(pb.GetProductsRequest(ids=stored), timeout=30)
        titles = {p.id: p.title for p in got.products}
        assert titles[f"bulk-{REPEATED[0]}"] == f"bulk lamp {REPEATED[1]}"
        assert titles["bulk-6"] == "bulk lamp 6"  # the cut photo's neighbour in its batch
    finally:
        await gateway_stack.stub.DeleteProducts(pb.DeleteProductsRequest(ids=stored), timeout=30)
