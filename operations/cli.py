"""``vitrine``: catalog generation, ingestion, search, evaluation, the main job (up/down), Triton alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from operations import defaults
from vitrine import config as vconfig
from vitrine import logs

if TYPE_CHECKING:
    from operations.client import Connection


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway",
        default=defaults.GATEWAY,
        help="gateway address, or several comma-separated (calls spread round robin), or a gRPC target "
        "such as dns:///name:port (default: %(default)s)",
    )
    parser.add_argument("--api-key", default="", help="bearer token when the gateway requires one")
    parser.add_argument("--tls-ca", default="", help="CA certificate (PEM) when the gateway serves TLS")


def _connection(args: argparse.Namespace) -> Connection:
    from operations.client import Connection

    return Connection(args.gateway, args.api_key, args.tls_ca)


def cmd_generate(args: argparse.Namespace) -> int:
    from demo.catalog import write_generated

    path = write_generated(
        args.out, args.n, seed=args.seed, n_queries=args.queries, image_size=args.image_size
    )
    print(f"wrote {args.n} products to {path} and labelled queries to {Path(path).parent / 'queries.jsonl'}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from operations.client import ingest

    summary = ingest(
        _connection(args), args.catalog, batch=args.batch, progress=not args.quiet, streams=args.streams
    )
    print(summary.render())
    return 1 if summary.error or (summary.rows and not summary.upserted) else 0


def cmd_search(args: argparse.Namespace) -> int:
    import grpc

    from operations.client import render_results, search_request
    from vitrine.gateway.v1 import gateway_pb2_grpc

    if not args.text and not args.image:
        print("give a text query, --image PATH, or both", file=sys.stderr)
        return 2
    conn = _connection(args)
    request = search_request(
        args.text,
        args.image,
        top_k=args.top_k,
        rerank=args.rerank,
        depth=args.depth,
        filters=args.filter,
        text_match=args.text_match,
        image_weight=args.image_weight,
    )
    with conn.channel() as channel:
        try:
            resp = gateway_pb2_grpc.ProductSearchStub(channel).Search(
                request, timeout=args.timeout, metadata=conn.metadata()
            )
        except grpc.RpcError as exc:
            print(f"search failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(render_results(resp))
    return 0


TEXT_MATCHES = ("image", "title", "fusion", "lexical", "minilm", "lexical_minilm", "all")
"""``gateway.types.TextMatch``'s names (the CLI does not import the gateway to parse its flags)."""


def cmd_eval(args: argparse.Namespace) -> int:
    from operations.client import evaluate, tune_weights

    conn = _connection(args)
    if args.tune:
        print(tune_weights(conn, args.queries, k=args.k))
        return 0
    print(
        evaluate(
            conn,
            args.queries,
            k=args.k,
            depth=args.depth,
            text_matches=args.text_match,
            split=args.split,
            rerank=not args.no_rerank,
        )
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from operations.stack import StackConfig, up

    return up(vconfig.from_namespace(StackConfig, args))


def cmd_down(args: argparse.Namespace) -> int:
    from operations.stack import down

    return down(args.var)


def cmd_triton(args: argparse.Namespace) -> int:
    """The embedded tritonserver in the foreground until SIGINT/SIGTERM, through the one launcher."""
    import signal
    import threading

    from model_repository.server import Endpoints, TritonStartError
    from operations.servers import TritonServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    repo = Path(args.repo)
    server = TritonServer(
        repo,
        Endpoints(args.grpc_port, args.http_port, args.metrics_port, host=args.host),
        workdir=Path(args.workdir) if args.workdir else repo.resolve().parent / "triton",
        log_file=Path(args.log_file) if args.log_file else None,
        verbose=args.verbose,
    )
    try:
        server.start(timeout_s=args.ready_timeout)
    except TritonStartError as exc:
        print(f"tritonserver failed to start: {exc}", file=sys.stderr)
        return 1
    e = server.endpoints
    print(f"triton ready: grpc {e.grpc_url}  http {e.http_url}  metrics {e.metrics_url}", flush=True)
    try:
        while not stop.wait(1.0):
            if not server.running:
                print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.close()
    return 0


def cmd_events_generate(args: argparse.Namespace) -> int:
    from operations.recommend import generate_events

    n = generate_events(Path(args.catalog), Path(args.out), args.users, seed=args.seed)
    print(f"wrote {n} events of {args.users} shoppers to {args.out}")
    return 0


def cmd_events_load(args: argparse.Namespace) -> int:
    from operations.recommend import load_events

    recorded, errors = load_events(_connection(args), Path(args.events))
    print(f"recorded {recorded} events; {len(errors)} refused or already recorded")
    for e in errors[:10]:
        print(f"  #{e.index} {e.event_id}: {e.code} {e.message}")
    return 0


def cmd_recommend_train(args: argparse.Namespace) -> int:
    from operations.recommend import train

    manifest = train(
        Path(args.events),
        Path(args.catalog),
        args.index,
        args.collection,
        Path(args.out),
        args.tiny,
        args.seed,
    )
    print(json.dumps({k: manifest[k] for k in ("version", "data", "metrics", "seconds")}, indent=2))
    return 0


def cmd_recommend_eval(args: argparse.Namespace) -> int:
    from operations.recommend import evaluate

    print(evaluate(Path(args.events), Path(args.catalog), args.index, args.collection, Path(args.artifacts)))
    return 0


def cmd_recommend_deploy(args: argparse.Namespace) -> int:
    from operations.recommend import deploy

    version = deploy(Path(args.artifacts), Path(args.repo), args.triton, args.index, args.collection)
    print(f"recommender version {version} deployed")
    return 0


def cmd_recommend_show(args: argparse.Namespace) -> int:
    from operations.recommend import render_recommendations

    print(render_recommendations(_connection(args), args.user, args.top_k))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from operations.client import STREAMS
    from operations.stack import ENV_PREFIX, StackConfig

    parser = argparse.ArgumentParser(prog="vitrine", description=__doc__)
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)

    catalog = sub.add_parser("catalog", help="catalog tools").add_subparsers(
        dest="catalog_command", required=True
    )
    gen = catalog.add_parser("generate", help="write a seeded synthetic catalog with product JPEGs")
    gen.add_argument("--n", type=int, default=2000, help="products")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--queries", type=int, default=50, help="labelled queries to write")
    gen.add_argument("--image-size", type=int, default=640, help="image side in pixels")
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="load a catalog (JSONL or CSV) through the gateway; upsert by id")
    ing.add_argument("catalog", help="catalog file")
    ing.add_argument("--batch", type=int, default=32, help="products per upsert stream")
    ing.add_argument(
        "--streams", type=int, default=STREAMS, help="upsert streams in flight at once (default: %(default)s)"
    )
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    _connection_args(ing)
    ing.set_defaults(func=cmd_ingest)

    se = sub.add_parser("search", help="print a results table for a text and/or image query")
    se.add_argument("text", nargs="?", default="")
    se.add_argument("--image", default="", help="query image file")
    se.add_argument("--image-weight", type=float, default=None, help="hybrid: weight of the image in [0, 1]")
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument("--rerank", action="store_true", help="re-rank with the cross-encoder")
    se.add_argument("--depth", type=int, default=0, help="candidates re-ranked (default 50)")
    se.add_argument(
        "--filter", action="append", default=[], help="field=v1,v2 or price=min..max (repeatable)"
    )
    se.add_argument("--text-match", default="", choices=["", *TEXT_MATCHES])
    se.add_argument("--timeout", type=float, default=60.0)
    _connection_args(se)
    se.set_defaults(func=cmd_search)

    ev = sub.add_parser("eval", help="Recall@K, MRR, NDCG@K, P@K with and without re-ranking")
    ev.add_argument("queries", help="labelled query file (JSONL; see vitrine.catalog.read_queries)")
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument("--depth", type=int, default=50, help="re-rank depth")
    ev.add_argument(
        "--text-match",
        nargs="+",
        default=["fusion", "lexical", "minilm", "lexical_minilm", "all"],
        choices=TEXT_MATCHES,
    )
    ev.add_argument(
        "--split",
        default="test",
        choices=["test", "validation", "all"],
        help="which queries: the held-out test half (default), the validation half weights are tuned on, "
        "or all (a file no tuning read); the split is fixed by each query's words",
    )
    ev.add_argument("--no-rerank", action="store_true", help="skip the re-ranked rows")
    ev.add_argument(
        "--tune",
        action="store_true",
        help="instead: the fused modes' best weights on the validation split (reads no test query)",
    )
    _connection_args(ev)
    ev.set_defaults(func=cmd_eval)

    upp = sub.add_parser(
        "up",
        help="export, start Triton replicas + index + gateways (+ PostgreSQL), supervised; ingest a demo "
        "catalog, serve",
    )
    vconfig.add_arguments(upp, StackConfig, ENV_PREFIX)
    upp.set_defaults(func=cmd_up)

    tr = sub.add_parser(
        "triton", help="run the embedded tritonserver over a rendered repository (foreground)"
    )
    tr.add_argument(
        "--repo", required=True, help="rendered model repository (python -m model_repository render)"
    )
    tr.add_argument(
        "--host",
        default=defaults.HOST,
        help="address to bind (Triton has no authentication: open it with care)",
    )
    tr.add_argument("--grpc-port", type=int, default=defaults.TRITON_GRPC_PORT)
    tr.add_argument("--http-port", type=int, default=defaults.TRITON_HTTP_PORT)
    tr.add_argument("--metrics-port", type=int, default=defaults.TRITON_METRICS_PORT)
    tr.add_argument("--workdir", default="", help="backend links and default log (default: beside the repo)")
    tr.add_argument("--log-file", default="", help="tritonserver log (default: WORKDIR/tritonserver.log)")
    tr.add_argument("--ready-timeout", type=float, default=120.0)
    tr.add_argument("--verbose", action="store_true", help="tritonserver verbose logging")
    tr.set_defaults(func=cmd_triton)

    events = sub.add_parser("events", help="shopper events: demo history, loading logs").add_subparsers(
        dest="events_command", required=True
    )
    eg = events.add_parser("generate", help="seeded demo behaviour over a catalog (JSONL import format)")
    eg.add_argument("--catalog", default=str(defaults.CATALOG))
    eg.add_argument("--out", default=str(defaults.EVENTS))
    eg.add_argument("--users", type=int, default=1000)
    eg.add_argument("--seed", type=int, default=0)
    eg.set_defaults(func=cmd_events_generate)
    el = events.add_parser("load", help="record a JSONL event log (vitrine/events.py) through the gateway")
    el.add_argument(
        "events", help="JSONL file: event_id, user_id, session_id, item_id, type, ts, device, query"
    )
    _connection_args(el)
    el.set_defaults(func=cmd_events_load)

    rec = sub.add_parser("recommend", help="the recommender: train, eval, deploy, show").add_subparsers(
        dest="recommend_command", required=True
    )
    for name, helptext in (
        ("train", "train the two-tower model; ONNX towers validated against PyTorch, manifest"),
        ("eval", "HitRate/NDCG/MRR/coverage/diversity/novelty vs popularity, co-visitation, content"),
    ):
        rp = rec.add_parser(name, help=helptext)
        rp.add_argument("--events", default=str(defaults.EVENTS), help="JSONL or the events store")
        rp.add_argument("--catalog", default=str(defaults.CATALOG), help="which products exist")
        rp.add_argument("--index", default=defaults.INDEX, help="index service (content vectors)")
        rp.add_argument("--collection", default=defaults.COLLECTION)
        if name == "train":
            rp.add_argument("--out", default=str(defaults.RECOMMENDER))
            rp.add_argument("--tiny", action="store_true", help="seconds-long run (tests, tiny demos)")
            rp.add_argument("--seed", type=int, default=0)
            rp.set_defaults(func=cmd_recommend_train)
        else:
            rp.add_argument("--artifacts", default=str(defaults.RECOMMENDER))
            rp.set_defaults(func=cmd_recommend_eval)
    rd = rec.add_parser("deploy", help="deploy a trained recommender as the next version, while serving")
    rd.add_argument("--artifacts", default=str(defaults.RECOMMENDER))
    rd.add_argument("--repo", default=str(defaults.MODEL_REPOSITORY), help="the running Triton's repository")
    rd.add_argument("--triton", default=defaults.TRITON)
    rd.add_argument("--index", default=defaults.INDEX)
    rd.add_argument("--collection", default=defaults.COLLECTION)
    rd.set_defaults(func=cmd_recommend_deploy)
    rs = rec.add_parser("show", help="print a shopper's recommendations")
    rs.add_argument("--user", default="u00000")
    rs.add_argument("--top-k", type=int, default=10)
    _connection_args(rs)
    rs.set_defaults(func=cmd_recommend_show)

    dn = sub.add_parser("down", help="stop a running `vitrine up`")
    dn.add_argument("--var", default=str(defaults.VAR))
    dn.set_defaults(func=cmd_down)

    from operations import adapt_cli
    from operations.deploy import cli as deploy_cli

    adapt_cli.add_parser(sub)
    deploy_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
