"""Milvus filter expressions: every filter value is one string literal, whatever it holds. Checked
with milvus-lite's own tokenizer (the contract suite checks the selection end to end)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidInput
from gateway.milvus_rows import expression, literal
from tests.contract.catalog import HOSTILE
from vitrine.filters import FieldFilter
from vitrine.items import index_filter

tokens = pytest.importorskip("milvus_lite.search.filter.tokens")

# what a filter value can hold: any text but the surrogates protobuf and JSON refuse before it gets here
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def _strings(source: str) -> list[str]:
    return [t.value for t in tokens.tokenize(source) if t.kind == tokens.TokenKind.STRING]


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_a_literal_is_one_string_token_meaning_exactly_its_value(value: str) -> None:
    assert _strings(literal(value)) == [value]
    assert [t.kind for t in tokens.tokenize(literal(value)) if t.kind != tokens.TokenKind.EOF] == [
        tokens.TokenKind.STRING
    ]


def test_hostile_values_stay_values_inside_a_whole_filter() -> None:
    flt = index_filter(
        [FieldFilter("brand", HOSTILE), FieldFilter("category", HOSTILE[:3]), FieldFilter("price", min=1.5)]
    )
    assert flt is not None
    source = expression(flt, ["price"], ["brand"])
    assert _strings(source) == [*HOSTILE, *(f"category:{h}" for h in HOSTILE[:3])]
    assert "n_price >= 1.5" in source


def test_a_field_outside_the_schema_or_an_infinite_bound_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown keyword field"):
        expression(index_filter([FieldFilter("colour", ("red",))]), ["price"], ["brand"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not finite"):
        expression(index_filter([FieldFilter("price", max=float("inf"))]), ["price"], ["brand"])  # type: ignore[arg-type]
