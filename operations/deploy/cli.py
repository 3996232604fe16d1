"""``vitrine deploy``: render the Kubernetes deployment from the typed configs, and check it offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from operations.deploy.config import ENV_PREFIX, DeployConfig
from vitrine import config as vconfig


def cmd_render(args: argparse.Namespace) -> int:
    from operations.deploy import write

    for path in write(Path(args.out), vconfig.from_namespace(DeployConfig, args)):
        print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from operations.deploy import load
    from operations.deploy.checks import check_documents, default_programs

    documents = load(Path(args.dir))
    if not documents:
        print(f"no *.yaml in {args.dir}")
        return 2
    problems = check_documents(documents, default_programs())
    for p in problems:
        print(p)
    n = sum(len(d) for d in documents.values())
    print(f"{n} documents in {len(documents)} files: {len(problems) or 'no'} problems (offline checks only)")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="the Kubernetes deployment: render, check offline").add_subparsers(
        dest="deploy_command", required=True
    )
    render = deploy.add_parser(
        "render", help="write manifests and Milvus chart values from the typed configs"
    )
    render.add_argument("--out", required=True, help="directory to write (files are replaced)")
    vconfig.add_arguments(render, DeployConfig, ENV_PREFIX)
    render.set_defaults(func=cmd_render)
    check = deploy.add_parser(
        "check", help="check rendered manifests offline (models, arguments, environment); no cluster"
    )
    check.add_argument("dir", help="directory of rendered manifests")
    check.set_defaults(func=cmd_check)
