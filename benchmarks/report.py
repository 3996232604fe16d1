"""What every benchmark report shares: the hardware line, the percentile definition, markdown tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vitrine.measure import describe_hardware, percentile

__all__ = ["describe_hardware", "percentile", "table"]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table as lines; ``align`` is one character per column, "l" or "r" (default: left)."""
    rule = [("---:" if a == "r" else "---") for a in align.ljust(len(headers), "l")]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
