"""Lexical spaces: BM25 over an item's payload text, with SQLite FTS5 in the index's own database.

Each lexical space of a collection is one FTS5 table whose rowid is the item's *slot* (the same number
every vector space uses, never reused) and whose columns are the space's fields. Storage writes an
item's row in the transaction that writes the item and deletes it in the one that deletes or replaces
the item, so the lexical space is exactly as durable and atomic as the vector spaces, and a restart has
nothing to rebuild: the table is in the database. A search reads the table through a read-only
connection (WAL: it never waits for a commit) and maps each matching slot to the item memory holds.

A query is never FTS5 syntax: its words are extracted (letters and digits), each is quoted, and the
expression is their OR, ranked by BM25 (``bm25()`` with the fields' weights; SQLite's value is lower
for better matches, so a hit's score is its negation). The trigram tokenizer matches substrings of
three characters; its query ORs every trigram of every word, so a misspelt word still shares most of
its trigrams with the right one (typo tolerance ranked by BM25 over trigrams).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from index_service import codec
from index_service.config import MAX_QUERY_TERMS
from index_service.model import LexicalSpec, LexicalTokenizer

TOKENIZERS = {
    LexicalTokenizer.UNICODE61: "unicode61 remove_diacritics 2",
    LexicalTokenizer.PORTER: "porter unicode61 remove_diacritics 2",
    LexicalTokenizer.TRIGRAM: "trigram",
}
"""Each tokenizer's FTS5 ``tokenize`` option."""

DEFAULT_TOKENIZER = LexicalTokenizer.TRIGRAM
"""Chosen by measurement (``benchmarks/lexical.py``; docs/BENCHMARKS.md, lexical tokenizers): on the
validation queries trigram matched words as well as porter or unicode61 within the intervals, and
misspelt ones far better."""

TITLE, DESCRIPTION, EXTRA = "title", "description", "extra."
"""A field's source: the payload's title or description, or ``extra.<key>`` / ``extra.<prefix>*``."""

_WORD = re.compile(r"\w+")
FETCH = 256
"""Matches read from SQLite at a time while collecting a search's hits."""


def table(collection: str, space: str) -> str:
    """The space's FTS5 table name, quoted. Names hold only letters, digits, '-', '_' and '.', so '~'
    separates them unambiguously, and the trailing '~' keeps FTS5's shadow tables (``<table>_data``...)
    from ever meeting another space's table."""
    return f'"lex~{collection}~{space}~"'


def create_sql(collection: str, spec: LexicalSpec) -> str:
    columns = ", ".join(f"f{i}" for i in range(len(spec.fields)))
    tokenize = TOKENIZERS[LexicalTokenizer(spec.tokenizer)]
    return (
        f"CREATE VIRTUAL TABLE {table(collection, spec.name)} "
        f"USING fts5(id UNINDEXED, {columns}, tokenize='{tokenize}')"
    )


def insert_sql(collection: str, spec: LexicalSpec) -> str:
    marks = ", ".join("?" for _ in range(len(spec.fields) + 2))
    return f"INSERT INTO {table(collection, spec.name)} (rowid, id, {_columns(spec)}) VALUES ({marks})"


def _columns(spec: LexicalSpec) -> str:
    return ", ".join(f"f{i}" for i in range(len(spec.fields)))


def document(spec: LexicalSpec, record: bytes) -> tuple[str, ...]:
    """The text each of the space's fields takes from an item's stored record."""
    payload = codec.decode_record(record).payload
    out = []
    for f in spec.fields:
        if f.source == TITLE:
            out.append(payload.title)
        elif f.source == DESCRIPTION:
            out.append(payload.description)
        elif f.source.endswith("*"):
            prefix = f.source[len(EXTRA) : -1]
            out.append(" ".join(v for k, v in sorted(payload.extra.items()) if k.startswith(prefix)))
        else:
            out.append(payload.extra.get(f.source[len(EXTRA) :], ""))
    return tuple(out)


def write_rows(
    db: sqlite3.Connection,
    collection: str,
    specs: Sequence[LexicalSpec],
    rows: Sequence[tuple[str, int, bytes, bytes]],
) -> None:
    """Inside storage's transaction: each item's previous row out of every lexical space (found by its
    stored slot), its new one in. ``rows`` are items as storage writes them (id, slot, vectors, record);
    call before the items table is updated."""
    if not specs or not rows:
        return
    old = _stored_slots(db, collection, [r[0] for r in rows])
    for spec in specs:
        name = table(collection, spec.name)
        db.executemany(f"DELETE FROM {name} WHERE rowid = ?", [(slot,) for slot in old])
        db.executemany(
            insert_sql(collection, spec),
            [(slot, item_id, *document(spec, record)) for item_id, slot, _, record in rows],
        )


def delete_rows(
    db: sqlite3.Connection, collection: str, specs: Sequence[LexicalSpec], ids: list[str]
) -> None:
    """Inside storage's transaction, before the items' rows go."""
    if not specs:
        return
    old = _stored_slots(db, collection, ids)
    for spec in specs:
        db.executemany(f"DELETE FROM {table(collection, spec.name)} WHERE rowid = ?", [(s,) for s in old])


def fill(db: sqlite3.Connection, collection: str, spec: LexicalSpec) -> int:
    """Inside storage's transaction: create the space's table and index every stored item; returns how
    many."""
    db.execute(create_sql(collection, spec))
    cursor = db.execute("SELECT id, slot, body FROM items WHERE collection = ?", (collection,))
    n = 0
    while chunk := cursor.fetchmany(4096):
        db.executemany(
            insert_sql(collection, spec),
            [(slot, item_id, *document(spec, record)) for item_id, slot, record in chunk],
        )
        n += len(chunk)
    return n


def _stored_slots(db: sqlite3.Connection, collection: str, ids: list[str]) -> list[int]:
    out = []
    for item_id in ids:
        row = db.execute(
            "SELECT slot FROM items WHERE collection = ? AND id = ?", (collection, item_id)
        ).fetchone()
        if row is not None:
            out.append(int(row[0]))
    return out


# ---- queries ----


def terms(text: str) -> list[str]:
    """The words of a query (letters and digits, case-folded), in order, without repeats, at most
    ``MAX_QUERY_TERMS``."""
    return list(dict.fromkeys(_WORD.findall(text.casefold())))[:MAX_QUERY_TERMS]


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def expression(text: str, tokenizer: int, prefix: bool) -> str:
    """An FTS5 MATCH expression for free text: the OR of its quoted words (trigram: of their trigrams),
    the last word also as a prefix when asked. Empty when the text has no word to match."""
    words = terms(text)
    if tokenizer == LexicalTokenizer.TRIGRAM:
        grams = dict.fromkeys(w[i : i + 3] for w in words for i in range(len(w) - 2))
        parts = [_quoted(g) for g in list(grams)[: MAX_QUERY_TERMS * 4]]
        if prefix and words and len(words[-1]) >= 3:
            parts.append(_quoted(words[-1]))  # a trigram phrase already matches any substring
        return " OR ".join(parts)
    parts = [_quoted(w) for w in words]
    if prefix and words:
        parts.append(_quoted(words[-1]) + " *")
    return " OR ".join(parts)


def search(
    db: sqlite3.Connection,
    collection: str,
    spec: LexicalSpec,
    text: str,
    prefix: bool,
    k: int,
    admit: Callable[[int, Callable[[], str]], int | None],
) -> list[tuple[int, float]]:
    """The best ``k`` admitted items for ``text``: (slot, BM25 relevance), best first. ``admit(slot,
    id_of)`` returns the slot memory holds for that match (or None when the item is not live there, or
    the filter refuses it; ``id_of()`` reads the match's id, which only a match memory does not hold
    needs: reading every match's id costs more than ranking them). Every match is considered in rank
    order until ``k`` are admitted, so a filter loses nothing (a post-filter over the full ranked list,
    not over a truncated one)."""
    match = expression(text, spec.tokenizer, prefix)
    if not match:
        return []
    weights = ", ".join(["0", *(repr(float(f.weight)) for f in spec.fields)])
    name = table(collection, spec.name)
    cursor = db.execute(
        f"SELECT rowid, bm25({name}, {weights}) AS score FROM {name} WHERE {name} MATCH ? "
        "ORDER BY score, rowid",
        (match,),
    )

    def id_reader(slot: int) -> Callable[[], str]:
        return lambda: str(db.execute(f"SELECT id FROM {name} WHERE rowid = ?", (slot,)).fetchone()[0])

    hits: list[tuple[int, float]] = []
    seen: set[int] = set()
    try:
        for rows in _chunks(cursor):
            for slot, score in rows:
                live = admit(int(slot), id_reader(int(slot)))
                if live is None or live in seen:
                    continue
                seen.add(live)
                hits.append((live, -float(score)))
                if len(hits) == k:
                    return hits
    finally:
        cursor.close()
    return hits


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[tuple[int, float]]]:
    while rows := cursor.fetchmany(FETCH):
        yield rows


def admitter(
    next_slot: int,
    alive: np.ndarray,
    slot_of: dict[str, int],
    mask: np.ndarray | None,
) -> Callable[[int, Callable[[], str]], int | None]:
    """``search``'s ``admit`` over a collection's memory, read under its readers lock. A match at a slot
    memory holds live is that item. A match at a slot memory does not hold yet (committed, not yet
    applied) stands for the item's version memory holds, if any: the search answers from one state."""

    def admit(slot: int, id_of: Callable[[], str]) -> int | None:
        live: int | None = slot
        if not (slot < next_slot and alive[slot]):  # slots are never reused: a live one is this item
            live = slot_of.get(id_of())
        if live is None or (mask is not None and not mask[live]):
            return None
        return live

    return admit
