"""``python -m benchmarks.triton``: the served ensembles under load, batching on vs off, in one run.

What one run measures, side by side on the same inputs:

1. In-process engines per tower (onnxruntime vs PyTorch eager, fp32 and int8) through ``benchmarks.export``,
   before any server starts, so the two parts do not compete for the cores.
2. The embedded Triton serving ``embed_text``, ``embed_image`` and ``rerank`` (one query + 50 passages)
   at each concurrency: throughput, p50, p95, and the mean batch the encoder executed (from Triton's
   statistics), from repositories rendered from the same spec with dynamic batching as specified, with
   no queue delay anywhere, and without a batcher. All servers are up at once, but only one is
   loaded at a time, in interleaved rounds (see :func:`measure`).

Load is closed-loop: ``c`` workers each send their next request when the previous one returns. Inputs
are seeded: catalog-style queries, 640x640 product JPEGs and title+description passages. Figures name
the hardware and the weights recorded in the artifacts' manifest. Wrap runs in ``flock`` on shared hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tritonclient.grpc.aio as grpcclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from model_repository.render import Layout, Precision, RenderOptions, load_manifest
from operations.stack import Stack
from vitrine import logs
from vitrine import triton as triton_request
from vitrine.contracts import EMBED_IMAGE_IO, EMBED_TEXT_IO, RERANK_IO, Model, Target, Tensor
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table

RERANK_PASSAGES = 50


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    model: Model
    encoder: Model
    requests: Callable[[int], int]  # requests per round of a point, from the concurrency
    items_per_request: int


WORKLOADS = (
    Workload("text", "embed_text", Model.EMBED_TEXT, Model.CLIP_TEXT_ENCODER, lambda c: max(32, 3 * c), 1),
    Workload(
        "image", "embed_image", Model.EMBED_IMAGE, Model.CLIP_IMAGE_ENCODER, lambda c: max(12, c + 8), 1
    ),
    Workload(
        "rerank",
        f"rerank (1 query + {RERANK_PASSAGES} passages)",
        Model.RERANK,
        Model.CROSS_ENCODER,
        lambda c: max(6, c + 8),
        RERANK_PASSAGES,
    ),
)


@dataclass
class Point:
    workload: str
    batching: str
    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    mean_encoder_batch: float


class Inputs:
    """Seeded request payloads shaped like the product's traffic."""

    def __init__(self, seed: int = 0, n: int = 64) -> None:
        from demo.catalog import generate_catalog, generate_queries, render_product_image

        products = list(generate_catalog(max(n, 200), seed=seed))
        self.queries = [q.text for q in generate_queries([p for p, _ in products], n, seed=seed)]
        while len(self.queries) < n:
            self.queries += self.queries
        self.passages = [p.passage() for p, _ in products]
        self.images = []
        for _, args in products[:16]:
            buf = io.BytesIO()
            render_product_image(*args).save(buf, "JPEG", quality=90)
            self.images.append(buf.getvalue())

    def request(self, workload: Workload, i: int) -> list[grpcclient.InferInput]:
        if workload.model is Model.EMBED_TEXT:
            return triton_request.inputs(EMBED_TEXT_IO, {Tensor.TEXT: [self.queries[i % len(self.queries)]]})
        if workload.model is Model.EMBED_IMAGE:
            return triton_request.inputs(EMBED_IMAGE_IO, {Tensor.IMAGE: [self.images[i % len(self.images)]]})
        start = (i * 7) % (len(self.passages) - RERANK_PASSAGES)
        return triton_request.inputs(
            RERANK_IO,
            {
                Tensor.QUERY: [self.queries[i % len(self.queries)]],
                Tensor.PASSAGES: self.passages[start : start + RERANK_PASSAGES],
            },
        )


async def _stats(client: grpcclient.InferenceServerClient, model: Model) -> tuple[int, int]:
    entry = (await client.get_inference_statistics(model.value, as_json=True))["model_stats"][0]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def closed_loop(
    send: Callable[[int], Awaitable[object]], concurrency: int, total: int
) -> tuple[list[float], int, float]:
    """``concurrency`` workers share ``total`` requests; returns latencies (ms), errors, wall seconds."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            try:
                await send(i)
            except InferenceServerException:
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


@dataclass
class Tally:
    latencies: list[float]
    errors: int = 0
    wall_s: float = 0.0
    inferences: int = 0
    executions: int = 0


async def measure(
    urls: dict[str, str],
    inputs: Inputs,
    workloads: list[Workload],
    concurrencies: list[int],
    rounds: int,
    progress: tqdm[Any],
) -> list[Point]:
    """Every (workload, concurrency) point runs on every server in turn, ``rounds`` times, order rotated.

    The servers are all up but only one is loaded at a time (idle onnxruntime sessions do not spin), so
    background load on a shared host lands on every variant alike instead of on whichever ran last.
    """
    points = []
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            label: await stack.enter_async_context(grpcclient.InferenceServerClient(url))
            for label, url in urls.items()
        }
        labels = list(clients)
        for workload in workloads:

            def sender(client: grpcclient.InferenceServerClient, w: Workload = workload) -> Any:
                async def send(i: int) -> object:
                    return await client.infer(w.model.value, inputs.request(w, i), client_timeout=900)

                return send

            for client in clients.values():  # warm-up: sessions, allocations, stub imports
                await closed_loop(sender(client), 2, 4)
            for c in concurrencies:
                tallies = {label: Tally([]) for label in labels}
                per_round = workload.requests(c)
                for r in range(rounds):
                    for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                        client, tally = clients[label], tallies[label]
                        before = await _stats(client, workload.encoder)
                        latencies, errors, wall = await closed_loop(sender(client), c, per_round)
                        after = await _stats(client, workload.encoder)
                        tally.latencies += latencies
                        tally.errors += errors
                        tally.wall_s += wall
                        tally.inferences += after[0] - before[0]
                        tally.executions += after[1] - before[1]
                        progress.update()
                for label, t in tallies.items():
                    ok = bool(t.latencies)
                    points.append(
                        Point(
                            workload=workload.name,
                            batching=label,
                            concurrency=c,
                            requests=per_round * rounds,
                            errors=t.errors,
                            throughput_rps=round(len(t.latencies) / t.wall_s, 2),
                            p50_ms=round(percentile(t.latencies, 0.50), 1) if ok else float("nan"),
                            p95_ms=round(percentile(t.latencies, 0.95), 1) if ok else float("nan"),
                            mean_encoder_batch=round(t.inferences / max(1, t.executions), 1),
                        )
                    )
    return points


VARIANTS = {
    "on": RenderOptions(dynamic_batching=True),
    "on-no-delay": RenderOptions(dynamic_batching=True, queue_delay_us=0),
    "off": RenderOptions(dynamic_batching=False),
}
"""Repositories compared: the spec's batching, the same with no queue delay, and no batcher at all."""


def parse_layout(text: str) -> tuple[Model, Layout]:
    """``cross_encoder=2x1`` (instances x onnxruntime threads), ``...=1x2u``: the same without a batcher,
    ``...=2xa``: threads adapted to the load (every core alone, a share beside a busy sibling)."""
    try:
        name, shape = text.split("=")
        unbatched = shape.endswith("u")
        count, threads = shape.rstrip("u").split("x")
        adaptive = threads == "a"
        layout = Layout(
            int(count), 0 if adaptive else int(threads), batching=not unbatched, adaptive=adaptive
        )
        return Model(name.strip()), layout
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"layout {text!r}: expected MODEL=INSTANCESxTHREADS[u], e.g. cross_encoder=2x1 ({exc})"
        ) from None


def run_triton(
    artifacts: Path,
    work: Path,
    inputs: Inputs,
    workloads: list[Workload],
    concurrencies: list[int],
    variants: dict[str, RenderOptions],
    rounds: int,
    progress: tqdm[Any],
    trace: bool = False,
) -> tuple[list[Point], dict[str, str]]:
    """The points, and with ``trace`` each variant's Triton trace summary (``loadtest.trace``; the
    servers write their traces when they stop)."""
    slug = {label: label.replace(" ", "-").replace("=", "-") for label in variants}
    traces = {label: work / f"trace-{slug[label]}.json" for label in variants}
    with contextlib.ExitStack() as stack:
        urls = {}
        for label, options in variants.items():
            server = Stack(
                work / f"variant-{slug[label]}",
                artifacts,
                render=options,
                triton_trace=traces[label] if trace else None,
            )
            stack.callback(server.stop)
            urls[label] = server.start_triton().grpc_url
        points = asyncio.run(measure(urls, inputs, workloads, concurrencies, rounds, progress))
    summaries = {}
    if trace:
        from loadtest.trace import read_spans, summary, trace_files

        for label, path in traces.items():
            summaries[label] = summary(read_spans(trace_files(path)), slowest=5)
    return points, summaries


def engines_table(artifacts: Path, rounds: int, budget_s: float) -> str:
    """``benchmarks.export``'s in-process table (onnxruntime vs PyTorch eager per tower), captured."""
    from benchmarks import export as export_bench

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        export_bench.main(
            [
                "--artifacts",
                str(artifacts),
                "--batches",
                "1,8",
                "--rounds",
                str(rounds),
                "--budget-s",
                str(budget_s),
            ]
        )
    return out.getvalue().strip()


def triton_table(points: list[Point]) -> str:
    lines = markdown_table(
        ("workload", "concurrency", "batching", "requests", "errors", "req/s", "p50 ms", "p95 ms",
         "mean encoder batch"),
        ((p.workload, p.concurrency, p.batching, p.requests, p.errors, p.throughput_rps, p.p50_ms, p.p95_ms,
          p.mean_encoder_batch) for p in points),
    )  # fmt: skip
    by_key = {(p.workload, p.concurrency, p.batching): p for p in points}
    ratios = []
    for p in points:
        if p.batching == "off" or (p.workload, p.concurrency, "off") not in by_key:
            continue
        off = by_key[(p.workload, p.concurrency, "off")]
        tput = p.throughput_rps / off.throughput_rps if off.throughput_rps else float("nan")
        lat = p.p95_ms / off.p95_ms if off.p95_ms else float("nan")
        ratios.append((p.workload, p.concurrency, p.batching, f"{tput:.2f}x", f"{lat:.2f}x"))
    if ratios:
        lines += [
            "",
            *markdown_table(
                ("workload", "concurrency", "batching", "throughput vs off", "p95 vs off"), ratios
            ),
        ]
    scaling = []
    for p in points:
        low = min(q.concurrency for q in points if (q.workload, q.batching) == (p.workload, p.batching))
        base = by_key[(p.workload, low, p.batching)]
        if p.concurrency == low or not base.throughput_rps or not base.p50_ms:
            continue
        scaling.append((
            p.workload, p.batching, f"{low} -> {p.concurrency}",
            f"{p.throughput_rps / base.throughput_rps:.2f}x", f"{p.p95_ms / base.p50_ms:.2f}x",
        ))  # fmt: skip
    if scaling:
        lines += [
            "",
            *markdown_table(
                ("workload", "variant", "concurrency", "throughput vs lowest", "p95 / p50 at lowest"), scaling
            ),
        ]
    return "\n".join(lines)


def _own_cpu_s() -> float:
    """CPU seconds of this process alone (its client threads), not of the servers it started."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.triton", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument(
        "--work", type=Path, default=None, help="where repositories and logs go (default: temp)"
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per point and variant")
    parser.add_argument(
        "--workloads", default="text,image,rerank", help="subset of text,image,rerank (comma-separated)"
    )
    parser.add_argument(
        "--engine-rounds", type=int, default=10, help="benchmarks.export rounds per (tower, batch)"
    )
    parser.add_argument("--engine-budget-s", type=float, default=8.0)
    parser.add_argument("--skip-engines", action="store_true", help="only the served part")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument(
        "--layouts", type=parse_layout, nargs="*", default=[],
        help="extra variants, each the spec's batching with one model's CPU layout replaced: "
        "MODEL=INSTANCESx(THREADS|a)[u] (u: no batcher, a: adaptive threads), "
        "e.g. cross_encoder=2x1 clip_text_encoder=1x2",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default=Precision.FP32.value, choices=[p.value for p in Precision],
        help="precision of every variant's repository (a model without a servable graph of it stays fp32)",
    )  # fmt: skip
    parser.add_argument(
        "--precisions", default="",
        help="extra variants, each the spec rendered at one precision (comma-separated: int8, optimized); "
        "a model without a servable graph of that precision stays fp32",
    )  # fmt: skip
    parser.add_argument(
        "--trace", action="store_true",
        help="run every server with Triton's request tracing and print where each model's time went",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--target", default=Target.CPU.value, choices=[Target.CPU.value, Target.GPU_EMBEDDED.value],
        help="repository rendering: the CPU default, or gpu-embedded on a GPU host (onnxruntime-gpu)",
    )  # fmt: skip
    ns = parser.parse_args(argv)
    logs.setup()

    manifest = load_manifest(ns.artifacts)
    weights = ", ".join(sorted(f"{m}={e['weights']}" for m, e in manifest["models"].items()))
    header = (
        f"Hardware: {describe_hardware()}. "
        f"Weights: {weights}; size {manifest['size']}. "
        "Triton: embedded tritonserver 2.51 (nvidia-pytriton 0.7.0), Python backend + onnxruntime "
        f"{ns.precision} where servable, "
        f"{ns.target} rendering (instances and batching as model_repository/spec.py declares them)."
    )
    concurrencies = [int(c) for c in ns.concurrency.split(",")]
    started = time.perf_counter()
    engines = "" if ns.skip_engines else engines_table(ns.artifacts, ns.engine_rounds, ns.engine_budget_s)

    inputs = Inputs()
    with contextlib.ExitStack() as stack:
        work = ns.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vitrine-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        names = [v.strip() for v in ns.variants.split(",")]
        base = RenderOptions(target=Target(ns.target), precision=Precision(ns.precision))
        variants = {
            n: replace(VARIANTS[n], target=base.target, precision=base.precision)
            for n in VARIANTS
            if n in names
        }
        for model, layout in ns.layouts:
            variants[f"{model.value}={layout.label()}"] = replace(base, layouts=((model, layout),))
        for precision in filter(None, (p.strip() for p in ns.precisions.split(","))):
            variants[f"precision={precision}"] = replace(base, precision=Precision(precision))
        wanted = {w.strip() for w in ns.workloads.split(",")}
        workloads = [w for w in WORKLOADS if w.key in wanted]
        total_runs = len(variants) * len(workloads) * len(concurrencies) * ns.rounds
        own_before, wall_before, load_before = _own_cpu_s(), time.monotonic(), os.getloadavg()
        with tqdm(total=total_runs, desc="triton runs", disable=None) as progress:
            points, traces = run_triton(
                ns.artifacts, work, inputs, workloads, concurrencies, variants, ns.rounds, progress, ns.trace
            )
        share = (_own_cpu_s() - own_before) / ((time.monotonic() - wall_before) * (os.cpu_count() or 1))
        header += (
            f" Load generator (this process's gRPC clients, Triton excluded): {100 * share:.0f}% of the "
            f"machine's CPU over the served runs; 1-min load {load_before[0]:.2f} -> "
            f"{os.getloadavg()[0]:.2f}."
        )

    report = [header, "", "Served through Triton (closed loop; requests per point in the table):", ""]
    report.append(triton_table(points))
    for label, text in traces.items():
        report += [
            "",
            f"Triton trace, variant {label} (every request of the run, warm-up included):",
            "",
            text,
        ]
    if engines:
        report += ["", "In-process engines (benchmarks.export, same run):", "", engines]
    report += ["", f"Total run time: {time.perf_counter() - started:.0f} s"]
    print("\n".join(report))
    if ns.json:
        ns.json.write_text(
            json.dumps(
                {"header": header, "points": [asdict(p) for p in points], "engines": engines}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
