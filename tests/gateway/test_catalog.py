"""Catalog format, bad-row handling, the seeded generator and the evaluation metrics (no servers)."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from demo.catalog import generate_catalog, write_generated
from gateway.pipeline import fuse
from gateway.types import Candidate, Fusion
from operations.evaluation import mean_scores, score_query
from vitrine.catalog import BadRow, Product, iter_catalog, read_catalog, read_queries, write_catalog

PRODUCTS = [
    Product(
        "a1",
        "Red boots",
        "Warm.",
        ("Fashion", "Shoes", "Boots"),
        "Acme",
        99.5,
        "img/a1.jpg",
        {"color": "red"},
    ),
    Product("b2", "Blue mug, large", 'Says "hi"', ("Home", "Kitchen"), "Mugly", 12.0, "img/b2.jpg", {}),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"catalog{suffix}"
    write_catalog(path, PRODUCTS)
    assert list(read_catalog(path)) == PRODUCTS


def test_files_write_image_uri_and_still_read_the_legacy_image_column(tmp_path: Path) -> None:
    write_catalog(tmp_path / "new.jsonl", PRODUCTS[:1])
    assert json.loads((tmp_path / "new.jsonl").read_text())["image_uri"] == "img/a1.jpg"
    write_catalog(tmp_path / "new.csv", PRODUCTS[:1])
    assert (tmp_path / "new.csv").read_text().splitlines()[0].split(",")[-2:] == ["image_uri", "color"]

    legacy_jsonl = tmp_path / "legacy.jsonl"
    legacy_jsonl.write_text(json.dumps({"id": "a1", "title": "Red boots", "image": "img/a1.jpg"}) + "\n")
    legacy_csv = tmp_path / "legacy.csv"
    legacy_csv.write_text("id,title,image,color\na1,Red boots,img/a1.jpg,red\n")
    assert list(read_catalog(legacy_jsonl)) == [Product("a1", "Red boots", image_uri="img/a1.jpg")]
    assert list(read_catalog(legacy_csv)) == [
        Product("a1", "Red boots", image_uri="img/a1.jpg", attributes={"color": "red"})
    ]


def test_bad_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(
                    {"id": "ok", "title": "Fine", "price": "3.5", "category": "A > B", "color": "red"}
                ),
                json.dumps({"id": "notitle", "title": "  "}),
                "{not json",
                json.dumps({"id": "badprice", "title": "x", "price": "cheap"}),
                json.dumps({"title": "no id"}),
                json.dumps(["a list"]),
            ]
        )
    )
    rows = list(iter_catalog(path))
    assert rows[0] == (1, Product("ok", "Fine", "", ("A", "B"), "", 3.5, "", {"color": "red"}))
    bad = {line: row for line, row in rows if isinstance(row, BadRow)}
    assert bad[2].reason == "missing title" and bad[2].id == "notitle"
    assert bad[3].reason.startswith("not JSON")
    assert "price is not a number" in bad[4].reason
    assert bad[5].reason == "missing id"
    assert bad[6].reason == "not a JSON object"


def test_csv_bad_rows_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title,price,category,material\nx1,Chair,-4,Home/Furniture,oak\nx2,Table,40,Home,\n")
    rows = list(iter_catalog(path))
    assert isinstance(rows[0][1], BadRow) and rows[0][0] == 2 and "non-negative" in rows[0][1].reason
    assert rows[1] == (3, Product("x2", "Table", "", ("Home",), "", 40.0, "", {}))


def test_generator_is_seeded_and_realistic(tmp_path: Path) -> None:
    a = write_generated(tmp_path / "a", 14, seed=5, n_queries=5, progress=False)
    b = write_generated(tmp_path / "b", 14, seed=5, n_queries=5, progress=False)
    c = write_generated(tmp_path / "c", 14, seed=6, n_queries=5, progress=False)
    assert a.read_text() == b.read_text() != c.read_text()

    def digest(root: Path) -> str:
        return hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted((root / "images").iterdir()))
        ).hexdigest()

    assert digest(a.parent) == digest(b.parent) != digest(c.parent)
    products = [p for p in read_catalog(a) if isinstance(p, Product)]
    assert len(products) == 14 and len({p.id for p in products}) == 14
    assert len({p.category for p in products}) == 12  # every category appears
    for p in products:
        data = (a.parent / p.image_uri).read_bytes()
        assert 20_000 < len(data) < 400_000
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.size) == ("JPEG", (640, 640))
        assert p.attributes["color"] in p.title and p.title and p.description and p.price > 0
    queries = read_queries(a.parent / "queries.jsonl")
    assert len(queries) == 5
    by_id = {p.id: p for p in products}
    for q in queries:
        assert q.relevant
        for pid in q.relevant:
            assert by_id[pid].attributes["color"] in q.text


def test_generator_streams_any_size() -> None:
    products = [p for p, _ in generate_catalog(500, seed=1)]
    assert len({p.id for p in products}) == 500


def test_metrics_by_hand() -> None:
    relevant = {"a": 3.0, "b": 1.0, "z": 2.0}
    s = score_query(["x", "a", "y", "b"], relevant, k=4)
    assert s.recall == pytest.approx(2 / 3)
    assert s.precision == pytest.approx(2 / 4)
    assert s.mrr == pytest.approx(1 / 2)
    dcg = (2**3 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5)
    idcg = (2**3 - 1) / math.log2(2) + (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(4)
    assert s.ndcg == pytest.approx(dcg / idcg)
    perfect = score_query(["a", "z", "b"], relevant, k=3)
    assert (perfect.recall, perfect.mrr, perfect.ndcg, perfect.precision) == (
        1.0,
        1.0,
        pytest.approx(1.0),
        1.0,
    )
    nothing = score_query(["x"], relevant, k=1)
    assert (nothing.recall, nothing.mrr, nothing.ndcg) == (0.0, 0.0, 0.0)
    assert mean_scores([perfect, nothing]).mrr == 0.5


def _cands(ids: str, scores: list[float]) -> list[Candidate]:
    return [Candidate(i, s, Product(i, i)) for i, s in zip(ids, scores, strict=True)]


def test_fusion() -> None:
    first = _cands("abc", [0.9, 0.8, 0.1])
    second = _cands("cb", [0.7, 0.6])
    assert [c.id for c in fuse([(1.0, first)], Fusion.RRF, 60)] == ["a", "b", "c"]
    rrf = fuse([(0.5, first), (0.5, second)], Fusion.RRF, 60)
    # c: (1/63 + 1/61) / 2 just beats b: (1/62 + 1/62) / 2; a: (1/61) / 2
    assert [c.id for c in rrf] == ["c", "b", "a"]
    assert rrf[0].score == pytest.approx(0.5 / 63 + 0.5 / 61)
    weighted = fuse([(0.2, first), (0.8, second)], Fusion.WEIGHTED, 60)
    # b: 0.2 * 0.8 + 0.8 * 0.6, c: 0.2 * 0.1 + 0.8 * 0.7, a: 0.2 * 0.9
    assert [c.id for c in weighted] == ["b", "c", "a"]
    assert weighted[0].score == pytest.approx(0.2 * 0.8 + 0.8 * 0.6)
