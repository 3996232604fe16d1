"""A function fits on a screen and a module has one job (STYLE.md 23), held where it matters most: the
kernel and the two serving services. Read from the source, so the limits hold for code never run here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vitrine", "gateway", "index_service")
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def test_the_walk_sees_the_modules() -> None:
    assert {"gateway/calls.py", "index_service/servicer.py", "vitrine/catalog.py"} <= {
        str(p.relative_to(ROOT)) for p in _modules()
    }


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_lengths(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has more than {MAX_MODULE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text, str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_unreachable_branches_left() -> None:
    """An ``unreachable`` raise exists only where logic was copied around a context manager."""
    assert [
        str(p.relative_to(ROOT)) for p in _modules() if 'AssertionError("unreachable")' in p.read_text()
    ] == []
