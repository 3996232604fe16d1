"""``vitrine adapt``: train and evaluate adapters, export one as an encoder version, deploy, roll back."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from operations import defaults
from vitrine import config as vconfig

ENV_PREFIX = "VITRINE_ADAPT"
STATE_URL_ENV = "VITRINE_GATEWAY_STATE_URL"
"""The gateways' own variable: a deploy run beside them finds their database without a flag."""


def cmd_train(args: argparse.Namespace) -> int:
    from adapt.run import AdaptConfig, train_all

    manifest = train_all(vconfig.from_namespace(AdaptConfig, args))
    summary = {
        name: {run: entry.get("val") for run, entry in d["runs"].items() if "val" in entry}
        for name, d in manifest["datasets"].items()
    }
    print(json.dumps({"validation": summary, "seconds": manifest["seconds"]}, indent=2))
    return 0


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from adapt.run import AdaptConfig, train_reranker

    report = train_reranker(vconfig.from_namespace(AdaptConfig, args))
    print(json.dumps({k: report[k] for k in ("queries", "pairs", "losses", "seconds")}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from adapt.run import AdaptConfig, evaluate_all

    cfg = vconfig.from_namespace(AdaptConfig, args)
    evaluate_all(cfg)
    print((cfg.out / "report.md").read_text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from adapt.run import AdaptConfig, load_heads, trained_reranker
    from adapt.serving import export_version

    heads = Path(args.adapt) / args.data / "residual.pt"
    pair, spec = load_heads(heads)
    cross_encoder = trained_reranker(AdaptConfig(artifacts=Path(args.artifacts), out=Path(args.adapt)))
    manifest = export_version(
        pair,
        Path(args.artifacts),
        str(args.version),
        {"heads": str(heads), "spec": spec.to_dict()},
        cross_encoder=cross_encoder,
    )
    print(json.dumps(manifest, indent=2))
    print(
        f"render the model repository again (python -m model_repository render --artifacts {args.artifacts}"
        " ...) so Triton serves it, then `vitrine adapt deploy`"
    )
    return 0


def _target(args: argparse.Namespace) -> object:
    from operations.rollout import RolloutTarget

    return RolloutTarget(
        args.triton, args.index, args.collection, Path(args.serving_file), args.index_kind, args.state_url
    )


def _followers(args: argparse.Namespace) -> str:
    """Who follows the pointer, for the closing message (never the DSN: it may carry a password)."""
    if args.state_url:
        from gateway.pg_serving import describe

        return f"gateways following {describe(args.state_url)}"
    return f"gateways following {args.serving_file}"


def cmd_deploy(args: argparse.Namespace) -> int:
    from operations.rollout import RolloutError, deploy

    try:
        report = asyncio.run(
            deploy(
                _target(args),  # type: ignore[arg-type]
                args.version,
                Path(args.catalog),
                args.batch,
                artifacts=Path(args.artifacts) if args.artifacts else None,
                repo=Path(args.repo) if args.repo else None,
                settle_s=args.settle_s,
            )
        )
    except RolloutError as exc:
        print(f"deploy refused: {exc}")
        return 1
    print(json.dumps(report, indent=2))
    print(
        f"{_followers(args)} now serve encoder version {args.version} "
        f"and cross-encoder version {report['reranker_version']}"
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from operations.rollout import RolloutError, rollback

    try:
        encoder, reranker = rollback(Path(args.serving_file), args.state_url)
    except RolloutError as exc:
        print(f"rollback refused: {exc}")
        return 1
    print(f"{_followers(args)} now serve encoder version {encoder} and cross-encoder version {reranker}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from adapt.run import AdaptConfig

    adapt = sub.add_parser("adapt", help="domain adaptation: train, eval, export, deploy, rollback")
    cmds = adapt.add_subparsers(dest="adapt_command", required=True)
    for name, func, text in (
        ("train", cmd_train, "train naive heads and residual adapters (ratio chosen on validation)"),
        (
            "train-reranker",
            cmd_train_reranker,
            "train the cross-encoder again over the saved catalog adapter",
        ),
        ("eval", cmd_eval, "test-split tables with bootstrap intervals (writes OUT/report.md)"),
    ):
        p = cmds.add_parser(name, help=text)
        vconfig.add_arguments(p, AdaptConfig, ENV_PREFIX)
        p.set_defaults(func=func)

    ex = cmds.add_parser("export", help="fuse the trained adapter into the towers as encoder VERSION")
    ex.add_argument("--artifacts", default=str(AdaptConfig.artifacts))
    ex.add_argument(
        "--adapt", default=str(AdaptConfig.out), help="where `vitrine adapt train` wrote the heads"
    )
    ex.add_argument("--data", default="catalog", help="which data set's adapter to serve")
    ex.add_argument("--version", type=int, default=2)
    ex.set_defaults(func=cmd_export)

    for name, func, text in (
        ("deploy", cmd_deploy, "re-embed the catalog with VERSION in new spaces, then switch gateways"),
        ("rollback", cmd_rollback, "serve the previous encoder version again"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument(
            "--serving-file", default=str(defaults.SERVING_FILE), help="the gateways' --serving-file"
        )
        p.add_argument(
            "--state-url",
            default=os.environ.get(STATE_URL_ENV, ""),
            help=f"the gateways' --state-url (PostgreSQL), replacing --serving-file (env {STATE_URL_ENV})",
        )
        if name == "deploy":
            p.add_argument("--catalog", required=True, help="the catalog that was ingested (JSONL or CSV)")
            p.add_argument("--version", type=int, default=2)
            p.add_argument("--triton", default=defaults.TRITON, help="Triton gRPC endpoint")
            p.add_argument("--index", default=defaults.INDEX, help="index service address")
            p.add_argument("--collection", default=defaults.COLLECTION)
            p.add_argument("--index-kind", default=defaults.INDEX_KIND)
            p.add_argument("--batch", type=int, default=16, help="products embedded per batch")
            p.add_argument(
                "--settle-s", type=float, default=3.0,
                help="seconds gateways get to see the pending version before the re-index (> their "
                "--health-interval-s): what they ingest from then on gets its vectors too",
            )  # fmt: skip
            p.add_argument("--artifacts", default="", help="with --repo: render the live repository first")
            p.add_argument("--repo", default="", help="the model repository the running Triton serves")
        p.set_defaults(func=func)
