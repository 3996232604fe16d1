"""The `vitrine` command against the live test gateway: ingest with bad rows, search table, eval table."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.fixtures.stack import GatewayHandle
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow


async def _vitrine(*args: str) -> tuple[int, str]:
    """Runs the CLI as a real process without blocking the event loop the gateway serves on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "operations.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, out.decode()


async def test_ingest_reports_bad_rows_and_is_idempotent(
    gateway_stack: GatewayHandle, tmp_path: Path
) -> None:
    src = gateway_stack.catalog_dir / "images" / "p000001.jpg"
    (tmp_path / "good.jpg").write_bytes(src.read_bytes())
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    rows = [
        {
            "id": "cli-1",
            "title": "CLI lamp",
            "category": ["Home", "Lighting"],
            "price": 5,
            "image": "good.jpg",
        },
        {"id": "cli-2", "title": "CLI missing image", "image": "nope.jpg"},
        {"id": "cli-3", "title": "CLI corrupt image", "image": "corrupt.jpg"},
        {"id": "cli-4", "title": "", "image": "good.jpg"},
        {"id": "cli-5", "title": "CLI chair", "price": 7, "image": "good.jpg", "color": "red"},
    ]
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        for _ in range(2):  # a second run upserts the same ids again
            code, out = await _vitrine("ingest", str(catalog), "--gateway", gateway_stack.address, "--quiet")
            assert code == 0, out
            assert "ingested 2 of 5 rows; 3 bad rows" in out
            assert "line      2  cli-2" in out and "missing image" in out
            assert "line      3  cli-3" in out and "INVALID_ARGUMENT" in out
            assert "line      4  cli-4" in out and "missing title" in out
        got = await gateway_stack.stub.GetProducts(pb.GetProductsRequest(ids=["cli-1", "cli-5"]), timeout=30)
        assert [p.title for p in got.products] == ["CLI lamp", "CLI chair"]
        assert got.products[1].attributes["color"] == "red"
    finally:
        await gateway_stack.stub.DeleteProducts(pb.DeleteProductsRequest(ids=["cli-1", "cli-5"]), timeout=30)


async def test_search_prints_a_table(gateway_stack: GatewayHandle) -> None:
    image = gateway_stack.catalog_dir / "images" / "p000009.jpg"
    code, out = await _vitrine(
        "search", "--image", str(image), "--top-k", "3", "--gateway", gateway_stack.address
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "id", "title"]
    assert lines[1].split()[:2] == ["1", "p000009"]
    assert lines[-1].startswith("timings: embed_image")
    code, out = await _vitrine(
        "search",
        "boots",
        "--rerank",
        "--depth",
        "10",
        "--filter",
        "category=Boots",
        "--gateway",
        gateway_stack.address,
    )
    assert code == 0, out
    boots = {pid for pid, p in gateway_stack.products.items() if p.category[-1] == "Boots"}
    shown = {line.split()[1] for line in out.splitlines()[1:-1]}
    assert shown == boots
    code, out = await _vitrine("search", "boots", "--filter", "size=9", "--gateway", gateway_stack.address)
    assert code == 1 and "INVALID_ARGUMENT: unknown filter field 'size'" in out


async def test_eval_prints_the_metrics_table(gateway_stack: GatewayHandle) -> None:
    queries = gateway_stack.catalog_dir / "queries.jsonl"
    code, out = await _vitrine(
        "eval",
        str(queries),
        "--k",
        "5",
        "--depth",
        "10",
        "--text-match",
        "title",
        "--split",
        "all",
        "--gateway",
        gateway_stack.address,
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "queries.jsonl (all): 8 queries"
    assert lines[1].split() == ["system", "NDCG@5", "[95%", "CI]", "Recall@5", "MRR", "P@5"]
    # The re-ranked row names the weights it used: this stack's cross-encoder is untrained.
    assert any(line.startswith("re-ranker: cross-encoder v1, random") for line in lines), out
    table = [line for line in lines[3:] if line.strip() and not line.startswith("re-ranker:")]
    rows = {line[:40].strip(): line[40:].split() for line in table}
    assert set(rows) == {"title", "title + rerank@10"}
    for cells in rows.values():
        mean, low, high = float(cells[0]), float(cells[1].strip("[,")), float(cells[2].strip("]"))
        assert 0.0 <= low <= mean <= high <= 1.0
        assert all(0.0 <= float(v) <= 1.0 for v in cells[-3:])
