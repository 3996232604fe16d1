"""The CLI's defaults point at what ``vitrine up`` serves, and every command reads the same ones."""

from __future__ import annotations

import argparse

from gateway import config as gateway_config
from index_service import config as index_config
from operations import defaults
from operations.cli import build_parser


def _subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_stack_and_the_services_agree_on_where_each_listens() -> None:
    gateway = gateway_config.GatewayConfig()
    assert f"{gateway.host}:{gateway_config.DEFAULT_PORT}" == defaults.GATEWAY
    assert defaults.INDEX == gateway.index_address == f"{defaults.HOST}:{index_config.DEFAULT_PORT}"
    assert gateway.triton_url == defaults.TRITON


def test_every_command_defaults_to_the_same_endpoints() -> None:
    parser = build_parser()
    search = _subcommand(parser, "search").parse_args(["lamp"])
    deploy_recommender = _subcommand(parser, "recommend", "deploy").parse_args([])
    deploy_encoder = _subcommand(parser, "adapt", "deploy").parse_args(["--catalog", "c.jsonl"])
    assert search.gateway == defaults.GATEWAY
    for args in (deploy_recommender, deploy_encoder):
        assert (args.triton, args.index, args.collection) == (defaults.TRITON, defaults.INDEX, "products")
    assert deploy_encoder.index_kind == defaults.INDEX_KIND == "flat"
    assert deploy_encoder.serving_file == str(defaults.SERVING_FILE)
