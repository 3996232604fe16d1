"""Compare an exported graph with PyTorch on fresh inputs and fail loudly, with the figures.

Fresh means not the tracing dummies: seeded product-like texts tokenized by the serving tokenizers,
random pixel tensors, and (query, passage) pairs. Agreement of rankings is defined as follows.

``topk_agreement(candidate, reference, k, tie)``: for each query row, take the candidate's top ``k``
items and count those whose *reference* score is at least the reference's ``k``-th best score minus
``tie``; divide by ``k`` and average over queries. With ``tie=0`` this is the plain top-k overlap. The fp32
gate uses ``tie`` = twice the largest score difference observed between the two engines, so it demands
that every item the graph ranks in the top 10 is within the measured numerical noise of PyTorch's top
10; the plain overlap is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from export.errors import ShapeError, ToleranceError
from export.specs import Kind, TowerSpec

FloatArray = npt.NDArray[np.float32]
Feeds = dict[str, np.ndarray]

CATALOG_SIZE = 1000
QUERIES = 20
TOP_K = 10
RERANK_QUERIES = 4
RERANK_PASSAGES = 50

_ONNX_TYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}

_COLOURS = [
    "red",
    "blue",
    "black",
    "white",
    "green",
    "beige",
    "navy",
    "olive",
    "grey",
    "pink",
    "tan",
    "burgundy",
]
_MATERIALS = ["leather", "suede", "cotton", "wool", "linen", "denim", "canvas", "silk", "nylon", "cashmere"]
_ITEMS = [
    "ankle",
    "boots",
    "sneakers",
    "backpack",
    "trench",
    "coat",
    "scarf",
    "dress",
    "shirt",
    "jacket",
    "sandals",
    "handbag",
]
_ADJECTIVES = [
    "waterproof",
    "slim",
    "vintage",
    "lightweight",
    "oversized",
    "classic",
    "quilted",
    "padded",
    "chunky",
]


def product_texts(n: int, seed: int, *, long_every: int = 0) -> list[str]:
    """Seeded product-like titles (some with a long description, to cross CLIP's 77 tokens)."""
    rng = np.random.default_rng(seed)

    def title() -> str:
        words = [rng.choice(_ADJECTIVES), rng.choice(_COLOURS), rng.choice(_MATERIALS), rng.choice(_ITEMS)]
        return " ".join(str(w) for w in words[: rng.integers(2, 5)])

    texts = []
    for i in range(n):
        text = title()
        if long_every and i % long_every == long_every - 1:
            text += ", " + ", ".join(title() for _ in range(int(rng.integers(20, 40))))
        texts.append(text)
    return texts


def product_passages(n: int, seed: int) -> list[str]:
    """Title-plus-description passages of ~15-60 tokens, what the gateway re-ranks."""
    rng = np.random.default_rng(seed)
    titles = product_texts(n * 6, seed)
    return [". ".join(titles[i * 6 : i * 6 + int(rng.integers(2, 7))]).capitalize() + "." for i in range(n)]


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """CPU session that does not spin idle threads (spinning costs its neighbours ~30% on 2 cores)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_graph(spec: TowerSpec, path: Path) -> None:
    """The graph's tensors carry the contract's names, types and shapes (dynamic axes left symbolic)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    actual = {
        "input": [v for v in graph.input if v.name not in initializers],
        "output": list(graph.output),
    }
    for role, expected in (("input", spec.inputs), ("output", spec.outputs)):
        got = actual[role]
        if [v.name for v in got] != [t.name.value for t in expected]:
            raise ShapeError(
                f"{spec.model.value}: {role}s are {[v.name for v in got]}, "
                f"expected {[t.name.value for t in expected]}"
            )
        for value, want in zip(got, expected, strict=True):
            ttype = value.type.tensor_type
            if ttype.elem_type != _ONNX_TYPES[want.dtype]:
                raise ShapeError(f"{spec.model.value}.{want.name.value}: element type {ttype.elem_type}")
            dims: list[Any] = [d.dim_param or d.dim_value for d in ttype.shape.dim]
            ok = len(dims) == len(want.shape) and all(
                (isinstance(w, str) and (isinstance(d, str) or d == 0)) or d == w
                for d, w in zip(dims, want.shape, strict=False)
            )
            if not ok:
                raise ShapeError(f"{spec.model.value}.{want.name.value}: shape {dims}, expected {want.shape}")


def topk_agreement(candidate: FloatArray, reference: FloatArray, k: int = TOP_K, tie: float = 0.0) -> float:
    top = np.argsort(-candidate, axis=1)[:, :k]
    kth = np.sort(reference, axis=1)[:, -k]
    hits = np.take_along_axis(reference, top, axis=1) >= (kth[:, None] - tie)
    return float(hits.mean())


def catalog(seed: int, n: int = CATALOG_SIZE, dim: int = 512) -> FloatArray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass(frozen=True)
class RankingProbe:
    """Fresh inputs plus how to turn a tower's outputs into per-query score rows for ranking."""

    batches: list[Feeds]  # run one at a time; outputs concatenated
    to_scores: Callable[[FloatArray], FloatArray]


def compare(
    spec: TowerSpec, got: FloatArray, want: FloatArray, *, min_cosine: float, max_abs: float, label: str
) -> dict[str, float]:
    expected = tuple(spec.outputs[0].shape[1:])
    if got.shape != want.shape or tuple(got.shape[1:]) != expected:
        contract = ", ".join(["batch", *(str(d) for d in expected)])
        raise ShapeError(f"{label}: output shape {got.shape}, PyTorch {want.shape}, contract [{contract}]")
    if not np.all(np.isfinite(got)):
        raise ToleranceError(f"{label}: non-finite outputs")
    figures: dict[str, float] = {"max_abs_diff": float(np.abs(got - want).max())}
    if spec.kind is Kind.EMBEDDING:
        cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        norm_dev = float(np.abs(np.linalg.norm(got, axis=1) - 1.0).max())
        figures |= {"min_cosine": float(cos.min()), "max_norm_deviation": norm_dev}
        if cos.min() < min_cosine:
            raise ToleranceError(
                f"{label}: cosine with PyTorch {cos.min():.6f} (row {int(cos.argmin())}) < {min_cosine}"
            )
        if norm_dev > 1e-3:
            raise ToleranceError(f"{label}: rows not L2-normalised (|norm - 1| up to {norm_dev:.2e})")
    elif figures["max_abs_diff"] > max_abs:
        raise ToleranceError(
            f"{label}: scores differ from PyTorch by {figures['max_abs_diff']:.2e} > {max_abs}"
        )
    return figures


def run_batches(run: Callable[[Feeds], FloatArray], batches: list[Feeds]) -> FloatArray:
    return np.concatenate([run(b) for b in batches], axis=0)


def validate(
    spec: TowerSpec,
    onnx_path: Path,
    torch_run: Callable[[Feeds], FloatArray],
    probe: RankingProbe,
    *,
    fp16: bool = False,
) -> dict[str, Any]:
    """Contract check, per-output tolerance and ranking agreement of one graph against PyTorch."""
    check_graph(spec, onnx_path)
    sess = session(onnx_path)
    return validate_runner(spec, lambda f: sess.run(None, f)[0], torch_run, probe, fp16=fp16)


def validate_runner(
    spec: TowerSpec,
    run: Callable[[Feeds], FloatArray],
    torch_run: Callable[[Feeds], FloatArray],
    probe: RankingProbe,
    *,
    fp16: bool = False,
    engine: str = "",
) -> dict[str, Any]:
    """Per-output tolerance and ranking agreement of any engine's outputs against PyTorch fp32."""
    got = run_batches(run, probe.batches)
    want = run_batches(torch_run, probe.batches)
    label = " ".join(filter(None, [spec.model.value, engine, "fp16" if fp16 else ""]))
    figures: dict[str, Any] = compare(
        spec,
        got,
        want,
        min_cosine=spec.fp16_min_cosine if fp16 else spec.min_cosine,
        max_abs=spec.fp16_max_abs_score if fp16 else spec.max_abs_score,
        label=label,
    )
    s_got, s_want = probe.to_scores(got), probe.to_scores(want)
    noise = float(np.abs(s_got - s_want).max())
    figures["top10_overlap"] = topk_agreement(s_got, s_want)
    figures["top10_agreement_within_noise"] = topk_agreement(s_got, s_want, tie=2 * noise)
    figures["ranking"] = f"{s_got.shape[0]} queries x {s_got.shape[1]} candidates"
    figures["rows"] = int(got.shape[0])
    if not fp16 and figures["top10_agreement_within_noise"] < 1.0:
        raise ToleranceError(
            f"{label}: top-10 ranking disagrees with PyTorch beyond numerical noise "
            f"(agreement {figures['top10_agreement_within_noise']:.3f}, "
            f"overlap {figures['top10_overlap']:.3f})"
        )
    return figures


def agreement_vs(candidate: Path, baseline: Path, probe: RankingProbe) -> dict[str, float]:
    """Plain top-10 overlap of one graph (e.g. int8) with another (fp32) on the same probe."""
    a, b = session(candidate), session(baseline)
    got = run_batches(lambda f: a.run(None, f)[0], probe.batches)
    want = run_batches(lambda f: b.run(None, f)[0], probe.batches)
    s_got, s_want = probe.to_scores(got), probe.to_scores(want)
    figures = {
        "agreement_top10": topk_agreement(s_got, s_want),
        "max_abs_diff": float(np.abs(got - want).max()),
    }
    if got.shape[1] > 1:
        cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        figures["min_cosine"] = float(cos.min())
    return figures


def feeds_from(mapping: Mapping[str, Any]) -> Feeds:
    return {k: np.ascontiguousarray(v) for k, v in mapping.items()}
