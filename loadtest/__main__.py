"""``python -m loadtest run|step|objective|openloop|openloop-objective|compare``: load on the gateway or
Triton, judged by an objective; every report states the load generator's own CPU use.

Exit status: 0 the objective was met (step, objective: at some rate), 1 it was missed, 2 the run could
not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import Any

from loadtest import openloop, server_metrics, triton_metrics
from loadtest.config import (
    ENV_PREFIX,
    CompareConfig,
    LoadTarget,
    ObjectiveConfig,
    OpenLoopConfig,
    OpenLoopObjectiveConfig,
    RunConfig,
    StepConfig,
)
from loadtest.data import QueryData
from loadtest.objective import Objective, RunStats, Verdict
from loadtest.runner import RunError, RunResult, describe, hardware, run_once, weights_of
from loadtest.scenarios import mix_for
from loadtest.step import StepPlan, search, users_for
from vitrine import logs
from vitrine.config import add_arguments, from_namespace
from vitrine.measure import describe_hardware
from vitrine.tables import markdown_table


def _plain(config: Any) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(config).items()}


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
                "cpu": result.cpu,
                "server": result.server,
            }
        )
        print(f"        {result.cpu['line']}", flush=True)
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


def _cpu_cells(cpu: dict[str, Any]) -> list[str]:
    """Generator CPU share (flagged above its limit), machine busy share, 1-min load before -> after."""
    if not cpu:
        return ["n/a", "n/a", "n/a"]
    flag = " (!)" if cpu["flagged"] else ""
    return [
        f"{100 * cpu['generator_share']:.0f}%{flag}",
        f"{100 * cpu['machine_share']:.0f}%",
        f"{cpu['load_before'][0]:.2f} -> {cpu['load_after'][0]:.2f}",
    ]


CPU_HEADERS = ["generator CPU", "machine busy", "load 1m"]
RESULT_HEADERS = ["achieved", "p50 ms", "p95 ms", "p99 ms", "errors", "verdict", *CPU_HEADERS,
                  "gateway stage means, ms"]  # fmt: skip


def _result_cells(
    verdict: dict[str, Any], stages: dict[str, dict[str, float]], cpu: dict[str, Any] | None = None
) -> list[str]:
    """One run's figures as table cells under ``RESULT_HEADERS``, from ``Verdict.to_json()`` (what the step
    records keep)."""
    s = verdict["stats"]
    return [
        f"{s['rps']:.1f}",
        f"{s['p50_ms']:g}",
        f"{s['p95_ms']:g}",
        f"{s['p99_ms']:g}",
        f"{100 * s['error_rate']:.2f}%",
        "pass" if verdict["passed"] else "miss",
        *_cpu_cells(cpu or {}),
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
    step_rows = [
        [f"{r['rate']:g}", *_result_cells(r["verdict"], r["stages"], r.get("cpu"))] for r in text["steps"]
    ]
    rerank_rows = [
        [str(depth), f"{rate:g}", *_result_cells(result.verdict.to_json(), result.stages, result.cpu)]
        for depth, rate, result in reranks
    ]
    lines = [
        f"Hardware: {hardware()}; weights: {weights_of(config)}; objective p95 < {config.p95_ms:g} ms and "
        f"errors <= {100 * config.max_error_rate:g}%; {config.duration_s:g} s per step, "
        f"{config.rerank_duration_s:g} s per re-rank run. Generator: Locust"
        + (f" --processes {config.processes}" if config.processes else " (one process)")
        + f", its CPU in every row ((!) above {100 * config.max_generator_share:g}% of the machine).",
        "",
        f"Text search without re-ranking, highest paced rate meeting the objective: {headline}",
        "",
        *markdown_table(["text search, offered req/s", *RESULT_HEADERS], step_rows),
        "",
        *markdown_table(["re-rank depth", "offered req/s", *RESULT_HEADERS], rerank_rows),
    ]
    inside = [(f"text search at {r['rate']:g} req/s", r["triton"]) for r in text["steps"] if r["triton"]]
    inside += [(f"re-rank {d} at {r:g} req/s", res.triton) for d, r, res in reranks if res.triton]
    lines += _inside_triton(inside)
    report = "\n".join(lines) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "objective.md").write_text(report)
    rerank_json = [
        {
            "depth": d,
            "rate": r,
            "verdict": res.verdict.to_json(),
            "stages": res.stages,
            "triton": res.triton,
            "cpu": res.cpu,
            "server": res.server,
        }
        for d, r, res in reranks
    ]
    (root / "objective.json").write_text(
        json.dumps({"text_step": text, "rerank": rerank_json, "config": _plain(config)}, indent=2)
    )
    print(report)
    return 0 if best is not None else 1


def _inside_triton(runs: list[tuple[str, dict[str, dict[str, float]]]]) -> list[str]:
    """Triton's per-model counters over each run, as report lines (none when no run has them)."""
    if not runs:
        return []
    rows = [
        [run_name, model, f"{m['requests']:.0f}", f"{m['batch']:.2f}", f"{m['queue_ms']:.1f}",
         f"{m['compute_ms']:.1f}", f"{m['request_ms']:.1f}",
         f"{100 * m['cache_hit_rate']:.0f}%" if "cache_hit_rate" in m else "-"]
        for run_name, models in runs
        for model, m in models.items()
    ]  # fmt: skip
    headers = ["run", "model", "requests", "mean batch", "queue ms", "compute ms", "total ms",
               "response-cache hits"]  # fmt: skip
    title = "Inside Triton (its counters over each run; ms per request):"
    return ["", title, "", *markdown_table(headers, rows)]


def _query_data(catalog: str, size: int, seed: int) -> QueryData:
    if catalog and not Path(catalog).is_file():
        raise ValueError(f"catalog {catalog} not found: start the stack (`make up`) or pass --catalog")
    return QueryData.from_catalog(catalog, seed=seed) if catalog else QueryData.generated(size, seed)


def _open_loop_once(
    config: OpenLoopConfig, data: QueryData, rate: float, triton_url: str = ""
) -> dict[str, Any]:
    """One open-loop run at ``rate``, with the gateway's server-side view of it when its metrics are given
    (and Triton's per-model counters with ``triton_url``)."""
    before = server_metrics.snapshot(config.gateway_metrics) if config.gateway_metrics else None
    triton_before = triton_metrics.snapshot(triton_url) if triton_url else None
    result = asyncio.run(
        openloop.run(
            config.gateway,
            data,
            mix_for(LoadTarget.GATEWAY, config.mix),
            rate,
            config.duration_s,
            arrival=config.arrival.value,
            timeout_s=config.timeout_s,
            top_k=config.top_k,
            seed=config.seed,
            max_generator_share=config.max_generator_share,
            channels=config.channels,
        )
    )
    objective_ = Objective(p95_ms=config.p95_ms, max_error_rate=config.max_error_rate)
    record = result.to_json(objective_)
    if before is not None:
        record["server"] = server_metrics.quantiles(before, server_metrics.snapshot(config.gateway_metrics))
    if triton_before is not None:
        record["triton"] = triton_metrics.per_model(triton_before, triton_metrics.snapshot(triton_url))
    return record


def _open_loop_line(record: dict[str, Any]) -> str:
    server = record.get("server", {}).get("method:Search")
    seen = f"; gateway-side Search p95 {server['p95_ms']:.1f} ms" if server else ""
    lag = record["send_lag_ms"]
    cpu = record["cpu"]["line"]
    return f"{record['verdict']['line']}{seen}\n        send lag p99 {lag['p99']:.1f} ms; {cpu}"


def open_loop(config: OpenLoopConfig) -> int:
    data = _query_data(config.catalog, config.catalog_size, config.seed)
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    weights = weights_of(config)
    if not config.step:
        record = _open_loop_once(config, data, config.rate)
        record.update(config=_plain(config), hardware=hardware(), weights=weights)
        (root / "summary.json").write_text(json.dumps(record, indent=2))
        print(_open_loop_line(record))
        return 0 if record["verdict"]["passed"] else 1
    summary = _open_loop_steps(config, data) | {"hardware": hardware(), "weights": weights}
    (root / "step_summary.json").write_text(json.dumps(summary, indent=2))
    report = _open_loop_report(config, summary)
    (root / "openloop.md").write_text(report)
    print(report)
    if summary["best_rate"] is None:
        print(f"no rate met the objective; the lowest tried, {config.rate:g} req/s, missed.")
        return 1
    print(f"highest rate meeting the objective: {summary['best_rate']:g} req/s (open loop). report: {root}")
    return 0


def _open_loop_steps(config: OpenLoopConfig, data: QueryData, triton_url: str = "") -> dict[str, Any]:
    """The step search with the open-loop generator: rates raised until the objective breaks, then
    bisected; every step's record kept."""
    records: list[dict[str, Any]] = []

    def measure(rate: float) -> Verdict:
        # Fresh queries each step (its own seed): a step never replays the previous one's requests, which
        # a response cache would otherwise answer from what the last step stored.
        step_config = replace(config, seed=config.seed + len(records))
        record = _open_loop_once(step_config, data, rate, triton_url)
        record["seed"] = step_config.seed
        records.append(record)
        print(f"step {len(records)}: {rate:g} req/s -> {_open_loop_line(record)}", flush=True)
        return _verdict_of(record)

    plan = StepPlan(config.rate, config.factor, config.max_rate, config.max_steps, config.refine)
    outcome = search(plan, measure)
    return {
        "best_rate": outcome.best_rate,
        "first_miss": outcome.first_miss,
        "steps": records,
        "config": _plain(config),
    }


def open_loop_objective(config: OpenLoopObjectiveConfig) -> int:
    """The objective measured with Poisson arrivals: the text-search edge, then re-rank 10 and 50 at
    fixed offered rates; the same tables as ``objective`` without Locust's clumped sends."""
    data = _query_data(config.catalog, config.catalog_size, config.seed)
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    if config.warmup_s > 0:
        # First calls pay for lazy initialisation (sessions, caches, connections) that no run should carry.
        for scenario in ("text", "text_rerank10", "text_rerank50"):
            # Its own seed: warm-up traffic must not be the measured requests (a response cache would
            # then answer them all).
            warm = replace(config, mix=f"{scenario}=1", duration_s=config.warmup_s, seed=config.seed + 10_000)
            record = _open_loop_once(warm, data, 2.0)
            print(f"warm-up {scenario}: {record['verdict']['stats']['requests']} requests", flush=True)
    text_config = replace(config, mix="text=1")
    text = _open_loop_steps(text_config, data, config.triton_metrics)
    reranks: list[tuple[int, float, dict[str, Any]]] = []
    for depth in (10, 50):
        for rate in config.rerank_rates:
            run_config = replace(
                config,
                mix=f"text_rerank{depth}=1",
                duration_s=config.rerank_duration_s,
                seed=config.seed + 1_000 + len(reranks),  # fresh queries per run, as in the step search
            )
            record = _open_loop_once(run_config, data, rate, config.triton_metrics)
            print(f"re-rank {depth} at {rate:g} req/s -> {_open_loop_line(record)}", flush=True)
            reranks.append((depth, rate, record))
    best = text["best_rate"]
    lines = [
        _open_loop_report(text_config, text | {"weights": weights_of(config)}).rstrip("\n"),
        "",
        f"Re-ranked text search at fixed offered rates ({config.rerank_duration_s:g} s each, same "
        "generator):",
        "",
        *markdown_table(
            ["re-rank depth", *OPEN_LOOP_HEADERS],
            ([str(depth), *_open_loop_cells(r)] for depth, _rate, r in reranks),
        ),
    ]
    inside = [
        (f"text search at {r['offered_rate']:.1f} req/s", r["triton"])
        for r in text["steps"]
        if r.get("triton")
    ]
    inside += [(f"re-rank {d} at {r:g} req/s", rec["triton"]) for d, r, rec in reranks if rec.get("triton")]
    lines += _inside_triton(inside)
    report = "\n".join(lines) + "\n"
    (root / "objective.md").write_text(report)
    rerank_json = [{"depth": d, "rate": r, **rec} for d, r, rec in reranks]
    (root / "objective.json").write_text(
        json.dumps(
            {"text_step": text, "rerank": rerank_json, "config": _plain(config), "hardware": hardware()},
            indent=2,
        )
    )
    print(report)
    return 0 if best is not None else 1


def _open_loop_report(config: OpenLoopConfig, summary: dict[str, Any]) -> str:
    """The step search as a table: the client's view, the gateway's own, and what the generator cost."""
    best = summary["best_rate"]
    lines = [
        f"Hardware: {describe_hardware()}; weights: {summary['weights']}; mix {config.mix}; open loop, "
        f"{config.arrival.value} arrivals, latency from each scheduled send; {config.duration_s:g} s per "
        "step; "
        f"objective p95 < {config.p95_ms:g} ms, errors <= {100 * config.max_error_rate:g}%.",
        "",
        f"Highest offered rate meeting the objective: **{best:g} req/s**" if best is not None else
        f"No rate met the objective (first step {config.rate:g} req/s).",
        "",
        *markdown_table(OPEN_LOOP_HEADERS, (_open_loop_cells(r) for r in summary["steps"])),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


OPEN_LOOP_HEADERS = (
    "offered req/s", "achieved", "p50 ms", "p95 ms", "p99 ms", "errors", "verdict",
    "gateway-side p95 ms", "send lag p99 ms", *CPU_HEADERS, "gateway stage means, ms",
)  # fmt: skip


def _open_loop_cells(r: dict[str, Any]) -> list[str]:
    """One open-loop run as table cells under ``OPEN_LOOP_HEADERS``: the client's view, the gateway's own,
    what the generator cost."""
    s = r["verdict"]["stats"]
    server = r.get("server", {}).get("method:Search")
    return [f"{r['offered_rate']:.1f}", f"{s['rps']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}",
            f"{s['p99_ms']:.1f}", f"{100 * s['error_rate']:.2f}%",
            "pass" if r["verdict"]["passed"] else "miss",
            f"{server['p95_ms']:.1f}" if server else "n/a", f"{r['send_lag_ms']['p99']:.1f}",
            *_cpu_cells(r["cpu"]), _stage_means(r["stages"])]  # fmt: skip


def _verdict_of(record: dict[str, Any]) -> Verdict:
    """A verdict back from its JSON form (only ``passed`` is read by the step search)."""
    v = record["verdict"]
    return Verdict(v["passed"], RunStats(**{k: v["stats"][k] for k in RunStats.__dataclass_fields__}),
                   Objective(**v["objective"]), v["target_rate"], tuple(v["reasons"]))  # fmt: skip


def compare(config: CompareConfig) -> int:
    """Locust (paced users) and the open-loop generator on the same steps, side by side in one table."""
    mix_for(LoadTarget.GATEWAY, config.mix)
    data = _query_data(config.catalog, config.catalog_size, config.seed)
    root = Path(config.out)
    rows: list[dict[str, Any]] = []
    light = OpenLoopConfig(
        gateway=config.gateway, duration_s=config.duration_s, arrival=config.arrival, mix=config.mix,
        p95_ms=config.p95_ms, max_error_rate=config.max_error_rate, seed=config.seed,
        timeout_s=config.timeout_s, top_k=config.top_k, gateway_metrics=config.gateway_metrics,
        max_generator_share=config.max_generator_share,
    )  # fmt: skip
    for rate in config.rates:
        users = users_for(rate, config.interval_s)
        locust = run_once(config, root / f"locust-{rate:g}", users, users, target_rate=rate)
        print(f"locust   {rate:g} req/s -> {locust.verdict.line()}\n        {locust.cpu['line']}", flush=True)
        light_record = _open_loop_once(light, data, rate)
        print(f"openloop {rate:g} req/s -> {_open_loop_line(light_record)}", flush=True)
        rows.append(
            {
                "rate": rate,
                "users": users,
                "locust": {
                    "verdict": locust.verdict.to_json(),
                    "cpu": locust.cpu,
                    "server": locust.server,
                    "stages": locust.stages,
                },
                "openloop": light_record,
            }
        )
    report = _compare_report(config, rows)
    root.mkdir(parents=True, exist_ok=True)
    (root / "compare.md").write_text(report)
    (root / "compare.json").write_text(
        json.dumps({"rows": rows, "config": _plain(config), "hardware": hardware()}, indent=2)
    )
    print(report)
    return 0


def _compare_report(config: CompareConfig, rows: list[dict[str, Any]]) -> str:
    processes = f" --processes {config.processes}" if config.processes else " (one process)"
    lines = [
        f"Hardware: {describe_hardware()}; weights: {weights_of(config)}; mix {config.mix}; "
        f"{config.duration_s:g} s per run; Locust{processes}, users paced at one request per "
        f"{config.interval_s:g} s; open loop: {config.arrival.value} arrivals, latency from the scheduled "
        "send time. Gateway-side p95 from the gateway's own histograms over the same run "
        "(interpolated inside a bucket).",
        "",
    ]
    cells = []
    for row in rows:
        for name in ("locust", "openloop"):
            r = row[name]
            s = r["verdict"]["stats"]
            search_ = r.get("server", {}).get("method:Search")
            cells.append(
                [f"{row['rate']:g}", name, f"{s['rps']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}",
                 f"{s['p99_ms']:.1f}", f"{100 * s['error_rate']:.2f}%",
                 f"{search_['p95_ms']:.1f}" if search_ else "n/a", *_cpu_cells(r["cpu"])]
            )  # fmt: skip
    headers = ["offered req/s", "generator", "achieved", "p50 ms", "p95 ms", "p99 ms", "errors",
               "gateway-side p95 ms", *CPU_HEADERS]  # fmt: skip
    lines += markdown_table(headers, cells)
    return "\n".join(lines) + "\n"


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
    add_arguments(
        commands.add_parser(
            "openloop", help="light asyncio generator: fixed arrival rate, latency from schedule"
        ),
        OpenLoopConfig,
        ENV_PREFIX,
    )
    add_arguments(
        commands.add_parser(
            "openloop-objective",
            help="the objective with the open-loop generator: text-search edge, re-rank 10/50 at fixed rates",
        ),
        OpenLoopObjectiveConfig,
        ENV_PREFIX,
    )
    add_arguments(
        commands.add_parser(
            "compare", help="Locust and the open-loop generator side by side on the same steps"
        ),
        CompareConfig,
        ENV_PREFIX,
    )
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        if args.command == "run":
            return run(from_namespace(RunConfig, args))
        if args.command == "step":
            return step(from_namespace(StepConfig, args))
        if args.command == "openloop":
            return open_loop(from_namespace(OpenLoopConfig, args))
        if args.command == "openloop-objective":
            return open_loop_objective(from_namespace(OpenLoopObjectiveConfig, args))
        if args.command == "compare":
            return compare(from_namespace(CompareConfig, args))
        return objective(from_namespace(ObjectiveConfig, args))
    except (RunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
