"""Client-side tools over the public API: catalog ingestion, a results table, and evaluation.

They speak only the gateway's proto, so they work against any deployment (local or remote, API key and
TLS optional). Ingestion reads images on the client and sends bytes, so the gateway needs no access to
the client's disk.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc

from gateway.messages import product_to_pb
from operations.evaluation import VALIDATION, Row, format_interval_table, in_split, score_query
from vitrine import targets
from vitrine.catalog import BadRow, LabelledQuery, Product, iter_catalog, read_queries, resolve_image
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["ProductSearch"].full_name


@dataclass(frozen=True)
class Connection:
    """``address``: one gateway, a comma-separated list of gateways, or a gRPC target
    (``vitrine.targets``); calls spread over several with ``round_robin``, and one refused UNAVAILABLE
    (its gateway died, or is restarting) is sent once more to the next."""

    address: str
    api_key: str = ""
    tls_ca: str = ""

    def channel(self) -> grpc.Channel:
        options = targets.channel_options(
            [("grpc.max_send_message_length", 64 * 1024 * 1024), *targets.retry_options(SERVICE)]
        )
        target = targets.client_target(self.address)
        if self.tls_ca:
            creds = grpc.ssl_channel_credentials(Path(self.tls_ca).read_bytes())
            return grpc.secure_channel(target, creds, options=options)
        return grpc.insecure_channel(target, options=options)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.api_key}")] if self.api_key else []


@dataclass
class IngestSummary:
    rows: int = 0
    upserted: int = 0
    bad: list[BadRow] = field(default_factory=list)
    error: str = ""
    """Why ingestion stopped early (the gateway or a dependency failed); empty when it ran to the end."""
    seconds: float = 0.0
    """Wall time from the first row read to the last batch settled."""

    @property
    def rate(self) -> float:
        """Products stored per second of ``seconds``."""
        return self.upserted / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"ingested {self.upserted} of {self.rows} rows; {len(self.bad)} bad rows "
            f"in {self.seconds:.1f} s ({self.rate:.1f} products/s)"
        ]
        if self.error:
            lines.insert(
                0, f"ingestion stopped: {self.error}; re-run to resume (upserts by id are idempotent)"
            )
        for b in self.bad[:50]:
            lines.append(f"  line {b.line:>6}  {b.id or '-':<16} {b.reason}")
        if len(self.bad) > 50:
            lines.append(f"  ... and {len(self.bad) - 50} more")
        return "\n".join(lines)


CatalogRow = tuple[int, Product | BadRow]

STREAMS = 3
"""Upsert streams in flight at once: while the gateway embeds one batch, the next is already on its way
and a third waits in Triton's queues, so the image encoder never idles between batches."""


RETRIES = 3
"""Times a batch is sent again after an answer that says the stack was too busy, not that the batch is
bad (upserts by id are idempotent): on a machine shared with other work, a batch can wait in Triton's
queue past the gateway's deadline."""
RETRYABLE = frozenset(
    {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
)
RETRY_BACKOFF_S = 1.0


def _batches(items: Iterable[CatalogRow], size: int) -> Iterator[list[CatalogRow]]:
    batch: list[CatalogRow] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Batch:
    """One upsert stream's worth of rows: the messages to send, the catalog line of each, and the rows
    refused before sending (no image on disk)."""

    rows: int
    messages: list[pb.UpsertProductsRequest] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {m.product.id for m in self.messages}


def _read_batch(rows: list[CatalogRow], root: Path) -> _Batch:
    out = _Batch(len(rows))
    for line, row in rows:
        if isinstance(row, BadRow):
            out.bad.append(row)
            continue
        path = resolve_image(row, root)
        if path is None:
            out.bad.append(BadRow(line, row.id, f"missing image (no local path: {row.image_uri!r})"))
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            out.bad.append(BadRow(line, row.id, f"missing image {row.image_uri!r}: {exc.strerror}"))
            continue
        out.messages.append(pb.UpsertProductsRequest(product=product_to_pb(row), image_bytes=data))
        out.lines.append(line)
    return out


def _may_send(summary: IngestSummary, in_flight: Counter[str], ids: set[str]) -> bool:
    """A batch goes once no earlier batch in flight holds one of its ids (or ingestion has stopped)."""
    return bool(summary.error) or not any(in_flight[i] for i in ids)


def count_rows(catalog: Path) -> int:
    with catalog.open(encoding="utf-8") as fh:
        total = sum(1 for line in fh if line.strip())
    return max(total - 1, 0) if catalog.suffix.lower() == ".csv" else total


def ingest(
    conn: Connection,
    catalog: str | Path,
    batch: int = 32,
    progress: bool = True,
    timeout: float = 600.0,
    streams: int = STREAMS,
    rows: Iterable[CatalogRow] | None = None,
    on_batch: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Upsert every row by id (re-running is harmless); bad rows are collected, never fatal.

    Batches of ``batch`` rows go as separate upsert streams, up to ``streams`` in flight, while the next
    batch's images are read. A batch holding an id that an earlier batch still in flight holds waits for
    it, so of several rows with one id the last one is stored, as with one stream at a time. ``rows``:
    the catalog's rows as they become ready (default: read from ``catalog``; image paths resolve against
    its directory either way). ``on_batch`` is called with the summary after each batch settles."""
    from tqdm import tqdm

    catalog = Path(catalog)
    summary = IngestSummary()
    lock = threading.Condition()
    in_flight: Counter[str] = Counter()
    slots = threading.Semaphore(streams + 1)  # the senders' batches and one read ahead
    t0 = time.monotonic()

    def settle(done: _Batch, resp: pb.UpsertProductsResponse | None, error: str) -> None:
        with lock:
            summary.rows += done.rows
            summary.bad.extend(done.bad)
            if resp is not None:
                summary.upserted += resp.upserted
                summary.bad.extend(
                    BadRow(done.lines[e.index], e.id, f"{e.code}: {e.message}") for e in resp.errors
                )
            summary.error = summary.error or error
            in_flight.subtract(done.ids)
            summary.seconds = time.monotonic() - t0
            bar.update(done.rows)
            if on_batch is not None:
                on_batch(summary)
            lock.notify_all()

    def send(done: _Batch) -> None:
        try:
            if summary.error:
                with lock:
                    in_flight.subtract(done.ids)
                    lock.notify_all()
                return
            for attempt in range(RETRIES + 1):
                try:
                    resp = stub.UpsertProducts(iter(done.messages), timeout=timeout, metadata=conn.metadata())
                except grpc.RpcError as exc:
                    if exc.code() in RETRYABLE and attempt < RETRIES and not summary.error:
                        time.sleep(RETRY_BACKOFF_S * 2**attempt)
                        continue
                    settle(done, None, f"{exc.code().name}: {exc.details()}")
                else:
                    settle(done, resp, "")
                return
        finally:
            slots.release()

    with (
        conn.channel() as channel,
        tqdm(total=count_rows(catalog), desc="ingest", unit="product", disable=not progress) as bar,
        ThreadPoolExecutor(max(1, streams), thread_name_prefix="ingest") as pool,
    ):
        stub = pb_grpc.ProductSearchStub(channel)
        for chunk in _batches(iter_catalog(catalog) if rows is None else rows, batch):
            if summary.error:
                break
            done = _read_batch(chunk, catalog.parent)
            if not done.messages:
                settle(done, None, "")
                continue
            slots.acquire()
            with lock:
                lock.wait_for(partial(_may_send, summary, in_flight, done.ids))
                in_flight.update(done.ids)
            pool.submit(send, done)
        pool.shutdown(wait=True)
    summary.bad.sort(key=lambda b: b.line)
    summary.seconds = time.monotonic() - t0
    return summary


def parse_filter(spec: str) -> pb.Filter:
    """``field=v1,v2`` for values, ``price=10..50`` (either bound may be empty) for a range."""
    if "=" not in spec:
        raise ValueError(f"filter {spec!r}: expected field=value[,value] or field=min..max")
    name, value = spec.split("=", 1)
    if ".." in value:
        lo, hi = value.split("..", 1)
        f = pb.Filter(field=name.strip())
        if lo.strip():
            f.min = float(lo)
        if hi.strip():
            f.max = float(hi)
        return f
    return pb.Filter(field=name.strip(), any_of=[v.strip() for v in value.split(",") if v.strip()])


def search_request(
    text: str = "",
    image: str = "",
    top_k: int = 10,
    rerank: bool = False,
    depth: int = 0,
    filters: Sequence[str] = (),
    text_match: str = "",
    image_weight: float | None = None,
) -> pb.SearchRequest:
    req = pb.SearchRequest(
        text=text,
        image=Path(image).read_bytes() if image else b"",
        top_k=top_k,
        rerank=rerank,
        rerank_depth=depth,
        filters=[parse_filter(f) for f in filters],
    )
    if text_match:
        req.text_match = pb.TextMatch.Value(f"TEXT_MATCH_{text_match.upper()}")  # type: ignore[assignment]
    if image_weight is not None:
        req.image_weight = image_weight
    return req


def render_results(resp: pb.SearchResponse, title: str = "") -> str:
    rows = [f"{title}" if title else ""]
    rows.append(
        f"{'#':>2}  {'id':<10} {'title':<52} {'category':<26} {'price':>8} {'score':>7} {'rerank':>7}"
    )
    for i, h in enumerate(resp.hits, start=1):
        p = h.product
        rerank = f"{h.rerank_score:7.3f}" if h.HasField("rerank_score") else f"{'-':>7}"
        category = " > ".join(p.category[-2:])
        rows.append(
            f"{i:>2}  {p.id:<10} {p.title[:52]:<52} {category[:26]:<26} {p.price:>8.2f} "
            f"{h.retrieval_score:>7.4f} {rerank}"
        )
    timings = "  ".join(f"{t.stage} {t.ms:.1f} ms" for t in resp.timings)
    rows.append(
        f"timings: {timings}" + ("  (query truncated to the model's context)" if resp.text_truncated else "")
    )
    return "\n".join(r for r in rows if r != "" or False)


EVAL_MODES = ("fusion", "lexical", "minilm", "lexical_minilm", "all")
"""The text modes ``vitrine eval`` reports by default: CLIP fusion (the mode before lexical and MiniLM
existed), each new signal alone, and their fusions."""


def _search_ids(
    stub: pb_grpc.ProductSearchStub,
    conn: Connection,
    q: LabelledQuery,
    match: str,
    k: int,
    depth: int,
    timeout: float,
) -> pb.SearchResponse:
    req = search_request(q.text, q.image, top_k=k, rerank=depth > 0, depth=depth, text_match=match)
    return stub.Search(req, timeout=timeout, metadata=conn.metadata())


def reranker_label(stub: pb_grpc.ProductSearchStub, conn: Connection, timeout: float) -> str:
    """The served cross-encoder's weights as the gateway states them (``GetServing``), for the table."""
    get = getattr(stub, "GetServing", None)
    if get is None or not hasattr(pb, "GetServingRequest"):
        return "served cross-encoder"
    try:
        info = get(pb.GetServingRequest(), timeout=timeout, metadata=conn.metadata())
    except grpc.RpcError:
        return "served cross-encoder"
    weights = str(getattr(info, "reranker_weights", "") or "unknown")
    trained = "trained" if weights in ("pretrained", "trained here") else "UNTRAINED head"
    return f"cross-encoder v{getattr(info, 'reranker_version', '?')}, {weights} ({trained})"


def evaluate(
    conn: Connection,
    queries_path: str | Path,
    k: int = 10,
    depth: int = 50,
    text_matches: Sequence[str] = EVAL_MODES,
    timeout: float = 120.0,
    split: str = "test",
    rerank: bool = True,
) -> str:
    """One row per (text match, re-rank off/on), every query of ``split`` sent to the live gateway; NDCG
    with its bootstrap interval over queries."""
    queries = [q for q in read_queries(queries_path) if in_split(q.text, split)]
    rows: list[Row] = []
    with conn.channel() as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        label = reranker_label(stub, conn, timeout) if rerank else ""
        for match in text_matches:
            for depth_now in (0, depth) if rerank else (0,):
                per_query = []
                for q in queries:
                    resp = _search_ids(stub, conn, q, match, k, depth_now, timeout)
                    per_query.append(score_query([h.product.id for h in resp.hits], q.relevant, k))
                name = match + (f" + rerank@{depth}" if depth_now else "")
                rows.append(Row(name, per_query))
    title = f"{Path(queries_path).name} ({split if split == 'all' else split + ' split'})"
    table = format_interval_table(title, rows, k)
    return table + (f"\nre-ranker: {label}" if label else "")


def tune_weights(
    conn: Connection, queries_path: str | Path, k: int = 10, rrf_k: int = 60, timeout: float = 120.0
) -> str:
    """The fused modes' best weights on the validation split (``operations.tuning``)."""
    from gateway.types import Candidate, TextMatch
    from operations.tuning import PLACEHOLDER, SINGLE, render, tune

    queries = [q for q in read_queries(queries_path) if in_split(q.text, VALIDATION)]
    lists = []
    with conn.channel() as channel:
        stub = pb_grpc.ProductSearchStub(channel)
        for q in queries:
            per: dict[TextMatch, list[Candidate]] = {}
            for match in SINGLE:
                resp = _search_ids(stub, conn, q, match.value, k, 0, timeout)
                per[match] = [Candidate(h.product.id, h.retrieval_score, PLACEHOLDER) for h in resp.hits]
            lists.append(per)
    return render(tune(queries, lists, rrf_k, k), len(queries))
