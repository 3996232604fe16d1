"""``benchmarks.floor`` end to end on tiny models: every side measured, nothing failed, ratios printed."""

from __future__ import annotations

import json

from benchmarks import floor


def test_the_floor_benchmark_measures_floor_and_served_side_by_side(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "floor.json"
    code = floor.main(
        ["--artifacts", str(tiny_artifacts), "--work", str(tmp_path / "work"), "--workloads", "text,rerank",
         "--concurrency", "1,2", "--rounds", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    figures = json.loads(out.read_text())["figures"]
    sides = {(f["workload"], f["concurrency"], f["side"]) for f in figures}
    assert sides == {(w, c, s) for w in ("text", "rerank") for c in (1, 2) for s in ("floor", "served")}
    assert all(f["requests"] > 0 and f["errors"] == 0 and f["rps"] > 0 for f in figures)
    printed = capsys.readouterr().out
    assert "| embed_text | 1 | served |" in printed and "p50 / floor" in printed
