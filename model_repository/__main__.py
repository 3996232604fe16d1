"""``python -m model_repository render|serve``: write a repository, or run the embedded server."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from model_repository.render import Precision, RenderError, RenderOptions, render_repository
from model_repository.server import EmbeddedTriton, Endpoints, TritonStartError
from vitrine import logs
from vitrine.contracts import Target


def _render(args: argparse.Namespace) -> int:
    options = RenderOptions(
        target=Target(args.target),
        precision=Precision(args.precision),
        dynamic_batching=args.dynamic_batching,
    )
    try:
        out = render_repository(Path(args.artifacts), Path(args.out), options)
    except RenderError as exc:
        print(f"render failed: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = EmbeddedTriton(
        Path(args.repo),
        Endpoints(args.grpc_port, args.http_port, args.metrics_port, host="127.0.0.1"),
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
            if server.process is None or server.process.poll() is not None:
                print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_repository", description=__doc__)
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="write a Triton model repository from export artifacts")
    render.add_argument("--artifacts", required=True, help="export output directory (has manifest.json)")
    render.add_argument("--out", required=True, help="repository directory to write")
    render.add_argument("--target", choices=[t.value for t in Target], default=Target.CPU.value)
    render.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.FP32.value)
    render.add_argument(
        "--dynamic-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="render batchers (off: one execution per request, the benchmark's baseline)",
    )
    render.set_defaults(func=_render)

    serve = sub.add_parser("serve", help="run the embedded tritonserver in the foreground")
    serve.add_argument("--repo", required=True)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-file", default=None, help="tritonserver log (default: a temporary file)")
    serve.add_argument("--ready-timeout", type=float, default=120.0)
    serve.add_argument("--verbose", action="store_true", help="tritonserver verbose logging")
    serve.set_defaults(func=_serve)

    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
