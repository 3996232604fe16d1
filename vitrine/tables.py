"""The one markdown table writer: benchmark reports, load-test reports and evaluation tables.

Reports are read as rendered markdown and pasted into ``docs/``; one writer keeps every table in the
same shape (``| a | b |`` rows under a ``|---|---:|`` rule), so a test or a reader can find a row by its
leading cells whichever tool printed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(headers: Sequence[str], rows: Iterable[Iterable[object]], align: str = "") -> list[str]:
    """A markdown table as lines; ``align`` is one character per column, "l" or "r" (default: left)."""
    if len(align) > len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of 'l' or 'r' per column, {len(headers)} columns")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(headers), "l")) + "|"
    return [_row(headers), rule, *(_row(row) for row in rows)]
