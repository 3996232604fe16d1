"""``python -m benchmarks.export``: in-process latency per tower, onnxruntime vs PyTorch eager, fp32 vs the
fused graph (``export --optimize``) vs int8.

All engines run side by side in one process on the same inputs, interleaved round by round so that
background load hits them alike. Wrap runs in ``flock`` on shared machines. Figures name the hardware
and the weights recorded in the artifacts' manifest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export import validate
from export.pipeline import Manifest, _torch_runner
from export.specs import CLIP_IMAGE, CLIP_TEXT, TOWERS, Family, TowerSpec
from export.towers import ClipImageTower, ClipTextTower, CrossEncoderTower, load_clip, load_cross_encoder
from vitrine import logs
from vitrine.contracts import CLIP_IMAGE_SIZE, Model, Tensor
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table
from vitrine.tokenization import ClipTokenizer, PairTokenizer

SEQ = {Model.CLIP_TEXT_ENCODER: 16, Model.CROSS_ENCODER: 64}
"""Typical shapes: a query fits CLIP's 16-token bucket; a (query, title + description) pair the 64 one."""


def feeds(spec: TowerSpec, batch: int, seed: int) -> validate.Feeds:
    rng = np.random.default_rng(seed)
    if spec is CLIP_IMAGE:
        shape = (batch, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
        return {Tensor.PIXEL_VALUES.value: rng.standard_normal(shape).astype(np.float32)}
    seq = SEQ[spec.model]
    ids = rng.integers(1000, 20000, (batch, seq), dtype=np.int64)
    if spec is CLIP_TEXT:
        return {Tensor.INPUT_IDS.value: ids, Tensor.EOT_INDEX.value: np.full((batch, 1), seq - 1, np.int64)}
    return {
        Tensor.INPUT_IDS.value: ids,
        Tensor.ATTENTION_MASK.value: np.ones_like(ids),
        Tensor.TOKEN_TYPE_IDS.value: np.zeros_like(ids),
    }


def measure(
    engines: dict[str, Callable[[validate.Feeds], Any]], inputs: validate.Feeds, rounds: int, budget_s: float
) -> dict[str, list[float]]:
    for run in engines.values():  # warm-up: allocations, thread pools, kernel selection
        run(inputs)
    times: dict[str, list[float]] = {name: [] for name in engines}
    deadline = time.perf_counter() + budget_s
    for i in range(rounds):
        for name, run in engines.items():
            t0 = time.perf_counter()
            run(inputs)
            times[name].append((time.perf_counter() - t0) * 1000)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return times


def tokenizer_cases(manifest: Manifest) -> list[tuple[str, int, Callable[[], Any]]]:
    """Serving tokenizer cost: it runs in Python-backend models in front of every encoder call."""
    clip = ClipTokenizer.from_file(manifest.tokenizer(Family.CLIP))
    pairs = PairTokenizer.from_file(manifest.tokenizer(Family.CROSS_ENCODER))
    cases: list[tuple[str, int, Callable[[], Any]]] = []
    for n in (1, 8, 64):
        texts = validate.product_texts(n, seed=n)
        cases.append(("CLIP BPE, bucketed", n, functools.partial(clip.encode_batch, texts)))
    passages = validate.product_passages(50, seed=1)
    cases.append(("WordPiece pairs, 1 query", 50, lambda: pairs.encode("red leather ankle boots", passages)))
    return cases


def _ignore_feeds(fn: Callable[[], Any]) -> Callable[[validate.Feeds], Any]:
    return lambda _feeds: fn()


def _ort(sess: Any) -> Callable[[validate.Feeds], Any]:
    return lambda f: sess.run(None, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=20.0, help="time budget per (tower, batch)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    ns = parser.parse_args(argv)
    logs.setup()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    manifest = Manifest.load(ns.artifacts)
    torch.set_num_threads(ns.threads)
    clip = load_clip(ns.artifacts / "checkpoints" / "clip")
    modules = {
        Model.CLIP_TEXT_ENCODER: ClipTextTower(clip).eval(),
        Model.CLIP_IMAGE_ENCODER: ClipImageTower(clip).eval(),
        Model.CROSS_ENCODER: CrossEncoderTower(
            load_cross_encoder(ns.artifacts / "checkpoints" / "cross_encoder")
        ),
    }
    rows: list[dict[str, Any]] = []
    batches = [int(b) for b in ns.batches.split(",")]
    load_before = os.getloadavg()[0]
    cases = [(spec, batch) for spec in TOWERS for batch in batches]
    for spec, batch in tqdm(cases, desc="bench", disable=None):
        entry = manifest.entry(spec.model)
        engines: dict[str, Callable[[validate.Feeds], Any]] = {
            "pytorch eager fp32": _torch_runner(modules[spec.model])
        }
        fp32 = validate.session(manifest.path(spec.model), ns.threads)
        engines["onnxruntime fp32"] = _ort(fp32)
        if entry.optimized and entry.optimized.get("servable"):
            fused = validate.session(manifest.path(spec.model, "optimized"), ns.threads)
            engines["onnxruntime fused fp32"] = _ort(fused)
        if entry.int8:
            int8 = validate.session(manifest.path(spec.model, "int8"), ns.threads)
            engines["onnxruntime int8"] = _ort(int8)
        times = measure(engines, feeds(spec, batch, seed=batch), ns.rounds, ns.budget_s)
        base = statistics.median(times["pytorch eager fp32"])
        ort_base = statistics.median(times["onnxruntime fp32"])
        for name, ts in times.items():
            median = statistics.median(ts)
            rows.append(
                {
                    "model": spec.model.value,
                    "batch": batch,
                    "seq": SEQ.get(spec.model),
                    "engine": name,
                    "median_ms": round(median, 2),
                    "p90_ms": round(percentile(ts, 0.90), 2),
                    "items_per_s": round(batch * 1000 / median, 1),
                    "speedup_vs_torch": round(base / median, 2),
                    "speedup_vs_ort_fp32": round(ort_base / median, 2),
                    "runs": len(ts),
                    "weights": entry.weights,
                    "int8_servable": entry.int8["servable"] if entry.int8 and "int8" in name else None,
                }
            )
    header = (
        f"Hardware: {describe_hardware()}; {ns.threads} threads per engine; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (others' work competes). "
        f"Weights: {', '.join(sorted({f'{m}={e.weights}' for m, e in manifest.models.items()}))}; "
        f"size {manifest.size}."
    )
    servable = {None: "", True: "yes", False: "no"}
    lines = [header, ""]
    lines += markdown_table(
        ("model", "batch", "seq", "engine", "median ms", "p90 ms", "items/s", "vs PyTorch", "vs ORT fp32",
         "int8 servable"),
        ((r["model"], r["batch"], r["seq"] or "-", r["engine"], r["median_ms"], r["p90_ms"], r["items_per_s"],
          f"{r['speedup_vs_torch']}x", f"{r['speedup_vs_ort_fp32']}x", servable[r["int8_servable"]])
         for r in rows),
    )  # fmt: skip
    tokenizer_rows = []
    for label, n, run in tokenizer_cases(manifest):
        median = statistics.median(measure({"t": _ignore_feeds(run)}, {}, ns.rounds, 2.0)["t"])
        tokenizer_rows.append((label, n, f"{median:.3f}", f"{median * 1000 / n:.0f}"))
    lines += [
        "",
        *markdown_table(
            ("tokenizer (vitrine.tokenization)", "texts", "median ms", "per text us"), tokenizer_rows
        ),
    ]
    print("\n".join(lines))
    if ns.json:
        ns.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
