"""``python -m loadtest.observability dashboard|prometheus-config|check``.

``dashboard`` rewrites the committed Grafana JSON from its definition; ``prometheus-config`` prints a
scrape configuration for given metrics endpoints; ``check`` evaluates every dashboard query against a
running Prometheus and exits non-zero when one returns no data (GPU panels excepted on CPU hosts).
"""

from __future__ import annotations

import argparse
import sys

from loadtest.observability import DASHBOARD_FILE, dashboard, render_prometheus_config
from loadtest.observability.prometheus import PrometheusError, check_dashboard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.observability", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dashboard", help=f"write {DASHBOARD_FILE.name} from its definition")
    config = commands.add_parser("prometheus-config", help="print a scrape configuration")
    config.add_argument("--triton", default="127.0.0.1:8002", help="Triton metrics host:port")
    config.add_argument("--gateway", default="127.0.0.1:9101", help="gateway metrics host:port")
    config.add_argument("--index", default="127.0.0.1:9102", help="index service metrics host:port")
    config.add_argument("--scrape-interval", default="5s")
    check = commands.add_parser("check", help="evaluate every dashboard query against a Prometheus")
    check.add_argument("--prometheus", default="http://127.0.0.1:9090")
    check.add_argument("--rate-interval", default="1m")
    check.add_argument(
        "--gpu", action="store_true", help="the stack runs on a GPU host: GPU panels must fill"
    )
    args = parser.parse_args(argv)

    if args.command == "dashboard":
        DASHBOARD_FILE.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_FILE.write_text(dashboard.render())
        print(DASHBOARD_FILE)
        return 0
    if args.command == "prometheus-config":
        sys.stdout.write(
            render_prometheus_config(args.triton, args.gateway, args.index, args.scrape_interval)
        )
        return 0
    try:
        results = check_dashboard(args.prometheus, args.rate_interval)
    except PrometheusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = 0
    for r in results:
        expect = (not r.query.requires) or (r.query.requires == "gpu" and args.gpu)
        state = "data" if r.has_data else "empty"
        flag = "" if r.has_data or not expect else "  <- MISSING"
        note = f" (needs {r.query.requires})" if r.query.requires else ""
        print(f"{state:<6} {r.finite:>3}/{r.series:<3} {r.query.panel} [{r.query.ref_id}]{note}{flag}")
        missing += bool(flag)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
