"""The product model and its I/O: products on disk (JSONL or CSV), labelled query files, the re-rank passage.

The seeded synthetic catalog the demo and the benchmarks use lives in ``demo.catalog``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

CATEGORY_SEPARATOR = " > "


@dataclass(frozen=True)
class Product:
    """A product, declared once. Catalog files (below), the gateway's protobuf and JSON messages and the
    index item are derived from these fields or checked against them (``tests/test_shapes.py``), so a
    field added here without its mappings fails a test instead of being dropped on some wire."""

    id: str
    title: str
    description: str = ""
    category: tuple[str, ...] = ()
    brand: str = ""
    price: float = 0.0
    image_uri: str = ""
    """A local path (relative paths resolve against the catalog file's directory) or a file:// URI."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Free-form ``name -> value`` pairs; a CSV file spreads them into columns of their own."""

    def category_path(self) -> str:
        return CATEGORY_SEPARATOR.join(self.category)

    def passage(self, description_words: int = 0) -> str:
        """What the cross-encoder reads for this product: ``title. description``, title first because the
        passage side of a pair is what truncation cuts. ``description_words`` > 0 keeps only the first that
        many words of the description: a pair's cost grows with its tokens, and the opening of a
        description says most of what a query can match (0: the whole description)."""
        description = self.description
        if description_words > 0:
            words = description.split()
            if len(words) > description_words:
                description = " ".join(words[:description_words])
        return f"{self.title}. {description}".strip()

    def to_json(self) -> dict[str, Any]:
        """The product as a JSONL catalog line writes it: every field under its own name."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


ATTRIBUTES = "attributes"
CORE_COLUMNS = tuple(f.name for f in fields(Product) if f.name != ATTRIBUTES)
"""A CSV catalog's own columns, in field order; any other column is an attribute."""
LEGACY_COLUMNS = {"image": "image_uri"}
"""Columns an earlier catalog format named differently, read under their current name."""


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class BadRow:
    """A row that could not become a product; ingestion reports it and carries on."""

    line: int
    id: str
    reason: str


def _category(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    text = str(value or "")
    sep = CATEGORY_SEPARATOR.strip() if CATEGORY_SEPARATOR.strip() in text else "/"
    return tuple(part.strip() for part in text.split(sep) if part.strip())


def _required(name: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        text = str(value or "").strip()
        if not text:
            raise ValueError(f"missing {name}")
        return text

    return read


def _text(value: Any) -> str:
    return str(value or "")


def _amount(name: str) -> Callable[[Any], float]:
    def read(value: Any) -> float:
        try:
            number = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            raise ValueError(f"{name} is not a number: {value!r}") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{name} must be a finite non-negative number: {value!r}")
        return number

    return read


def _reader(f: Field[Any], kind: Any) -> Callable[[Any], Any]:
    """How a catalog row's value becomes field ``f`` of type ``kind``; a field of a type no reader knows
    fails here, when the module loads, not on some row later."""
    if kind is str:
        required = f.default is MISSING and f.default_factory is MISSING
        return _required(f.name) if required else _text
    if kind == tuple[str, ...]:
        return _category
    if kind is float:
        return _amount(f.name)
    raise TypeError(f"Product.{f.name}: no catalog reader for {kind}")


_READERS = {
    f.name: _reader(f, get_type_hints(Product)[f.name]) for f in fields(Product) if f.name != ATTRIBUTES
}


def _cell(value: Any) -> str:
    """A field's CSV cell: the category as its path, the price to the cent."""
    if isinstance(value, tuple):
        return CATEGORY_SEPARATOR.join(value)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def product_from_mapping(row: dict[str, Any]) -> Product:
    """Lenient on types (CSV gives strings), strict on what a product cannot do without. A column under
    its earlier name (``LEGACY_COLUMNS``) reads as the current one, so older catalog files still load."""
    row = {LEGACY_COLUMNS.get(k, k): v for k, v in row.items()}
    values = {name: read(row.get(name)) for name, read in _READERS.items()}
    attributes = {str(k): str(v) for k, v in (row.get(ATTRIBUTES) or {}).items()}
    for key, value in row.items():
        if key not in _READERS and key != ATTRIBUTES and value not in (None, ""):
            attributes[str(key)] = str(value)
    return Product(**values, attributes=attributes)


def read_catalog(path: str | Path) -> Iterator[Product | BadRow]:
    """Products of a ``.jsonl`` or ``.csv`` file in order; unreadable rows come back as ``BadRow``."""
    for _, item in iter_catalog(path):
        yield item


def iter_catalog(path: str | Path) -> Iterator[tuple[int, Product | BadRow]]:
    """Like ``read_catalog`` with the file line of each row, for reports that point at the line."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, _parse_row(reader.line_num, row)
        else:
            for line, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, BadRow(line, "", f"not JSON: {exc.msg}")
                    continue
                if not isinstance(obj, dict):
                    yield line, BadRow(line, "", "not a JSON object")
                    continue
                yield line, _parse_row(line, obj)


def _parse_row(line: int, row: dict[str, Any]) -> Product | BadRow:
    try:
        return product_from_mapping(row)
    except ValueError as exc:
        return BadRow(line, str(row.get("id") or ""), str(exc))


def write_catalog(path: str | Path, products: Sequence[Product]) -> None:
    """JSONL or CSV by suffix; CSV spreads attributes into extra columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            extra = sorted({k for p in products for k in p.attributes})
            writer = csv.DictWriter(fh, fieldnames=[*CORE_COLUMNS, *extra])
            writer.writeheader()
            for p in products:
                writer.writerow({**{c: _cell(getattr(p, c)) for c in CORE_COLUMNS}, **p.attributes})
        else:
            for p in products:
                fh.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


def resolve_image(product: Product, catalog_dir: Path) -> Path | None:
    """The local file behind a product's image reference, or None when it is not a local file."""
    ref = product.image_uri
    if not ref:
        return None
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif "://" in ref:
        return None
    path = Path(ref)
    return path if path.is_absolute() else catalog_dir / path


# ---- labelled queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledQuery:
    """One evaluation query: text and/or an image path, with graded relevance per product id."""

    text: str
    relevant: dict[str, float]
    image: str = ""


def read_queries(path: str | Path) -> list[LabelledQuery]:
    """JSONL, one query per line: ``{"query": "red leather boots", "image": "optional/path.jpg",
    "relevant": ["p1", "p2"]}`` or graded ``"relevant": {"p1": 2, "p2": 1}`` (grade > 0 is relevant)."""
    path = Path(path)
    queries = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        obj = json.loads(text)
        relevant = obj.get("relevant")
        if isinstance(relevant, list):
            grades = {str(r): 1.0 for r in relevant}
        elif isinstance(relevant, dict):
            grades = {str(k): float(v) for k, v in relevant.items() if float(v) > 0}
        else:
            raise ValueError(f"{path}:{line}: 'relevant' must be a list of ids or an id -> grade object")
        image = str(obj.get("image") or "")
        if image and not Path(image).is_absolute():
            image = str(path.parent / image)
        queries.append(LabelledQuery(text=str(obj.get("query") or ""), relevant=grades, image=image))
    return queries
