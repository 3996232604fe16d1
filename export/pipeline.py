"""The export pipeline: checkpoints -> ONNX towers -> validation -> optional int8/fp16/TensorRT -> manifest.

Every artifact goes through the same path whatever its weights (pretrained, partial or random), and the
manifest records which, so no figure measured on random weights can pass for a pretrained one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export import checkpoints, minilm, validate, variants
from export.checkpoints import Checkpoint
from export.errors import ExportError
from export.specs import CLIP_IMAGE, CLIP_TEXT, CROSS_ENCODER, MINILM, OPSET, TOWERS, Family, TowerSpec
from export.towers import (
    ClipImageTower,
    ClipTextTower,
    CrossEncoderTower,
    SentenceTower,
    load_clip,
    load_cross_encoder,
    load_sentence_encoder,
)
from vitrine.contracts import (
    CLIP_CONTEXT_LENGTH,
    CLIP_IMAGE_SIZE,
    RERANK_MAX_LENGTH,
    Model,
    Size,
    Tensor,
    Weights,
)
from vitrine.tokenization import (
    ClipTokenizer,
    PairTokenizer,
    build_clip_tokenizer_json,
    bundled_clip_bpe,
    write_pair_tokenizer_json,
)
from vitrine.torchscript import TorchSession

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INT8_MIN_AGREEMENT = 0.99
"""An int8 graph is served only where its top-10 agrees with fp32 at least this often (measured)."""

TOKENIZER_FILES = {
    Family.CLIP: Path("tokenizers/clip/tokenizer.json"),
    Family.CROSS_ENCODER: Path("tokenizers/cross_encoder/tokenizer.json"),
    Family.MINILM: minilm.TOKENIZER_FILE,
}


@dataclass(frozen=True)
class ExportConfig:
    out: Path = field(default=Path("var/artifacts"), metadata={"help": "artifact directory"})
    source: str = field(
        default=checkpoints.AUTO,
        metadata={"help": "auto (hub, else random weights) | random | hub id | checkpoint directory"},
    )
    clip_source: str = field(default="", metadata={"help": "CLIP source, overriding --source"})
    cross_encoder_source: str = field(
        default="", metadata={"help": "cross-encoder source, overriding --source"}
    )
    minilm_source: str = field(
        default="",
        metadata={"help": "sentence-encoder source, overriding --source (auto: the bundled real weights)"},
    )
    size: Size = field(default=Size.FULL, metadata={"help": "full (real architectures) or tiny (tests)"})
    seed: int = field(default=0, metadata={"help": "seed of random weights and validation inputs"})
    int8: bool = field(default=False, metadata={"help": "also write dynamically quantised int8 graphs"})
    fp16: bool = field(default=False, metadata={"help": "also write fp16 graphs (fp32 inputs/outputs)"})
    tensorrt: bool = field(default=False, metadata={"help": "also build TensorRT fp16 engines (GPU host)"})
    optimize: bool = field(
        default=False,
        metadata={
            "help": "also write graphs fused by onnxruntime's transformer optimizer, validated as fp32"
        },
    )
    torch_fp16: bool = field(
        default=False,
        metadata={
            "help": "also trace each tower in fp16 on the CUDA device (TorchScript), validated against "
            "fp32: the GPU target's path where onnxruntime-gpu is missing (CUDA host)"
        },
    )
    opset: int = field(default=OPSET, metadata={"help": "ONNX opset (>= 17)"})

    def source_for(self, family: Family) -> str:
        override = {
            Family.CLIP: self.clip_source,
            Family.CROSS_ENCODER: self.cross_encoder_source,
            Family.MINILM: self.minilm_source,
        }[family]
        return override or self.source


@dataclass
class ModelEntry:
    model: str
    path: str
    weights: str
    source: str
    size: str
    opset: int
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    validation: dict[str, Any]
    int8: dict[str, Any] | None = None
    fp16: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    optimized: dict[str, Any] | None = None
    torch_fp16: dict[str, Any] | None = None


@dataclass
class Manifest:
    root: Path
    size: str
    seed: int
    tokenizers: dict[str, str]
    models: dict[str, ModelEntry]
    durations_s: dict[str, float] = field(default_factory=dict)
    format: int = 1

    def entry(self, model: Model) -> ModelEntry:
        return self.models[model.value]

    def path(self, model: Model, variant: str = "fp32") -> Path:
        """Absolute path of a model's graph; ``variant`` is fp32, int8, fp16, optimized or torch_fp16."""
        entry = self.entry(model)
        if variant == "fp32":
            return self.root / entry.path
        extra = {
            "int8": entry.int8,
            "fp16": entry.fp16,
            "optimized": entry.optimized,
            "torch_fp16": entry.torch_fp16,
        }.get(variant)
        if not extra or "path" not in extra:
            raise KeyError(f"{model.value} has no {variant} graph in {self.root / MANIFEST}")
        return self.root / Path(entry.path).parent / extra["path"]

    def tokenizer(self, family: Family) -> Path:
        return self.root / self.tokenizers[family.value]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("root")
        return data

    def save(self) -> None:
        (self.root / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise ExportError(f"no {MANIFEST} in {root}: run `python -m export --out {root}` first")
        data = json.loads(path.read_text())
        models = {k: ModelEntry(**v) for k, v in data.pop("models").items()}
        return cls(root=Path(root), models=models, **data)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_runner(module: torch.nn.Module) -> Callable[[validate.Feeds], np.ndarray]:
    @torch.inference_mode()
    def run(feeds: validate.Feeds) -> np.ndarray:
        return module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

    return run


def export_onnx(
    spec: TowerSpec, module: torch.nn.Module, dummy: validate.Feeds, path: Path, opset: int
) -> None:
    """TorchScript-based exporter: one self-contained file and exact opset control (the dynamo exporter
    splits weights into a side file and cannot down-convert these graphs to opset 17)."""
    if opset < OPSET:
        raise ExportError(f"opset {opset} < {OPSET}: LayerNormalization would be decomposed (fp16 overflow)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(v) for v in dummy.values()),
            str(path),
            input_names=[t.name.value for t in spec.inputs],
            output_names=[t.name.value for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _dummy(spec: TowerSpec) -> validate.Feeds:
    """Tracing inputs; validation never reuses them."""
    if spec is CLIP_IMAGE:
        return {Tensor.PIXEL_VALUES.value: np.zeros((2, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE), np.float32)}
    if spec is MINILM:
        return minilm.dummy()
    ids = np.full((2, 16), 1000, np.int64)
    if spec is CLIP_TEXT:
        return {Tensor.INPUT_IDS.value: ids, Tensor.EOT_INDEX.value: np.array([[15], [9]], np.int64)}
    return {
        Tensor.INPUT_IDS.value: ids,
        Tensor.ATTENTION_MASK.value: np.ones_like(ids),
        Tensor.TOKEN_TYPE_IDS.value: np.zeros_like(ids),
    }


def probe_for(spec: TowerSpec, out: Path, seed: int) -> validate.RankingProbe:
    """Fresh validation inputs: serving-tokenized texts, random pixels, (query, passage) pairs."""
    if spec is MINILM:
        return minilm.probe(out, seed)
    rng = np.random.default_rng(seed + 7919)
    cat = validate.catalog(seed + 104729)
    n = validate.QUERIES
    if spec is CLIP_TEXT:
        tok = ClipTokenizer.from_file(out / TOKENIZER_FILES[Family.CLIP])
        batches = []
        for texts in (validate.product_texts(n, seed + 1), validate.product_texts(4, seed + 2, long_every=1)):
            b = tok.encode_batch(texts)
            batches.append({Tensor.INPUT_IDS.value: b.input_ids, Tensor.EOT_INDEX.value: b.eot_index})
        return validate.RankingProbe(batches, lambda e: e[:n] @ cat.T)
    if spec is CLIP_IMAGE:
        batches = [
            {
                Tensor.PIXEL_VALUES.value: rng.standard_normal(
                    (n // 2, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
                ).astype(np.float32)
            }
            for _ in range(2)
        ]
        return validate.RankingProbe(batches, lambda e: e @ cat.T)
    pairs = PairTokenizer.from_file(out / TOKENIZER_FILES[Family.CROSS_ENCODER], RERANK_MAX_LENGTH)
    queries = validate.product_texts(validate.RERANK_QUERIES, seed + 3)
    batches = []
    for i, query in enumerate(queries):
        passages = validate.product_passages(validate.RERANK_PASSAGES, seed + 100 + i)
        p = pairs.encode(query, passages)
        batches.append(
            {
                Tensor.INPUT_IDS.value: p.input_ids,
                Tensor.ATTENTION_MASK.value: p.attention_mask,
                Tensor.TOKEN_TYPE_IDS.value: p.token_type_ids,
            }
        )
    return validate.RankingProbe(batches, lambda s: s.reshape(validate.RERANK_QUERIES, -1))


def _write_tokenizers(out: Path, ckpts: dict[Family, Checkpoint]) -> None:
    clip_json = out / TOKENIZER_FILES[Family.CLIP]
    if (
        ckpts[Family.CLIP].weights is Weights.PRETRAINED
        and (ckpts[Family.CLIP].path / "tokenizer.json").is_file()
    ):
        clip_json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ckpts[Family.CLIP].path / "tokenizer.json", clip_json)
    else:
        build_clip_tokenizer_json(bundled_clip_bpe(), clip_json)
    write_pair_tokenizer_json(
        ckpts[Family.CROSS_ENCODER].path / "tokenizer.json", out / TOKENIZER_FILES[Family.CROSS_ENCODER]
    )
    minilm.write_tokenizer(out, ckpts[Family.MINILM])
    # The reference tokenizer must not inherit truncation/padding baked into a copied tokenizer.json either.
    write_pair_tokenizer_json(
        ckpts[Family.CROSS_ENCODER].path / "tokenizer.json",
        ckpts[Family.CROSS_ENCODER].path / "tokenizer.json",
    )


def export_all(cfg: ExportConfig) -> Manifest:
    """Export, validate and describe all three towers into ``cfg.out``; raise ExportError on any failure."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written export must not look finished
    steps = 2 + len(TOWERS) * (2 + cfg.int8 + cfg.fp16 + cfg.tensorrt + cfg.optimize + cfg.torch_fp16)
    durations: dict[str, float] = {}
    started = time.perf_counter()
    bar = tqdm(total=steps, desc="export", unit="step", disable=None)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        result = fn()
        durations[name] = round(time.perf_counter() - t0, 2)
        bar.update()
        return result

    try:
        ckpts: dict[Family, Checkpoint] = {}
        for family in Family:
            ckpts[family] = step(
                f"checkpoint {family.value}",
                functools.partial(
                    checkpoints.obtain,
                    family,
                    cfg.source_for(family),
                    cfg.size,
                    cfg.seed,
                    out / "checkpoints" / family.value,
                ),
            )
        _write_tokenizers(out, ckpts)
        clip = load_clip(ckpts[Family.CLIP].path)
        cross = load_cross_encoder(ckpts[Family.CROSS_ENCODER].path)
        modules: dict[Model, torch.nn.Module] = {
            Model.CLIP_TEXT_ENCODER: ClipTextTower(clip).eval(),
            Model.CLIP_IMAGE_ENCODER: ClipImageTower(clip).eval(),
            Model.CROSS_ENCODER: CrossEncoderTower(cross).eval(),
            Model.MINILM_ENCODER: SentenceTower(load_sentence_encoder(ckpts[Family.MINILM].path)).eval(),
        }
        entries = {}
        for spec in TOWERS:
            entries[spec.model.value] = _export_tower(
                cfg, spec, modules[spec.model], ckpts[spec.family], step
            )
    finally:
        bar.close()
    durations["total"] = round(time.perf_counter() - started, 2)
    manifest = Manifest(
        root=out,
        size=cfg.size.value,
        seed=cfg.seed,
        tokenizers={f.value: str(p) for f, p in TOKENIZER_FILES.items()},
        models=entries,
        durations_s=durations,
    )
    manifest.save()
    return manifest


def _export_tower(
    cfg: ExportConfig,
    spec: TowerSpec,
    module: torch.nn.Module,
    ckpt: Checkpoint,
    step: Callable[[str, Callable[[], Any]], Any],
) -> ModelEntry:
    out = Path(cfg.out)
    name = spec.model.value
    path = out / name / "model.onnx"
    step(f"export {name}", lambda: export_onnx(spec, module, _dummy(spec), path, cfg.opset))
    probe = probe_for(spec, out, cfg.seed)
    run_torch = _torch_runner(module)
    figures = step(f"validate {name}", lambda: validate.validate(spec, path, run_torch, probe))
    entry = ModelEntry(
        model=name,
        path=str(path.relative_to(out)),
        weights=ckpt.weights.value,
        source=ckpt.source,
        size=cfg.size.value,
        opset=cfg.opset,
        sha256=sha256(path),
        inputs=[t.to_dict() for t in spec.inputs],
        outputs=[t.to_dict() for t in spec.outputs],
        validation=figures,
    )
    if cfg.int8:
        q = path.with_name("model.int8.onnx")

        def quantise() -> dict[str, Any]:
            """Try each scheme, most int8 first; keep the first that passes the rule (else the last)."""
            attempts: list[dict[str, Any]] = []
            for scheme, exclude in variants.int8_schemes(path):
                variants.int8(path, q, exclude)
                agreement = validate.agreement_vs(q, path, probe)
                attempts.append({"scheme": scheme, "fp32_matmuls": len(exclude), **agreement})
                if agreement["agreement_top10"] >= INT8_MIN_AGREEMENT:
                    break
            chosen = attempts[-1]
            return {
                "path": q.name,
                "sha256": sha256(q),
                **chosen,
                "servable": chosen["agreement_top10"] >= INT8_MIN_AGREEMENT,
                "rule": f"top-10 agreement with fp32 >= {INT8_MIN_AGREEMENT} ({probe_description(spec)})",
                "attempts": attempts,
            }

        entry.int8 = step(f"int8 {name}", quantise)
        if not entry.int8["servable"]:
            log.warning(
                "int8 %s not servable: top-10 agreement %.3f < %.2f",
                name,
                entry.int8["agreement_top10"],
                INT8_MIN_AGREEMENT,
            )
    if cfg.fp16:
        h = path.with_name("model.fp16.onnx")

        def half() -> dict[str, Any]:
            variants.fp16(path, h)
            try:
                result = validate.validate(spec, h, run_torch, probe, fp16=True)
                status = "validated"
            except ExportError:
                raise
            except Exception as exc:  # onnxruntime's CPU provider lacks fp16 kernels for some ops
                result, status = {"reason": f"{type(exc).__name__}: {str(exc)[:200]}"}, "unvalidated"
            return {"path": h.name, "sha256": sha256(h), "status": status, "validation": result}

        entry.fp16 = step(f"fp16 {name}", half)
    if cfg.optimize:
        o = path.with_name(OPTIMIZED_FILE)

        def fuse() -> dict[str, Any]:
            """Fused graph, held to the fp32 rules (tolerance against PyTorch) and to top-10 agreement
            with the fp32 graph; served only where both hold."""
            config = _transformer_config(module)
            fused = variants.transformer_optimized(
                path, o, variants.TRANSFORMER_MODEL_TYPE[name], config.num_attention_heads, config.hidden_size
            )
            try:
                result, status = validate.validate(spec, o, run_torch, probe), "validated"
            except ExportError as exc:
                result, status = {"reason": str(exc)[:300]}, "failed"
            agreement = validate.agreement_vs(o, path, probe)
            servable = status == "validated" and agreement["agreement_top10"] >= INT8_MIN_AGREEMENT
            return {
                "path": o.name,
                "sha256": sha256(o),
                **fused,
                "status": status,
                "validation": result,
                **agreement,
                "servable": servable,
                "rule": f"fp32 tolerances and top-10 agreement with fp32 >= {INT8_MIN_AGREEMENT}",
            }

        entry.optimized = step(f"optimize {name}", fuse)
        if not entry.optimized["servable"]:
            log.warning("fused %s not servable: %s", name, entry.optimized["status"])
    if cfg.torch_fp16:
        entry.torch_fp16 = step(
            f"torch fp16 {name}", lambda: torch_fp16_variant(spec, module, path.parent, run_torch, probe)
        )
    if cfg.tensorrt:
        reason = variants.tensorrt_unavailable()
        if reason:
            log.warning("%s: %s", name, reason)
            entry.tensorrt = step(f"tensorrt {name}", lambda: {"status": "skipped", "reason": reason})
        else:
            seq = CLIP_CONTEXT_LENGTH if spec is CLIP_TEXT else RERANK_MAX_LENGTH
            entry.tensorrt = step(
                f"tensorrt {name}",
                lambda: variants.tensorrt_engine(
                    spec, path, path.with_name("model.plan"), max_batch=64, max_seq=seq
                ),
            )
    return entry


OPTIMIZED_FILE = "model.optimized.onnx"


def torch_fp16_variant(
    spec: TowerSpec,
    module: torch.nn.Module,
    folder: Path,
    run_torch: Callable[[validate.Feeds], np.ndarray],
    probe: validate.RankingProbe,
    device: str = "cuda",
) -> dict[str, Any]:
    """The tower traced in fp16 on ``device`` and held to the fp16 rules against PyTorch fp32 plus the
    fp32 rule's top-10 agreement (rank swaps only between scores closer than the measured fp16 noise);
    served by the GPU-embedded target only where both hold (skipped without CUDA)."""
    if device == "cuda" and (reason := variants.cuda_unavailable()) is not None:
        log.warning("%s: %s", spec.model.value, reason)
        return {"status": "skipped", "reason": reason, "servable": False}
    dst = folder / variants.TORCH_FP16_FILE
    variants.torchscript(module, _dummy(spec), dst, device, half=True)
    session = TorchSession(dst, device)
    try:
        result = validate.validate_runner(
            spec, lambda f: session.run(None, f)[0], run_torch, probe, fp16=True, engine="torchscript"
        )
        status = "validated"
    except ExportError as exc:
        result, status = {"reason": str(exc)[:300]}, "failed"
    agreement = result.get("top10_agreement_within_noise", 0.0)
    return {
        "path": dst.name,
        "sha256": sha256(dst),
        "device": device,
        "status": status,
        "validation": result,
        "servable": status == "validated" and agreement >= 1.0,
        "rule": "fp16 tolerances, and the top 10 of PyTorch fp32 wherever scores differ by more than the "
        "measured fp16 noise",
    }


def _transformer_config(module: torch.nn.Module) -> Any:
    """The transformers config (heads, hidden size) of a tower's encoder, whichever tower it is."""
    for attribute in ("model", "text_model", "vision_model"):
        inner = getattr(module, attribute, None)
        if inner is not None:
            return inner.config
    raise ExportError(f"{type(module).__name__} has no transformer encoder to optimise")


def probe_description(spec: TowerSpec) -> str:
    if spec is CROSS_ENCODER:
        return f"{validate.RERANK_QUERIES} queries x {validate.RERANK_PASSAGES} passages"
    if spec is MINILM:
        return f"{validate.QUERIES} queries x {minilm.CORPUS} passages, both embedded"
    return f"{validate.QUERIES} queries x {validate.CATALOG_SIZE} random catalog vectors"
