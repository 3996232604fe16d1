"""``python -m loadtest run|step``: headless load against the gateway or Triton, judged by an objective.

Exit status: 0 the objective was met (step: at some rate), 1 it was missed, 2 the run could not be made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from loadtest.config import ENV_PREFIX, LoadTarget, RunConfig, StepConfig
from loadtest.objective import Verdict
from loadtest.runner import RunError, describe, hardware, run_once
from loadtest.step import StepPlan, search, users_for
from vitrine import logs
from vitrine.config import add_arguments, from_namespace

log = logging.getLogger("loadtest")


def run(config: RunConfig) -> int:
    result = run_once(config, Path(config.out), config.users, config.spawn_rate, target_rate=config.rate)
    print(describe(result))
    return 0 if result.verdict.passed else 1


def step(config: StepConfig) -> int:
    plan = StepPlan(config.start_rate, config.factor, config.max_rate, config.max_steps, config.refine)
    root = Path(config.out)
    records: list[dict[str, object]] = []

    def measure(rate: float) -> Verdict:
        users = users_for(rate, config.interval_s)
        result = run_once(config, root / f"rate-{rate:g}", users, spawn_rate=users, target_rate=rate)
        print(
            f"step {len(records) + 1}: {rate:g} req/s, {users} users -> {result.verdict.line()}", flush=True
        )
        records.append(
            {"rate": rate, "users": users, "verdict": result.verdict.to_json(), "stages": result.stages}
        )
        return result.verdict

    outcome = search(plan, measure)
    summary = {
        "best_rate": outcome.best_rate,
        "first_miss": outcome.first_miss,
        "steps": records,
        "config": {k: (v.value if isinstance(v, LoadTarget) else v) for k, v in asdict(config).items()},
        "hardware": hardware(),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "step_summary.json").write_text(json.dumps(summary, indent=2))
    if outcome.best_rate is None:
        print(
            f"no rate met the objective; the lowest tried, {plan.start_rate:g} req/s, missed. report: {root}"
        )
        return 1
    limit = "" if outcome.first_miss is not None else " (every step up to the plan's limit passed)"
    print(f"highest rate meeting the objective: {outcome.best_rate:g} req/s{limit}. report: {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    parser.add_argument("--log-level", default="warning")
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("run", help="fixed load for a fixed time"), RunConfig, ENV_PREFIX)
    add_arguments(
        commands.add_parser("step", help="find the highest paced rate that meets the objective"),
        StepConfig,
        ENV_PREFIX,
    )
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        if args.command == "run":
            return run(from_namespace(RunConfig, args))
        return step(from_namespace(StepConfig, args))
    except (RunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
