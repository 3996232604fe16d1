"""Adapters as served encoder versions: each head fused into its tower's ONNX graph and validated;
the trained cross-encoder, when there is one, exported as the same version of ``cross_encoder``.

An adapted encoder is the exported tower with the head appended inside the same graph
(``onnx.compose``), written as the next version of the encoder (``<artifacts>/versions/<v>/<model>/``),
which ``model_repository`` renders as Triton version ``v`` of that model. Fused, the head costs one
matrix pair inside a call that already runs; as a separate ensemble step it costs another Python-backend
hop (measured by ``measure_costs``, see docs/BENCHMARKS.md). Validation compares the fused graph with
PyTorch: the served tower (already validated against PyTorch by the export) followed by the trained
head in PyTorch, on fresh inputs.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapt import reranker
from adapt.features import ONNX_FILE, file_digest, session
from adapt.heads import AdapterPair, Head
from vitrine.contracts import CLIP_IMAGE_SIZE, EMBED_DIM, Model, Tensor
from vitrine.reranking import TRAINED_HERE
from vitrine.tokenization import ClipTokenizer

OPSET = 17
HEAD_INPUT = "base_embedding"
"""Internal to the fused graph: the tower's output as the head's input (never visible to a client)."""
MIN_COSINE = 0.9999
MAX_LOGIT_DIFF = 1e-3
"""The exported cross-encoder against PyTorch: largest |logit difference| accepted."""
RERANK_PROBES = (
    (
        "red leather ankle boots",
        ("Redfern red leather ankle boots.", "A blue canvas tote bag.", "Red sneakers."),
    ),
    (
        "black wool coat",
        ("Black wool coat with a belt.", "A black cotton t-shirt.", "Grey wool scarf.", "Coat"),
    ),
)
VERSIONS_DIR = "versions"
VERSION_MANIFEST = "manifest.json"


class ValidationError(RuntimeError):
    """The fused graph disagrees with PyTorch beyond tolerance."""


def version_dir(artifacts: Path, version: str) -> Path:
    return artifacts / VERSIONS_DIR / version


def export_head(head: Head, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, EMBED_DIM)
    dummy[:, 0] = 1.0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head.eval(),
            (dummy,),
            str(path),
            input_names=[HEAD_INPUT],
            output_names=[Tensor.EMBEDDING.value],
            dynamic_axes={HEAD_INPUT: {0: "batch"}, Tensor.EMBEDDING.value: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def fuse(tower: Path, head: Path, out: Path) -> None:
    """The tower's graph with the head appended: same inputs, same ``EMBEDDING`` output."""
    import onnx
    from onnx import compose

    a, b = onnx.load(str(tower)), onnx.load(str(head))
    out_name = Tensor.EMBEDDING.value
    for node in a.graph.node:
        node.output[:] = [HEAD_INPUT if n == out_name else n for n in node.output]
        node.input[:] = [HEAD_INPUT if n == out_name else n for n in node.input]
    for value in a.graph.output:
        if value.name == out_name:
            value.name = HEAD_INPUT
    b.ir_version = a.ir_version
    b = compose.add_prefix(b, "adapter/", rename_inputs=False, rename_outputs=False)
    fused = compose.merge_models(a, b, io_map=[(HEAD_INPUT, HEAD_INPUT)])
    onnx.checker.check_model(fused)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fused, str(out))


def _probe(model: Model, artifacts: Path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 4242)
    if model is Model.CLIP_IMAGE_ENCODER:
        return {
            Tensor.PIXEL_VALUES.value: rng.standard_normal((6, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)).astype(
                np.float32
            )
        }
    tok = ClipTokenizer.from_file(artifacts / "tokenizers/clip/tokenizer.json")
    enc = tok.encode_batch(
        ["red leather ankle boots", "a photo of a sneaker", "striped cotton t-shirt for summer days", "bag"]
    )
    return {Tensor.INPUT_IDS.value: enc.input_ids, Tensor.EOT_INDEX.value: enc.eot_index}


def validate(model: Model, artifacts: Path, fused: Path, head: Head, seed: int = 0) -> dict[str, Any]:
    """Fused graph vs (served tower -> PyTorch head) on fresh inputs: every row's cosine >= MIN_COSINE."""
    feeds = _probe(model, artifacts, seed)
    base = session(artifacts / model.value / ONNX_FILE).run(None, feeds)[0]
    with torch.no_grad():
        expected = head.eval()(torch.from_numpy(base)).numpy()
    got = session(fused).run(None, feeds)[0]
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    figures = {
        "rows": len(got),
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(got - expected).max()),
    }
    if figures["min_cosine"] < MIN_COSINE:
        raise ValidationError(f"{model.value} adapted: cosine {figures['min_cosine']:.6f} < {MIN_COSINE}")
    return figures


def measure_costs(
    model: Model, artifacts: Path, fused: Path, head_path: Path, repeats: int = 5
) -> dict[str, float]:
    """Median ms of one batch-1 call: the tower, the fused graph, and the tower then the head as a
    separate session (what an extra ensemble step computes, before its Triton hop)."""
    feeds = {k: v[:1] for k, v in _probe(model, artifacts, 1).items()}
    tower, fused_s, head_s = (
        session(artifacts / model.value / ONNX_FILE, 1),
        session(fused, 1),
        session(head_path, 1),
    )

    def timed(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))

    def separate() -> None:
        e = tower.run(None, feeds)[0]
        head_s.run(None, {HEAD_INPUT: e})

    return {
        "tower_ms": round(timed(lambda: tower.run(None, feeds)), 2),
        "fused_ms": round(timed(lambda: fused_s.run(None, feeds)), 2),
        "tower_then_head_ms": round(timed(separate), 2),
        "head_alone_ms": round(
            timed(lambda: head_s.run(None, {HEAD_INPUT: np.ones((1, EMBED_DIM), np.float32)})), 3
        ),
    }


def export_reranker(enc: reranker.Encoder, artifacts: Path, version: str) -> dict[str, Any]:
    """The trained cross-encoder as ``version`` of ``cross_encoder``: the whole model in one graph (the
    frozen blocks are the exported ones), validated against PyTorch on probe pools."""
    out = version_dir(artifacts, version) / Model.CROSS_ENCODER.value / ONNX_FILE
    reranker.export_onnx(enc, out)
    sess = session(out)
    worst, same_order = 0.0, True
    for query, passages in RERANK_PROBES:
        got = reranker.onnx_scores(sess, enc, query, passages)
        expected = reranker.scores(enc, query, passages)
        worst = max(worst, float(np.abs(got - expected).max()))
        same_order &= bool(
            np.array_equal(np.argsort(-got, kind="stable"), np.argsort(-expected, kind="stable"))
        )
    if worst > MAX_LOGIT_DIFF:
        raise ValidationError(f"cross_encoder adapted: max |logit diff| {worst:.2e} > {MAX_LOGIT_DIFF}")
    return {
        "path": str(out.relative_to(artifacts)),
        "sha256": file_digest(out),
        "base_sha256": file_digest(artifacts / Model.CROSS_ENCODER.value / ONNX_FILE),
        "weights": TRAINED_HERE,  # rendered as the rerank ensemble's ``weights`` (vitrine.reranking)
        "trained_blocks": enc.layers,
        "validation": {"pools": len(RERANK_PROBES), "max_abs_diff": worst, "same_order": same_order},
    }


def export_version(
    pair: AdapterPair | None,
    artifacts: Path,
    version: str,
    source: dict[str, Any],
    seed: int = 0,
    measure: bool = True,
    cross_encoder: reranker.Encoder | None = None,
) -> dict[str, Any]:
    """Write both adapted encoders as ``version`` (unless ``pair`` is None: a version of the
    cross-encoder alone) and the trained cross-encoder, when given, and the version's manifest; returns
    the manifest."""
    out = version_dir(artifacts, version)
    entries: dict[str, Any] = {}
    heads = (
        () if pair is None else ((Model.CLIP_IMAGE_ENCODER, pair.image), (Model.CLIP_TEXT_ENCODER, pair.text))
    )
    for model, head in heads:
        head_path = out / "heads" / f"{model.value}.onnx"
        export_head(head, head_path)
        fused = out / model.value / ONNX_FILE
        fuse(artifacts / model.value / ONNX_FILE, head_path, fused)
        entries[model.value] = {
            "path": str(fused.relative_to(artifacts)),
            "sha256": file_digest(fused),
            # The tower this head was fused onto: a later export of other weights makes the version stale.
            "base_sha256": file_digest(artifacts / model.value / ONNX_FILE),
            "validation": validate(model, artifacts, fused, head, seed),
            **({"cost": measure_costs(model, artifacts, fused, head_path)} if measure else {}),
        }
    if cross_encoder is not None:
        entries[Model.CROSS_ENCODER.value] = export_reranker(cross_encoder, artifacts, version)
    manifest = {"version": version, "adapter": source, "models": entries}
    (out / VERSION_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
