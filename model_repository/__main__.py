"""``python -m model_repository render``: write a Triton model repository from export artifacts.

Running the embedded server over it is the launcher's job: ``vitrine triton --repo R`` (``make triton``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_repository.render import Precision, RenderError, RenderOptions, render_repository
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
