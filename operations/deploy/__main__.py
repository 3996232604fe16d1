"""``python -m operations.deploy render --out DIR`` / ``check DIR``: the same as ``vitrine deploy``."""

from __future__ import annotations

import argparse
import sys

from operations.deploy.cli import add_parser
from vitrine import logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.deploy", description=__doc__)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(sys.argv[1:] if argv is None else argv)])
    logs.setup("warning")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
