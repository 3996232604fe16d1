"""The one markdown table writer: the shape every report's rows are found by."""

from __future__ import annotations

import pytest

from vitrine.tables import markdown_table


def test_rows_under_a_rule_aligned_per_column() -> None:
    assert markdown_table(["name", "ms", "note"], [["a", 1.5, ""], ("b", 20, "x")], "lr") == [
        "| name | ms | note |",
        "|---|---:|---|",
        "| a | 1.5 |  |",
        "| b | 20 | x |",
    ]


def test_a_table_without_rows_is_its_header() -> None:
    assert markdown_table(("a",), []) == ["| a |", "|---|"]


@pytest.mark.parametrize("align", ["lrr", "c"])
def test_an_alignment_that_does_not_fit_is_refused(align: str) -> None:
    with pytest.raises(ValueError, match="one of 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], align)
