"""Runs Locust headless in a child process and judges what it wrote.

A child process keeps Locust's gevent monkey-patching out of the caller and bounds every run with a hard
timeout; the verdict is read back from the CSV that ships in the report.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest import server_metrics, triton_metrics
from loadtest.accounting import CpuMeter, load_average
from loadtest.config import LoadTarget, OpenLoopConfig, RunConfig
from loadtest.objective import AGGREGATED, Objective, RunStats, Verdict, judge, read_stats, stage_summary
from loadtest.scenarios import mix_for
from vitrine.measure import hardware

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CSV_PREFIX = "locust"
GRACE_S = 120.0
"""Allowed beyond the run time for start-up, data loading and the stop timeout before the run is killed."""


def _die_with_parent() -> None:
    """Linux: the kernel kills Locust if this process dies, so a killed run never leaves users running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RunError(RuntimeError):
    """Locust did not produce a report (crashed, or could not start its users)."""


@dataclass(frozen=True)
class RunResult:
    verdict: Verdict
    scenarios: dict[str, RunStats]
    stages: dict[str, dict[str, float]]
    triton: dict[str, dict[str, float]]
    out: Path
    users: int
    target_rate: float
    cpu: dict[str, object] = field(default_factory=dict)
    """The generator's and the machine's CPU over the measured window (``CpuUse.to_json``), load averages."""
    server: dict[str, dict[str, float]] = field(default_factory=dict)
    """The gateway's own latency quantiles per method over the run, from its Prometheus histograms."""


def weights_of(config: RunConfig | OpenLoopConfig) -> str:
    """What the figures were measured with: random weights make latency figures, not quality figures."""
    if config.weights or not config.artifacts:
        return config.weights or "unrecorded"
    manifest = json.loads((Path(config.artifacts) / "manifest.json").read_text())
    models = manifest.get("models", {})
    named = ", ".join(f"{name} {entry.get('weights', '?')}" for name, entry in sorted(models.items()))
    return f"{named} ({manifest.get('size', '?')} size)"


def objective_of(config: RunConfig) -> Objective:
    return Objective(p95_ms=config.p95_ms, max_error_rate=config.max_error_rate)


def locust_command(
    config: RunConfig, out: Path, users: int, spawn_rate: float, user_rate: float
) -> list[str]:
    user_class, host = (
        ("GatewayUser", config.gateway)
        if config.target == LoadTarget.GATEWAY
        else ("TritonUser", config.triton)
    )
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        user_class,
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{max(1, round(config.duration_s))}s",
        "--stop-timeout",
        f"{max(1, round(config.timeout_s))}",
        "--reset-stats",
        "--only-summary",
        "--csv",
        str(out / CSV_PREFIX),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--loglevel",
        "WARNING",
        "--vitrine-mix",
        config.mix,
        "--vitrine-user-rate",
        f"{user_rate:g}",
        "--vitrine-catalog",
        config.catalog,
        "--vitrine-catalog-size",
        str(config.catalog_size),
        "--vitrine-seed",
        str(config.seed),
        "--vitrine-top-k",
        str(config.top_k),
        "--vitrine-timeout-s",
        f"{config.timeout_s:g}",
        "--vitrine-stages-out",
        str(out / "stages.json"),
        *(["--processes", str(config.processes)] if config.processes else []),
    ]


def run_once(
    config: RunConfig, out: Path, users: int, spawn_rate: float, target_rate: float = 0.0
) -> RunResult:
    """One headless run; ``target_rate`` > 0 paces users so the offered rate is that many requests/s."""
    mix_for(config.target, config.mix)  # a typo in the mix fails here, before Locust starts
    if config.catalog and not Path(config.catalog).is_file():
        raise ValueError(f"catalog {config.catalog} not found: start the stack (`make up`) or pass --catalog")
    out.mkdir(parents=True, exist_ok=True)
    user_rate = target_rate / users if target_rate > 0 else 0.0
    command = locust_command(config, out, users, spawn_rate, user_rate)
    before = triton_metrics.snapshot(config.triton_metrics) if config.triton_metrics else {}
    server_before = server_metrics.snapshot(config.gateway_metrics) if config.gateway_metrics else None
    load_before = load_average()
    started = time.monotonic()
    # Locust and its workers are this process's only children while it runs: the meter follows them.
    meter = CpuMeter(children_only=True, max_share=config.max_generator_share).start()
    with (out / "locust.log").open("w") as log:
        try:
            done = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=config.duration_s + GRACE_S,
                check=False,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise RunError(
                f"locust did not stop within {config.duration_s + GRACE_S:.0f} s; see {out}"
            ) from exc
        finally:
            meter.stop()
    returncode = done.returncode
    cpu_use = meter.window(config.duration_s)
    cpu = {**cpu_use.to_json(), "load_before": load_before, "load_after": load_average()}
    triton = (
        triton_metrics.per_model(before, triton_metrics.snapshot(config.triton_metrics))
        if config.triton_metrics
        else {}
    )
    server = (
        server_metrics.quantiles(server_before, server_metrics.snapshot(config.gateway_metrics))
        if server_before is not None
        else {}
    )
    stats_csv = out / f"{CSV_PREFIX}_stats.csv"
    # Locust exits 1 when any request failed; that is judged below, not an error of the run itself.
    if returncode not in (0, 1) or not stats_csv.is_file():
        tail = (out / "locust.log").read_text(errors="replace")[-2000:]
        raise RunError(f"locust exited with {returncode} and no report:\n{tail}")
    scenarios = read_stats(stats_csv)
    stages = _merge_stages(out / "stages.json")
    verdict = judge(scenarios[AGGREGATED], objective_of(config), target_rate)
    result = RunResult(verdict, scenarios, stages, triton, out, users, target_rate, cpu, server)
    summary = {
        "verdict": verdict.to_json(),
        "scenarios": {name: {**asdict(s), "error_rate": s.error_rate} for name, s in scenarios.items()},
        "stages": stages,
        "triton": triton,
        "generator": "locust" + (f" --processes {config.processes}" if config.processes else ""),
        "cpu": cpu,
        "server": server,
        "users": users,
        "target_rate": target_rate,
        "wall_s": round(time.monotonic() - started, 1),
        "config": {k: (v.value if isinstance(v, LoadTarget) else v) for k, v in asdict(config).items()},
        "hardware": hardware(),
        "weights": weights_of(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _merge_stages(path: Path) -> dict[str, dict[str, float]]:
    """Every Locust process's raw stage timings (``<path>.<pid>.raw``) as one summary, written to ``path``."""
    merged: dict[str, list[float]] = {}
    for raw in sorted(path.parent.glob(f"{path.name}.*.raw")):
        for stage, values in json.loads(raw.read_text()).items():
            merged.setdefault(stage, []).extend(values)
        raw.unlink()
    summary = stage_summary(merged)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def describe(result: RunResult) -> str:
    """The verdict, then per scenario and per stage: what a person needs to see which part is slow."""
    lines = [
        result.verdict.line(),
        "",
        f"{'scenario':<16}{'requests':>9}{'fail':>6}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}  (ms)",
    ]
    for name, s in sorted(result.scenarios.items(), key=lambda kv: kv[0] == AGGREGATED):
        lines.append(
            f"{name:<16}{s.requests:>9}{s.failures:>6}{s.rps:>8.1f}{s.p50_ms:>8g}{s.p95_ms:>8g}{s.p99_ms:>8g}"
        )
    if result.stages:
        lines += [
            "",
            f"{'stage':<16}{'count':>9}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}  (ms, gateway-side)",
        ]
        for stage, t in result.stages.items():
            lines.append(
                f"{stage:<16}{int(t['count']):>9}{t['mean_ms']:>9.1f}{t['p50_ms']:>9.1f}"
                f"{t['p95_ms']:>9.1f}{t['p99_ms']:>9.1f}"
            )
    if result.triton:
        lines += [
            "",
            f"{'triton model':<22}{'requests':>9}{'batch':>7}{'queue':>8}{'compute':>9}{'total':>8}"
            "  (ms per request)",
        ]
        for model, m in result.triton.items():
            lines.append(
                f"{model:<22}{int(m['requests']):>9}{m['batch']:>7.2f}{m['queue_ms']:>8.1f}"
                f"{m['compute_ms']:>9.1f}{m['request_ms']:>8.1f}"
            )
    if result.server:
        lines += ["", f"{'gateway series':<22}{'count':>9}{'p50':>8}{'p95':>8}{'p99':>8}  (ms, server-side)"]
        for method, q in result.server.items():
            lines.append(
                f"{method:<22}{int(q['count']):>9}{q['p50_ms']:>8.1f}{q['p95_ms']:>8.1f}{q['p99_ms']:>8.1f}"
            )
    if result.cpu:
        lines += ["", str(result.cpu["line"])]
    lines += ["", f"report: {result.out}"]
    return "\n".join(lines)
