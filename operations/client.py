"""Client-side tools over the public API: catalog ingestion, a results table, and evaluation.

They speak only the gateway's proto, so they work against any deployment (local or remote, API key and
TLS optional). Ingestion reads images on the client and sends bytes, so the gateway needs no access to
the client's disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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

    def render(self) -> str:
        lines = [f"ingested {self.upserted} of {self.rows} rows; {len(self.bad)} bad rows"]
        if self.error:
            lines.insert(
                0, f"ingestion stopped: {self.error}; re-run to resume (upserts by id are idempotent)"
            )
        for b in self.bad[:50]:
            lines.append(f"  line {b.line:>6}  {b.id or '-':<16} {b.reason}")
        if len(self.bad) > 50:
            lines.append(f"  ... and {len(self.bad) - 50} more")
        return "\n".join(lines)


def _batches(
    items: Iterator[tuple[int, Product | BadRow]], size: int
) -> Iterator[list[tuple[int, Product | BadRow]]]:
    batch: list[tuple[int, Product | BadRow]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest(
    conn: Connection, catalog: str | Path, batch: int = 64, progress: bool = True, timeout: float = 600.0
) -> IngestSummary:
    """Upsert every row by id (re-running is harmless); bad rows are collected, never fatal."""
    from tqdm import tqdm

    catalog = Path(catalog)
    with catalog.open(encoding="utf-8") as fh:
        total = sum(1 for line in fh if line.strip())
    if catalog.suffix.lower() == ".csv":
        total = max(total - 1, 0)
    summary = IngestSummary()
    with (
        conn.channel() as channel,
        tqdm(total=total, desc="ingest", unit="product", disable=not progress) as bar,
    ):
        stub = pb_grpc.ProductSearchStub(channel)
        for rows in _batches(iter_catalog(catalog), batch):
            messages: list[pb.UpsertProductsRequest] = []
            lines: list[int] = []
            for line, row in rows:
                summary.rows += 1
                if isinstance(row, BadRow):
                    summary.bad.append(row)
                    continue
                path = resolve_image(row, catalog.parent)
                if path is None:
                    summary.bad.append(
                        BadRow(line, row.id, f"missing image (no local path: {row.image_uri!r})")
                    )
                    continue
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    summary.bad.append(
                        BadRow(line, row.id, f"missing image {row.image_uri!r}: {exc.strerror}")
                    )
                    continue
                messages.append(pb.UpsertProductsRequest(product=product_to_pb(row), image_bytes=data))
                lines.append(line)
            if messages:
                try:
                    resp = stub.UpsertProducts(iter(messages), timeout=timeout, metadata=conn.metadata())
                except grpc.RpcError as exc:
                    summary.error = f"{exc.code().name}: {exc.details()}"
                    break
                summary.upserted += resp.upserted
                for err in resp.errors:
                    summary.bad.append(BadRow(lines[err.index], err.id, f"{err.code}: {err.message}"))
            bar.update(len(rows))
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
