"""Search as plain code: embed -> retrieve (one or more vector spaces, fused) -> re-rank.

The clients are passed in as the three protocols below, so the pipeline runs the same against Triton and
the index service (``gateway.index_client``) as against anything a test or benchmark supplies. Each
product is one index item with a vector in each named space (``vitrine.items``): ``image`` (CLIP image
embedding of its photo) and ``title`` (CLIP text embedding of its title), written together in one call.
How a text query meets them is a choice (``TextMatch``), and so is how ranked lists from several spaces
become one (``Fusion``):

- ``rrf``: reciprocal-rank fusion, sum of ``weight / (rrf_k + rank)``. Scale-free, so cosine scores from
  different spaces (text-image similarities sit far lower than text-text ones) need no calibration.
- ``weighted``: sum of ``weight * cosine``; keeps score magnitudes, a product missing from one list
  contributes nothing there.

A lexical list (``TextMatch.LEXICAL``: BM25 over the product's words in the index's lexical space) fuses
like any other. BM25 scores are unbounded and not comparable with cosine, so ``rrf`` uses only its ranks,
and ``weighted`` first divides it by its top score (its best product counts 1, as a perfect cosine would).

Deadlines: every stage gets the time left until the caller's deadline, and the whole search is bounded by
it, so a slow dependency becomes DEADLINE_EXCEEDED rather than work nobody waits for.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

import numpy as np

from gateway.errors import InvalidInput, NotFound
from gateway.product_vectors import product_vectors, version_vectors
from gateway.text_match import LEXICAL_QUERY_CHARS, QUERY_TEXT, SENTENCE_VECTOR, TextWeights, servable_spaces
from gateway.timing import Deadline, Timer
from gateway.types import (
    MAX_RERANK_DEPTH,
    MAX_TOP_K,
    Candidate,
    Embedder,
    Fusion,
    Hit,
    Record,
    Reranker,
    Retriever,
    SearchQuery,
    SearchResult,
    SentenceEmbedder,
    SimilarResult,
    TextMatch,
    TextSource,
    check_ids,
    check_image_header,
    check_product,
    require_photo,
)
from vitrine.catalog import Product
from vitrine.contracts import BASE_VERSION, MAX_TEXT_CHARS
from vitrine.filters import FieldFilter, FilterError, check_filters
from vitrine.items import IMAGE, TITLE, encoder_space

T = TypeVar("T")


def fuse(lists: Sequence[tuple[float, Sequence[Candidate]]], method: Fusion, rrf_k: int) -> list[Candidate]:
    """One ranked list from several weighted ones; a single list passes through unchanged."""
    if len(lists) == 1:
        return list(lists[0][1])
    scores: dict[str, float] = {}
    best: dict[str, Candidate] = {}
    for weight, candidates in lists:
        for rank, cand in enumerate(candidates):
            gain = weight / (rrf_k + rank + 1) if method == Fusion.RRF else weight * cand.score
            scores[cand.id] = scores.get(cand.id, 0.0) + gain
            best.setdefault(cand.id, cand)
    order = sorted(scores, key=lambda pid: (-scores[pid], pid))
    return [Candidate(pid, scores[pid], best[pid].product) for pid in order]


def _top_is_one(candidates: Sequence[Candidate]) -> list[Candidate]:
    """A BM25 list scaled so its best product scores 1 (weighted fusion with cosine lists)."""
    top = candidates[0].score if candidates else 0.0
    if top <= 0:
        return list(candidates)
    return [Candidate(c.id, c.score / top, c.product) for c in candidates]


@dataclass(frozen=True)
class PipelineSettings:
    """How searches run, declared once: the gateway's config holds these (its flags come from here)."""

    collection: str = field(
        default="products", metadata={"help": "catalog name: one index collection, one item per product"}
    )
    text_match: TextMatch = field(
        # the best on both held-out query sets of the demo catalog (docs/BENCHMARKS.md, text modes)
        default=TextMatch.LEXICAL_MINILM,
        metadata={"help": "how a text query meets products by default"},
    )
    fusion: Fusion = field(default=Fusion.RRF, metadata={"help": "how ranked lists of several spaces merge"})
    rrf_k: int = field(default=60, metadata={"help": "reciprocal-rank fusion constant"})
    title_weight: float = field(
        default=0.5, metadata={"help": "share of a text query's weight on the title space (fusion)"}
    )
    lexical_weight: float = field(
        default=1.0, metadata={"help": "lexical list's weight in the fused modes (gateway.text_match)"}
    )
    minilm_weight: float = field(
        default=1.0, metadata={"help": "MiniLM list's weight in the fused modes (gateway.text_match)"}
    )
    clip_weight: float = field(
        # lexical 1 : MiniLM 1 : CLIP 0.25 with rrf: the best of the grid on the validation queries
        # (docs/BENCHMARKS.md, text modes); CLIP's weights were random there
        default=0.25,
        metadata={"help": "CLIP lists' weight in text_match all (gateway.text_match)"},
    )

    def weights(self) -> TextWeights:
        return TextWeights(self.title_weight, self.lexical_weight, self.minilm_weight, self.clip_weight)

    filter_attributes: tuple[str, ...] = field(
        default=("color", "material", "pattern"),
        metadata={"help": "extra product attributes indexed for filtering (comma-separated)"},
    )
    rerank_parts: int = field(
        default=2,
        metadata={
            "help": "concurrent cross-encoder requests one re-rank is split into (slices of 4+ pairs): "
            "the CPU target serves it as two single-thread instances that then share one re-rank; "
            "1 where one instance uses the whole device (docs/BENCHMARKS.md, re-ranking layout)"
        },
    )
    passage_words: int = field(
        default=32,
        metadata={
            "help": "description words after the title that the re-ranker reads (0: all); "
            "re-rank cost grows with pair length (docs/BENCHMARKS.md, re-ranking at the floor)"
        },
    )


MIN_PART = 4
"""Fewest pairs worth a cross-encoder request of their own when a re-rank is split."""


async def rerank_in_parts(
    reranker: Reranker, query: str, passages: Sequence[str], parts: int, timeout: float | None
) -> np.ndarray:
    """``passages`` scored in up to ``parts`` contiguous slices sent at once (each at least ``MIN_PART``
    pairs), so several cross-encoder instances work on one re-rank; a pair's score does not depend on
    the slice it travels in."""
    parts = max(1, min(parts, len(passages) // MIN_PART))
    if parts == 1:
        return await reranker.rerank(query, passages, timeout)
    bounds = np.linspace(0, len(passages), parts + 1).round().astype(int)
    scored = await asyncio.gather(
        *(reranker.rerank(query, passages[a:b], timeout) for a, b in itertools.pairwise(bounds))
    )
    return np.concatenate(scored)


@dataclass(frozen=True)
class Serving:
    """The model versions answering queries, switched as one immutable value: the encoder version with
    its embedder, and the cross-encoder version with its re-ranker.

    A search reads ``Pipeline.serving`` once, so its query vectors and the index spaces it searches
    (``vitrine.items.encoder_space``) always come from the same encoder version, and its re-ranking from
    one cross-encoder, even while a rollout switches versions between two searches.
    """

    version: int
    embedder: Embedder
    reranker: Reranker
    reranker_version: int = BASE_VERSION
    pending_version: int = BASE_VERSION
    """An encoder version being rolled out (its spaces are being filled): ingest writes its vectors too,
    so a product added during the re-index is not missing from it after the switch."""
    pending_embedder: Embedder | None = None

    def space(self, base: str) -> str:
        return encoder_space(base, self.version)


class Pipeline:
    def __init__(
        self,
        embedder: Embedder,
        retriever: Retriever,
        reranker: Reranker,
        settings: PipelineSettings,
        sentence: SentenceEmbedder | None = None,
    ) -> None:
        """``sentence``: the MiniLM encoder (the ``minilm`` space); by default ``embedder`` when it is
        one too (Triton's client is), else none: products are stored without it, MiniLM modes refused."""
        self.embedder = embedder
        self.sentence = sentence or (embedder if isinstance(embedder, SentenceEmbedder) else None)
        self.retriever = retriever
        self.settings = settings
        self.serving = Serving(BASE_VERSION, embedder, reranker)

    # ---- validation -------------------------------------------------------------------------------

    def validate_filters(self, filters: Sequence[FieldFilter]) -> None:
        try:
            check_filters(filters, self.settings.filter_attributes)
        except FilterError as exc:
            raise InvalidInput(str(exc)) from None

    def validate(self, q: SearchQuery) -> None:
        """Every rule of a search, in one place, for the call layer and direct callers alike."""
        if len(q.text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text is {len(q.text)} characters; the limit is {MAX_TEXT_CHARS}")
        if q.image:
            check_image_header(q.image)
        if not q.text.strip() and not q.image:
            raise InvalidInput("empty query: give text, an image, or both")
        if not 1 <= q.top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be in 1..{MAX_TOP_K}, got {q.top_k}")
        if q.rerank and not q.top_k <= q.rerank_depth <= MAX_RERANK_DEPTH:
            raise InvalidInput(f"rerank_depth must be in top_k..{MAX_RERANK_DEPTH}, got {q.rerank_depth}")
        if not 0.0 <= q.image_weight <= 1.0:
            raise InvalidInput(f"image_weight must be in [0, 1], got {q.image_weight}")
        self.validate_filters(q.filters)

    # ---- search -----------------------------------------------------------------------------------

    def _spaces(self, q: SearchQuery, has_text: bool, has_image: bool) -> list[tuple[str, str, float]]:
        """(space, what the query brings, weight) for every space searched (``gateway.text_match``): the
        CLIP text vector, the MiniLM vector, or the words themselves (a lexical space)."""
        text_w = 1.0 - q.image_weight if has_image else 1.0
        image_w = q.image_weight if has_text else 1.0
        spaces: list[tuple[str, str, float]] = []
        if has_text:
            missing = {QUERY_TEXT} if not isinstance(self.retriever, TextSource) else set()
            missing |= {SENTENCE_VECTOR} if self.sentence is None else set()
            spaces = servable_spaces(
                q.text_match, self.settings.text_match, self.settings.weights(), text_w, missing
            )
        if has_image:
            spaces.append((IMAGE, "image", image_w))
        return spaces

    async def search(self, q: SearchQuery, timeout: float | None = None) -> SearchResult:
        self.validate(q)
        deadline = Deadline(timeout)
        timer = Timer()
        t0 = time.perf_counter()
        result = await deadline.run(self._search(q, deadline, timer))
        timer.timings["total"] = (time.perf_counter() - t0) * 1000.0
        result.timings = timer.timings
        return result

    async def _timed(self, timer: Timer, stage: str, start: Callable[[], Awaitable[T]]) -> T:
        """Time one stage; the stage's coroutine is created here, inside the task, so a task cancelled
        before it first runs leaves no inner coroutine behind un-awaited."""
        with timer.stage(stage):
            return await start()

    async def _search(self, q: SearchQuery, deadline: Deadline, timer: Timer) -> SearchResult:
        has_text, has_image = bool(q.text.strip()), bool(q.image)
        serving = self.serving  # read once: query vectors and searched spaces of one encoder version
        chosen = self._spaces(q, has_text, has_image)
        minilm = any(which == SENTENCE_VECTOR for _, which, _ in chosen)
        # Concurrent stages share one budget, read before any coroutine exists: a deadline passing
        # between two reads would otherwise leave the first coroutine created but never awaited.
        budget = deadline.remaining()
        jobs: dict[str, Awaitable[object]] = {}
        if any(which == "text" for _, which, _ in chosen):  # a lexical space alone needs no embedding
            jobs["text"] = self._timed(
                timer, "embed_text", partial(serving.embedder.embed_text, q.text, budget)
            )
        if minilm and self.sentence is not None:
            jobs[SENTENCE_VECTOR] = self._timed(
                timer, "embed_minilm", partial(self.sentence.embed_minilm, q.text, budget)
            )
        if has_image:
            jobs["image"] = self._timed(
                timer, "embed_image", partial(serving.embedder.embed_image, q.image, budget)
            )
        depth = max(q.top_k, q.rerank_depth) if (q.rerank and has_text) else q.top_k
        lexical = list(dict.fromkeys(sp for sp, which, _ in chosen if which == QUERY_TEXT))
        for space in lexical:  # words need no embedding: the lexical search runs while the query embeds
            assert isinstance(self.retriever, TextSource)  # checked above
            words_of_q = [
                q.text[:LEXICAL_QUERY_CHARS]
            ]  # the index reads no more; the rest is cut, and said so
            search_text = partial(self.retriever.search_text, space, words_of_q, depth, q.filters, budget)
            jobs[f"{QUERY_TEXT}:{space}"] = self._timed(timer, "lexical", search_text)
        done = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        words: dict[str, list[Candidate]] = {}
        for space in lexical:
            (words[space],) = cast(list[list[Candidate]], done[f"{QUERY_TEXT}:{space}"])  # one text, one list
        truncated = bool(lexical) and len(q.text) > LEXICAL_QUERY_CHARS
        vectors: dict[str, np.ndarray] = {}
        if "text" in done:
            clip: tuple[np.ndarray, bool] = done["text"]  # type: ignore[assignment]
            vectors["text"], truncated = clip[0], truncated or clip[1]
        if SENTENCE_VECTOR in done:
            sentence: tuple[np.ndarray, bool] = done[SENTENCE_VECTOR]  # type: ignore[assignment]
            vectors[SENTENCE_VECTOR] = sentence[0]
            truncated = truncated or sentence[1]
        if has_image:
            vectors["image"] = done["image"]  # type: ignore[assignment]

        # Only CLIP's spaces follow its encoder version; the lexical and MiniLM spaces are their own.
        spaces = [(serving.space(sp) if sp in (IMAGE, TITLE) else sp, which, w) for sp, which, w in chosen]
        with timer.stage("retrieve"):
            ranked = await self._retrieve(spaces, vectors, words, q, depth, deadline.remaining())
        weighted = self.settings.fusion == Fusion.WEIGHTED and len(spaces) > 1
        fused = fuse(
            [
                (w, _top_is_one(ranked[i]) if weighted and which == QUERY_TEXT else ranked[i])
                for i, (_, which, w) in enumerate(spaces)
            ],
            self.settings.fusion,
            self.settings.rrf_k,
        )

        if not (q.rerank and has_text) or not fused:
            hits = [Hit(c.product, c.score) for c in fused[: q.top_k]]
            return SearchResult(hits, text_truncated=truncated, reranked=False)

        pool = fused[:depth]
        with timer.stage("rerank"):
            scores = await rerank_in_parts(
                serving.reranker,
                q.text,
                [c.product.passage(self.settings.passage_words) for c in pool],
                self.settings.rerank_parts,
                deadline.remaining(),
            )
        order = sorted(range(len(pool)), key=lambda i: (-float(scores[i]), i))[: q.top_k]
        hits = [Hit(pool[i].product, pool[i].score, float(scores[i])) for i in order]
        return SearchResult(hits, text_truncated=truncated, reranked=True)

    async def _retrieve(
        self,
        spaces: list[tuple[str, str, float]],
        vectors: dict[str, np.ndarray],
        words: dict[str, list[Candidate]],
        q: SearchQuery,
        depth: int,
        budget: float | None,
    ) -> list[list[Candidate]]:
        """Each searched space's ranked list, in ``spaces``' order: one index request per vector space
        carrying every query vector aimed at it; a lexical space's list is already in ``words``."""
        groups: dict[str, list[int]] = {}
        ranked: list[list[Candidate]] = [[] for _ in spaces]
        for i, (space, which, _) in enumerate(spaces):
            if which == QUERY_TEXT:
                ranked[i] = words[space]
            else:
                groups.setdefault(space, []).append(i)
        results = await asyncio.gather(
            *(
                self.retriever.search(space, [vectors[spaces[i][1]] for i in idx], depth, q.filters, budget)
                for space, idx in groups.items()
            )
        )
        for idx, lists in zip(groups.values(), results, strict=True):
            for i, res in zip(idx, lists, strict=True):
                ranked[i] = res
        return ranked

    # ---- similar items ----------------------------------------------------------------------------

    async def similar(
        self, product_id: str, top_k: int, filters: Sequence[FieldFilter] = (), timeout: float | None = None
    ) -> SimilarResult:
        if not product_id:
            raise InvalidInput("product id is empty")
        check_ids([product_id])
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be in 1..{MAX_TOP_K}, got {top_k}")
        self.validate_filters(filters)
        deadline = Deadline(timeout)
        timer = Timer()
        return await deadline.run(self._similar(product_id, top_k, filters, deadline, timer))

    async def _similar(
        self, pid: str, top_k: int, filters: Sequence[FieldFilter], deadline: Deadline, timer: Timer
    ) -> SimilarResult:
        serving = self.serving
        with timer.stage("lookup"):
            stored = await self.retriever.get([pid], deadline.remaining())
        if pid not in stored:
            raise NotFound(f"unknown product id {pid[:64]!r}")
        vectors = stored[pid][1]
        spaces = [serving.space(base) for base in (IMAGE, TITLE)]
        if any(space not in vectors for space in spaces):
            raise NotFound(f"product {pid[:64]!r} has no vectors of encoder version {serving.version} yet")
        with timer.stage("retrieve"):
            budget = deadline.remaining()
            results = await asyncio.gather(
                *(
                    self.retriever.search(space, [vectors[space]], top_k + 1, filters, budget)
                    for space in spaces
                )
            )
        by_image, by_title = (
            [Hit(c.product, c.score) for c in res[0] if c.id != pid][:top_k] for res in results
        )
        return SimilarResult(by_image, by_title, timer.timings)

    # ---- catalog maintenance ----------------------------------------------------------------------

    async def get(self, ids: Sequence[str], timeout: float | None = None) -> list[Product]:
        check_ids(ids)
        found = await self.retriever.get(ids, timeout)
        missing = [i for i in ids if i not in found]
        if missing:
            # Ids are bounded (``check_ids``); a message still repeats no more than the start of ten.
            raise NotFound(f"unknown product ids: {', '.join(i[:64] for i in missing[:10])}")
        return [found[i][0] for i in ids]

    async def upsert(
        self, items: Sequence[tuple[Product, bytes]], timeout: float | None = None
    ) -> list[BaseException | None]:
        """Embeds and stores a batch; returns one error (or None) per item, so one bad image does not
        sink its neighbours. Dependency outages still raise: nothing can be stored then."""
        deadline = Deadline(timeout)
        errors: list[BaseException | None] = [None] * len(items)
        for i, (product, image) in enumerate(items):
            try:
                check_product(product)
                require_photo(product, image)
            except InvalidInput as exc:
                errors[i] = exc
        todo = [i for i, e in enumerate(errors) if e is None]
        # The batch's photos and titles in few requests, all at once (``gateway.product_vectors``).
        budget = deadline.remaining()
        embedded = await product_vectors(self.embedder, self.sentence, [items[i] for i in todo], budget)
        records: list[tuple[int, Record]] = []
        for i, vectors in zip(todo, embedded, strict=True):
            if isinstance(vectors, InvalidInput):
                errors[i] = vectors
            else:
                records.append((i, Record(items[i][0], vectors)))
        serving = self.serving
        # Besides the base spaces (required, and rollback's): the served version's spaces after a rollout,
        # and a version being rolled out, so a product ingested now is found by either.
        versions = {serving.version: serving.embedder}
        if serving.pending_embedder is not None:
            versions.setdefault(serving.pending_version, serving.pending_embedder)
        versions.pop(BASE_VERSION, None)
        for version, embedder in versions.items() if records else ():
            extra = await version_vectors(embedder, [items[i] for i, _ in records], budget)
            for (_, rec), (image_vector, title_vector) in zip(records, extra, strict=True):
                rec.vectors[encoder_space(IMAGE, version)] = image_vector
                rec.vectors[encoder_space(TITLE, version)] = title_vector
        # Upsert is by id: of several items with one id, the last embedded one is what a stream of
        # separate writes would leave, so only it is written (the index refuses a batch repeating an id).
        last = {rec.product.id: (i, rec) for i, rec in records}
        batch = sorted(last.values(), key=lambda pair: pair[0])
        if not batch:
            return errors
        try:
            await self.retriever.upsert([rec for _, rec in batch], deadline.remaining())
        except InvalidInput as exc:
            if len(batch) == 1:
                errors[batch[0][0]] = exc
                return errors
            # The index refused the batch for a reason the checks above cannot see; write one product
            # at a time so only the offending one is reported and its neighbours are stored.
            for i, rec in batch:
                try:
                    await self.retriever.upsert([rec], deadline.remaining())
                except InvalidInput as one:
                    errors[i] = one
        return errors

    async def delete(self, ids: Sequence[str], timeout: float | None = None) -> tuple[int, list[str]]:
        check_ids(ids)
        found = await self.retriever.get(ids, timeout)
        missing = [i for i in ids if i not in found]
        deleted = await self.retriever.delete(ids, timeout)
        return deleted, missing
