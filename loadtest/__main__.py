"""``python -m loadtest run|step|objective``: headless load on the gateway or Triton, judged by an objective.

Exit status: 0 the objective was met (step, objective: at some rate), 1 it was missed, 2 the run could
not be made.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from loadtest.config import ENV_PREFIX, LoadTarget, ObjectiveConfig, RunConfig, StepConfig
from loadtest.objective import Verdict
from loadtest.runner import RunError, RunResult, describe, hardware, run_once, weights_of
from loadtest.step import StepPlan, search, users_for
from vitrine import logs
from vitrine.config import add_arguments, from_namespace


def _plain(config: RunConfig) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, LoadTarget) else v) for k, v in asdict(config).items()}


def run(config: RunConfig) -> int:
    result = run_once(config, Path(config.out), config.users, config.spawn_rate, target_rate=config.rate)
    print(describe(result))
    return 0 if result.verdict.passed else 1


def _step(config: StepConfig) -> dict[str, Any]:
    plan = StepPlan(config.start_rate, config.factor, config.max_rate, config.max_steps, config.refine)
    root = Path(config.out)
    records: list[dict[str, Any]] = []

    def measure(rate: float) -> Verdict:
        users = users_for(rate, config.interval_s)
        result = run_once(config, root / f"rate-{rate:g}", users, spawn_rate=users, target_rate=rate)
        print(
            f"step {len(records) + 1}: {rate:g} req/s, {users} users -> {result.verdict.line()}", flush=True
        )
        records.append(
            {
                "rate": rate,
                "users": users,
                "verdict": result.verdict.to_json(),
                "stages": result.stages,
                "triton": result.triton,
            }
        )
        return result.verdict

    outcome = search(plan, measure)
    summary = {
        "best_rate": outcome.best_rate,
        "first_miss": outcome.first_miss,
        "steps": records,
        "config": _plain(config),
        "hardware": hardware(),
        "weights": weights_of(config),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "step_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def step(config: StepConfig) -> int:
    outcome = _step(config)
    if outcome["best_rate"] is None:
        print(f"no rate met the objective; the lowest tried, {config.start_rate:g} req/s, missed.")
        return 1
    limit = "" if outcome["first_miss"] is not None else " (every step up to the plan's limit passed)"
    print(f"highest rate meeting the objective: {outcome['best_rate']:g} req/s{limit}. report: {config.out}")
    return 0


def _stage_means(stages: dict[str, dict[str, float]]) -> str:
    """'embed_text 9.1, retrieve 1.2, ...' (mean ms), slowest first: what dominates, at a glance."""
    ranked = sorted(((k, v) for k, v in stages.items() if k != "total"), key=lambda kv: -kv[1]["mean_ms"])
    return ", ".join(f"{name} {s['mean_ms']:.1f}" for name, s in ranked) or "n/a"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _result_cells(verdict: dict[str, Any], stages: dict[str, dict[str, float]]) -> list[str]:
    """One run's figures as table cells, from ``Verdict.to_json()`` (what the step records keep)."""
    s = verdict["stats"]
    return [
        f"{s['rps']:.1f}",
        f"{s['p50_ms']:g}",
        f"{s['p95_ms']:g}",
        f"{s['p99_ms']:g}",
        f"{100 * s['error_rate']:.2f}%",
        "pass" if verdict["passed"] else "miss",
        _stage_means(stages),
    ]


def objective(config: ObjectiveConfig) -> int:
    """The measurement docs/BENCHMARKS.md reports: max text-search rate, then re-rank at fixed rates."""
    root = Path(config.out)
    if config.warmup_s > 0:
        # First calls pay for lazy initialisation (sessions, caches, connections) that no step should carry.
        warm = replace(config, mix="", duration_s=config.warmup_s, max_error_rate=1.0, p95_ms=1e9)
        print(run_once(warm, root / "warmup", 4, 4).verdict.line().replace("PASS", "warm-up"), flush=True)
    text = _step(replace(config, mix="text=1", out=str(root / "text-step")))
    reranks: list[tuple[int, float, RunResult]] = []
    for depth in (10, 50):
        for rate in config.rerank_rates:
            run_config = replace(config, mix=f"text_rerank{depth}=1", duration_s=config.rerank_duration_s)
            users = users_for(rate, config.rerank_interval_s)
            result = run_once(run_config, root / f"rerank{depth}-{rate:g}", users, users, target_rate=rate)
            print(f"re-rank {depth} at {rate:g} req/s -> {result.verdict.line()}", flush=True)
            reranks.append((depth, rate, result))
    best = text["best_rate"]
    headline = f"**{best:g} req/s**" if best is not None else f"none (missed at {config.start_rate:g} req/s)"
    lines = [
        f"Hardware: {hardware()}; weights: {weights_of(config)}; objective p95 < {config.p95_ms:g} ms and "
        f"errors <= {100 * config.max_error_rate:g}%; {config.duration_s:g} s per step, "
        f"{config.rerank_duration_s:g} s per re-rank run.",
        "",
        f"Text search without re-ranking, highest paced rate meeting the objective: {headline}",
        "",
        _row(
            [
                "text search, offered req/s",
                "achieved",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "verdict",
                "gateway stage means, ms",
            ]
        ),
        _row(["---"] * 8),
    ]
    for record in text["steps"]:
        lines.append(_row([f"{record['rate']:g}", *_result_cells(record["verdict"], record["stages"])]))
    lines += [
        "",
        _row(
            [
                "re-rank depth",
                "offered req/s",
                "achieved",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "verdict",
                "gateway stage means, ms",
            ]
        ),
        _row(["---"] * 9),
    ]
    for depth, rate, result in reranks:
        cells = _result_cells(result.verdict.to_json(), result.stages)
        lines.append(_row([str(depth), f"{rate:g}", *cells]))
    inside = [(f"text search at {r['rate']:g} req/s", r["triton"]) for r in text["steps"] if r["triton"]]
    inside += [(f"re-rank {d} at {r:g} req/s", res.triton) for d, r, res in reranks if res.triton]
    if inside:
        lines += [
            "",
            "Inside Triton (its counters over each run; ms per request):",
            "",
            _row(["run", "model", "requests", "mean batch", "queue ms", "compute ms", "total ms"]),
            _row(["---"] * 7),
        ]
        for run_name, models in inside:
            for model, m in models.items():
                lines.append(
                    _row([run_name, model, f"{m['requests']:.0f}", f"{m['batch']:.2f}",
                          f"{m['queue_ms']:.1f}", f"{m['compute_ms']:.1f}", f"{m['request_ms']:.1f}"])
                )  # fmt: skip
    report = "\n".join(lines) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "objective.md").write_text(report)
    rerank_json = [
        {"depth": d, "rate": r, "verdict": res.verdict.to_json(), "stages": res.stages, "triton": res.triton}
        for d, r, res in reranks
    ]
    (root / "objective.json").write_text(
        json.dumps({"text_step": text, "rerank": rerank_json, "config": _plain(config)}, indent=2)
    )
    print(report)
    return 0 if best is not None else 1


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
    add_arguments(
        commands.add_parser("objective", help="max text-search rate, then re-rank 10/50 at fixed rates"),
        ObjectiveConfig,
        ENV_PREFIX,
    )
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        if args.command == "run":
            return run(from_namespace(RunConfig, args))
        if args.command == "step":
            return step(from_namespace(StepConfig, args))
        return objective(from_namespace(ObjectiveConfig, args))
    except (RunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
