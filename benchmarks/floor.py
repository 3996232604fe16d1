"""``python -m benchmarks.floor``: each served workload next to its in-process floor, in one run, as ratios.

The floor is what the machine's cores can compute with nothing in between: the same onnxruntime graphs,
session options and (for the cross-encoder) length-sorted sub-batches the served models use, called
in-process on inputs tokenized or decoded beforehand:

* **c=1**: one session with every core, one request after another; the figure is the p50.
* **c=N**: one single-threaded session per core, each in its own thread (onnxruntime releases the GIL),
  batch 1 as fast as they go; the figure is requests per second.

The served side is the embedded Triton rendered from ``model_repository/spec.py`` (and any ``--layouts``
variants), measured closed-loop with ``benchmarks.triton``'s client at the same concurrencies. Floors and
served points alternate round by round, so drift on a shared host lands on both. With ``--peer`` the
same requests also go to a running infinity-emb serving the same checkpoints (``benchmarks.peer`` says
how to start it), again interleaved.

Printed: floor, served and peer per (workload, concurrency), and the ratios the latency work is judged by:
served p50 / floor p50 at c=1, served / floor throughput at c=N, served / peer throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tqdm import tqdm

from benchmarks.triton import (
    RERANK_PASSAGES,
    VARIANTS,
    WORKLOADS,
    Inputs,
    Workload,
    closed_loop,
    parse_layout,
)
from model_repository.preprocess import pixel_values
from model_repository.render import RenderOptions, load_manifest
from model_repository.runtime import LengthSorting, available_cores, make_session, run_batched
from model_repository.text_feeds import TextFeeds
from operations.assembly import Stack
from vitrine import logs
from vitrine import triton as triton_request
from vitrine.contracts import EMBED_MINILM_IO, Model, Tensor
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table
from vitrine.tokenization import PairTokenizer

Feed = dict[str, np.ndarray]
MINILM = Workload(
    "minilm", "embed_minilm", Model.EMBED_MINILM, Model.MINILM_ENCODER, lambda c: max(32, 3 * c), 1
)
"""The sentence encoder of the default text match (its tokenizer and graph), next to CLIP's three."""
ALL_WORKLOADS = (*WORKLOADS, MINILM)


def request(inputs: Inputs, workload: Workload, i: int) -> list[grpcclient.InferInput]:
    if workload is MINILM:
        return triton_request.inputs(
            EMBED_MINILM_IO, {Tensor.TEXT: [inputs.queries[i % len(inputs.queries)]]}
        )
    return inputs.request(workload, i)


SORT_ROWS = 16
"""The cross-encoder's served sub-batch (``length_sorted_rows`` in the spec)."""


@dataclass
class Figure:
    """One (workload, concurrency) of one side: p50 at c=1, throughput everywhere."""

    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    wall_s: float = 0.0
    errors: int = 0

    def add(self, latencies: list[float], wall_s: float, errors: int = 0) -> None:
        self.latencies_ms += latencies
        self.requests += len(latencies)
        self.wall_s += wall_s
        self.errors += errors

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.5)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 0.95)


class Floor:
    """The in-process floor of each workload: the served graphs on pre-built feeds."""

    def __init__(self, artifacts: Path, inputs: Inputs, cores: int) -> None:
        self.cores = cores
        manifest_dir = Path(artifacts)
        pairs = PairTokenizer.from_file(manifest_dir / "tokenizers" / "cross_encoder" / "tokenizer.json")
        self.graphs = {
            "text": manifest_dir / Model.CLIP_TEXT_ENCODER.value / "model.onnx",
            "image": manifest_dir / Model.CLIP_IMAGE_ENCODER.value / "model.onnx",
            "rerank": manifest_dir / Model.CROSS_ENCODER.value / "model.onnx",
            "minilm": manifest_dir / Model.MINILM_ENCODER.value / "model.onnx",
        }
        # Text as the served encoders tokenize it (``model_repository.text_feeds``), one query per feed.
        self.feeds: dict[str, list[Feed]] = {}
        for key, tokenizer, directory in (
            ("text", Model.CLIP_TEXT_TOKENIZE, "clip"),
            ("minilm", Model.MINILM_TOKENIZE, "minilm"),
        ):
            path = manifest_dir / "tokenizers" / directory / "tokenizer.json"
            if path.is_file():  # the MiniLM tower only where it was exported
                encode = TextFeeds.for_model(tokenizer, path).encode
                self.feeds[key] = [encode([q])[0] for q in inputs.queries]
        self.feeds["image"] = [{Tensor.PIXEL_VALUES.value: pixel_values(img)[None]} for img in inputs.images]
        rerank = []
        for i in range(16):
            start = (i * 7) % (len(inputs.passages) - RERANK_PASSAGES)
            pair = pairs.encode(
                inputs.queries[i % len(inputs.queries)], inputs.passages[start : start + RERANK_PASSAGES]
            )
            rerank.append(
                {
                    Tensor.INPUT_IDS.value: pair.input_ids,
                    Tensor.ATTENTION_MASK.value: pair.attention_mask,
                    Tensor.TOKEN_TYPE_IDS.value: pair.token_type_ids,
                }
            )
        self.feeds["rerank"] = rerank
        self.outputs = {
            "minilm": [Tensor.EMBEDDING.value],
            "text": [Tensor.EMBEDDING.value],
            "image": [Tensor.EMBEDDING.value],
            "rerank": [Tensor.LOGITS.value],
        }
        self._sessions: dict[tuple[str, int, int], Any] = {}

    def _session(self, key: str, threads: int, slot: int) -> Any:
        if (key, threads, slot) not in self._sessions:
            session = make_session(self.graphs[key], threads=threads)
            self._sessions[(key, threads, slot)] = session
            self._call(key, session, 0)  # warm-up: the first run allocates
        return self._sessions[(key, threads, slot)]

    def _call(self, key: str, session: Any, i: int) -> None:
        feeds = self.feeds[key]
        sorting = LengthSorting(Tensor.ATTENTION_MASK.value, SORT_ROWS) if key == "rerank" else None
        (result,) = run_batched(session, [feeds[i % len(feeds)]], self.outputs[key], sorting)
        if result.outputs is None:
            raise RuntimeError(f"floor {key}: {result.error}")

    def lone(self, key: str, requests: int) -> tuple[list[float], float]:
        """Requests one after another on one session with every core."""
        session = self._session(key, self.cores, 0)
        latencies = []
        start = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter()
            self._call(key, session, i)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies, time.perf_counter() - start

    def parallel(self, key: str, requests: int) -> tuple[list[float], float]:
        """``requests`` shared by one single-threaded session per core, each in its own thread."""
        free = [self._session(key, 1, slot) for slot in range(self.cores)]
        mine = threading.local()
        lock = threading.Lock()

        def send(i: int) -> None:
            if not hasattr(mine, "session"):
                with lock:
                    mine.session = free.pop()
            self._call(key, mine.session, i)

        latencies, wall, errors = closed_loop_threads(send, self.cores, requests)
        if errors:
            raise RuntimeError(f"floor {key}: {errors} of {requests} in-process runs failed")
        return latencies, wall


async def served(
    url: str, workload: Workload, inputs: Inputs, concurrency: int, total: int
) -> tuple[list[float], int, float]:
    """``total`` requests over ``concurrency`` closed-loop workers on one server, after two sent one at a
    time to warm up (overlapping ones would put adaptive instances on their share of the cores)."""
    async with grpcclient.InferenceServerClient(url) as client:

        async def send(i: int) -> object:
            return await client.infer(workload.model.value, request(inputs, workload, i), client_timeout=900)

        await closed_loop(send, 1, 2)
        return await closed_loop(send, concurrency, total)


def peer_sender(peer: Any, workload: Workload, inputs: Inputs) -> Callable[[int], object]:
    """One blocking call to the peer for request ``i``, the same payload Triton gets."""
    if workload.key == "text":
        return lambda i: peer.embed_texts([inputs.queries[i % len(inputs.queries)]])
    if workload.key == "image":
        return lambda i: peer.embed_images([inputs.images[i % len(inputs.images)]])

    def rerank(i: int) -> object:
        start = (i * 7) % (len(inputs.passages) - RERANK_PASSAGES)
        return peer.rerank(
            inputs.queries[i % len(inputs.queries)], inputs.passages[start : start + RERANK_PASSAGES]
        )

    return rerank


def closed_loop_threads(
    send: Callable[[int], object], concurrency: int, total: int
) -> tuple[list[float], float, int]:
    """``concurrency`` threads share ``total`` blocking calls; latencies (ms), wall seconds, errors."""
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                send(i)
            except Exception:  # the peer's failures are counted, not fatal to the run
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a == a and b == b and b else "-"


Figures = dict[tuple[str, int, str], Figure]


def _sides(
    figures: Figures, workloads: list[Workload], concurrencies: list[int], labels: list[str], reference: str
) -> list[tuple[Workload, int, str, Figure, Figure]]:
    """Every measured (workload, concurrency, side) with the ``reference`` side's figure beside it."""
    out = []
    for w in workloads:
        for c in concurrencies:
            ref = figures.get((w.key, c, reference))
            if ref is None or not ref.requests:
                continue
            for label in labels:
                f = figures.get((w.key, c, label))
                if f is not None and f.requests:
                    out.append((w, c, label, f, ref))
    return out


def report(figures: Figures, workloads: list[Workload], concurrencies: list[int], labels: list[str]) -> str:
    rows = [
        (w.name, c, label, f.requests, f.errors, f"{f.rps:.2f}", f"{f.p50:.1f}", f"{f.p95:.1f}",
         _ratio(f.p50, floor.p50), _ratio(f.rps, floor.rps))
        for w, c, label, f, floor in _sides(figures, workloads, concurrencies, labels, "floor")
    ]  # fmt: skip
    return "\n".join(
        markdown_table(
            ("workload", "c", "side", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p50 / floor",
             "req/s / floor"),
            rows,
        )
    )  # fmt: skip


def peer_table(
    figures: Figures, workloads: list[Workload], concurrencies: list[int], labels: list[str]
) -> str:
    served = [label for label in labels if label not in ("floor", "peer")]
    rows = [
        (w.name, c, label, _ratio(f.rps, peer.rps), _ratio(f.p50, peer.p50))
        for w, c, label, f, peer in _sides(figures, workloads, concurrencies, served, "peer")
    ]
    if not rows:
        return ""
    return "\n".join(markdown_table(("workload", "c", "served", "req/s / peer", "p50 / peer"), rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument("--work", type=Path, default=None, help="repositories and logs (default: temp)")
    parser.add_argument(
        "--workloads", default="text,minilm,image,rerank", help="subset of text,minilm,image,rerank"
    )
    parser.add_argument(
        "--concurrency",
        default="1,8",
        help="the concurrencies compared (the floor's c>1 is one 1-thread session per core)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every point")
    parser.add_argument(
        "--layouts", type=parse_layout, nargs="*", default=[],
        help="extra served variants, each the spec with one model's CPU layout replaced: "
        "MODEL=INSTANCESx(THREADS|a)[u] (benchmarks.triton's syntax)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", default="", help=f"extra served variants from benchmarks.triton: {','.join(VARIANTS)}"
    )
    parser.add_argument("--peer", default="", help="base URL of a running infinity-emb (benchmarks.peer)")
    parser.add_argument("--peer-clip", default="clip", help="the peer's model name for the CLIP checkpoint")
    parser.add_argument(
        "--peer-rerank", default="cross-encoder", help="the peer's name for the cross-encoder"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    ns = parser.parse_args(argv)
    logs.setup()

    manifest = load_manifest(ns.artifacts)
    weights = ", ".join(sorted(f"{m}={e['weights']}" for m, e in manifest["models"].items()))
    cores = available_cores()
    concurrencies = [int(c) for c in ns.concurrency.split(",")]
    wanted = {w.strip() for w in ns.workloads.split(",")}
    workloads = [w for w in ALL_WORKLOADS if w.key in wanted]
    inputs = Inputs()
    floor = Floor(ns.artifacts, inputs, cores)
    workloads = [w for w in workloads if w.key in floor.feeds]  # minilm only where it was exported
    peer = None
    if ns.peer:
        from benchmarks.peer import PeerClient

        peer = PeerClient(ns.peer, clip_model=ns.peer_clip, rerank_model=ns.peer_rerank)

    started = time.perf_counter()
    load_before = os.getloadavg()
    figures: dict[tuple[str, int, str], Figure] = {}
    with contextlib.ExitStack() as stack:
        work = ns.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vitrine-floor-")))
        variants = {"served": RenderOptions()}
        for name in filter(None, (v.strip() for v in ns.variants.split(","))):
            variants[name] = VARIANTS[name]
        for model, layout in ns.layouts:
            variants[f"{model.value}={layout.label()}"] = RenderOptions(layouts=((model, layout),))
        urls = {}
        for label, options in variants.items():
            slug = "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in label)
            server = Stack(work / f"variant-{slug}", ns.artifacts, render=options)
            stack.callback(server.stop)
            urls[label] = server.start_triton().grpc_url
        labels = ["floor", *variants, *(["peer"] if peer else [])]
        total = len(workloads) * len(concurrencies) * ns.rounds
        with tqdm(total=total, desc="floor vs served", disable=None) as bar:
            for w in workloads:
                for c in concurrencies:
                    per_round = w.requests(c)
                    for _ in range(ns.rounds):
                        lat, wall = (
                            floor.lone(w.key, per_round) if c == 1 else floor.parallel(w.key, per_round)
                        )
                        figures.setdefault((w.key, c, "floor"), Figure()).add(lat, wall)
                        for label, url in urls.items():
                            lat, errors, wall = asyncio.run(served(url, w, inputs, c, per_round))
                            figures.setdefault((w.key, c, label), Figure()).add(lat, wall, errors)
                        if peer is not None and w is not MINILM:  # the peer serves CLIP and the re-ranker
                            lat, wall, errors = closed_loop_threads(
                                peer_sender(peer, w, inputs), c, per_round
                            )
                            figures.setdefault((w.key, c, "peer"), Figure()).add(lat, wall, errors)
                        bar.update()
    header = (
        f"Hardware: {describe_hardware()}; {cores} cores for the floor. Weights: {weights}; size "
        f"{manifest['size']}. Served: embedded tritonserver (nvidia-pytriton), repository rendered from "
        f"model_repository/spec.py{' plus the layouts named' if ns.layouts else ''}. "
        f"1-min load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}; "
        f"run {time.perf_counter() - started:.0f} s."
    )
    print("\n".join([header, "", report(figures, workloads, concurrencies, labels)]))
    peers = peer_table(figures, workloads, concurrencies, labels)
    if peers:
        print("\n" + peers)
    if ns.json:
        ns.json.write_text(
            json.dumps(
                {
                    "header": header,
                    "figures": [
                        {"workload": k[0], "concurrency": k[1], "side": k[2], "rps": f.rps, "p50_ms": f.p50,
                         "p95_ms": f.p95, "requests": f.requests, "errors": f.errors}
                        for k, f in figures.items()
                    ],
                },
                indent=2,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
