"""Write a Triton model repository for one target from the artifacts of an export.

One spec (``model_repository.spec``) renders both targets; this module only places files: a
``config.pbtxt`` per model, the Python-backend sources (kept once, under ``backends/``), the ONNX graphs
(hard-linked where the filesystem allows, else copied, so the repository can be mounted into a container)
and the tokenizer files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from model_repository.spec import (
    ENCODER_SOURCE,
    ONNX_FILE,
    SPEC_BY_MODEL,
    SPECS,
    TOKENIZER_FILE,
    VERSION,
    ModelSpec,
    Role,
    render_config,
    to_pbtxt,
    versioned_steps,
)
from vitrine.contracts import Model, Target, ensemble_name
from vitrine.reranking import TRAINED_HERE, UNKNOWN, WEIGHTS_PARAMETER

log = logging.getLogger(__name__)

BACKENDS = Path(__file__).resolve().parent / "backends"
INT8_FILE = "model.int8.onnx"


class Precision(str, Enum):
    FP32 = "fp32"
    INT8 = "int8"  # dynamic int8 graphs, only where the export measured agreement and marked them servable
    OPTIMIZED = "optimized"  # fp32 graphs fused by onnxruntime's transformer optimizer, where validated


class RenderError(RuntimeError):
    """The artifacts cannot produce the requested repository; the message says what is missing."""


@dataclass(frozen=True)
class Layout:
    """One model's CPU instance layout, overriding the spec's: how layouts are measured side by side
    (``benchmarks.triton --layouts``) before the spec adopts one."""

    instances: int
    threads: int
    batching: bool = True
    """True: the spec's batcher, on the CPU too; False: none."""
    adaptive: bool = False
    """Every core for a lone request, a share while a sibling runs (``ModelSpec.adaptive_threads``);
    ``threads`` is then unused."""

    def __post_init__(self) -> None:
        if self.instances < 1 or self.threads < 0:
            raise ValueError(f"a layout needs >= 1 instance and >= 0 threads, got {self}")

    def label(self) -> str:
        threads = "adaptive" if self.adaptive else str(self.threads)
        return f"{self.instances}x{threads}" + ("" if self.batching else " unbatched")


@dataclass(frozen=True)
class RenderOptions:
    target: Target = Target.CPU
    precision: Precision = Precision.FP32
    dynamic_batching: bool = True
    queue_delay_us: int | None = None  # None: the spec's measured choice
    layouts: tuple[tuple[Model, Layout], ...] = ()
    """CPU target: per-model instance count, onnxruntime threads and batcher, replacing the spec's."""
    response_cache_mb: int = 0
    """> 0: Triton's response cache (this many MB, ``response_cache_args``) answers repeated requests to
    the cacheable ensembles (embed_text, embed_image, rerank) without running a model; 0: off."""

    @property
    def response_cache(self) -> bool:
        return self.response_cache_mb > 0

    def spec_for(self, spec: ModelSpec) -> ModelSpec:
        layout = dict(self.layouts).get(spec.model)
        if layout is None or self.target is not Target.CPU:
            return spec
        return replace(
            spec,
            instances={**spec.instances, Target.CPU: layout.instances},
            cpu_threads=layout.threads,
            adaptive_threads=layout.adaptive,
            batching=replace(spec.batching, cpu=True) if layout.batching and spec.batching else None,
        )


def response_cache_args(options: RenderOptions) -> tuple[str, ...]:
    """tritonserver flags for the repository ``options`` render: the local response cache, sized."""
    if not options.response_cache:
        return ()
    return (f"--cache-config=local,size={options.response_cache_mb * 1024 * 1024}",)


def load_manifest(artifacts: Path) -> dict[str, Any]:
    path = artifacts / "manifest.json"
    if not path.is_file():
        raise RenderError(f"{path} not found: run the export first (python -m export --out {artifacts})")
    return dict(json.loads(path.read_text()))


def int8_servable(manifest: dict[str, Any], name: str) -> bool:
    """Whether the export marked this model's int8 graph servable (agreement measured and sufficient)."""
    entry = manifest.get("models", {}).get(name, {}) if isinstance(manifest.get("models"), dict) else {}
    int8 = entry.get("int8") if isinstance(entry, dict) else None
    if isinstance(int8, dict):
        return bool(int8.get("servable", False))
    return False


def _place(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise RenderError(f"artifact {src} is missing; re-run the export")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _onnx_source(artifacts: Path, spec: ModelSpec, options: RenderOptions, manifest: dict[str, Any]) -> Path:
    """The graph to serve: the manifest's entry (fp32, or int8 where it is marked servable)."""
    assert spec.artifact is not None
    entry = manifest.get("models", {}).get(spec.model.value) or {}
    fp32 = artifacts / str(entry.get("path") or Path(spec.artifact) / ONNX_FILE)
    if options.precision is Precision.INT8:
        if int8_servable(manifest, spec.model.value):
            return fp32.parent / str(entry["int8"].get("path", INT8_FILE))
        log.warning(
            "int8 not servable for this model; serving fp32",
            extra={"model": spec.model.value, "reason": "manifest does not mark int8 servable"},
        )
    if options.precision is Precision.OPTIMIZED:
        fused = entry.get("optimized")
        if isinstance(fused, dict) and fused.get("servable"):
            return fp32.parent / str(fused["path"])
        log.warning(
            "no validated fused graph for this model; serving fp32",
            extra={"model": spec.model.value, "reason": "export without --optimize, or validation failed"},
        )
    return fp32


def _place_torch_fallbacks(artifacts: Path, repository: Path) -> dict[str, str]:
    """Beside each encoder's graph, the export's PyTorch fp16 trace where it was validated (``export
    --torch-fp16`` on a CUDA host): what the GPU-embedded encoder runs without ``onnxruntime-gpu``.
    Returns model name -> file name."""
    placed: dict[str, str] = {}
    models = load_manifest(artifacts).get("models", {})
    for spec in SPECS:
        entry = models.get(spec.model.value) or {}
        trace = entry.get("torch_fp16")
        if spec.role is not Role.ENCODER or not (isinstance(trace, dict) and trace.get("servable")):
            continue
        src = artifacts / Path(str(entry["path"])).parent / str(trace["path"])
        _place(src, repository / spec.model.value / VERSION / src.name)
        placed[spec.model.value] = src.name
    return placed


ADAPTED_DIR = "versions"
"""Adapted encoder versions live under ``<artifacts>/versions/<v>/<model>/model.onnx`` (``adapt.serving``)."""


def adapted_versions(artifacts: Path) -> dict[Model, list[int]]:
    """Versions beyond 1 present in the artifacts for each versioned encoder, ascending. A version fused
    onto a tower other than the exported one (its manifest's ``base_sha256`` differs from the export
    manifest's) is stale and left out, with a warning: it would serve another model's embeddings."""
    found: dict[Model, list[int]] = {}
    root = artifacts / ADAPTED_DIR
    if not root.is_dir():
        return found
    exported = load_manifest(artifacts).get("models", {})
    for spec in SPECS:
        if not spec.versioned:
            continue
        versions = []
        for d in root.iterdir():
            if not (
                d.name.isdigit()
                and int(d.name) > int(VERSION)
                and (d / spec.model.value / ONNX_FILE).is_file()
            ):
                continue
            meta = d / "manifest.json"
            entry = (
                json.loads(meta.read_text()).get("models", {}).get(spec.model.value, {})
                if meta.is_file()
                else {}
            )
            base = entry.get("base_sha256")
            if base and base != exported.get(spec.model.value, {}).get("sha256", base):
                log.warning(
                    "adapted version is stale (fused onto another export); not served",
                    extra={"model": spec.model.value, "version": d.name},
                )
                continue
            versions.append(int(d.name))
        found[spec.model] = sorted(versions)
    return found


def reranker_weights(artifacts: Path, version: int) -> str:
    """The weights of cross-encoder ``version``: the export manifest's for version 1, ``trained here``
    for a version ``vitrine adapt`` exported (its manifest lists the trained cross-encoder). Rendered as
    each ``rerank`` ensemble's ``weights`` parameter, the one statement the gateway reads
    (``vitrine.reranking``)."""
    if version == int(VERSION):
        entry = load_manifest(artifacts).get("models", {}).get(Model.CROSS_ENCODER.value) or {}
        return str(entry.get("weights") or UNKNOWN)
    meta = artifacts / ADAPTED_DIR / str(version) / "manifest.json"
    models = json.loads(meta.read_text()).get("models", {}) if meta.is_file() else {}
    entry = models.get(Model.CROSS_ENCODER.value)
    return str(entry.get("weights", TRAINED_HERE)) if isinstance(entry, dict) else UNKNOWN


def _ensemble_parameters(spec: ModelSpec, artifacts: Path, version: int) -> dict[str, str]:
    if spec.model is Model.RERANK:
        return {WEIGHTS_PARAMETER: reranker_weights(artifacts, version)}
    return {}


def _render_pinned_ensembles(
    spec: ModelSpec, artifacts: Path, out: Path, options: RenderOptions, adapted: dict[Model, list[int]]
) -> None:
    """One ensemble per adapted version that every versioned step of ``spec`` has (``ensemble_name``)."""
    steps = versioned_steps(spec)
    if not steps:
        return
    common = set.intersection(*(set(adapted.get(m, [])) for m in steps))
    for v in sorted(common):
        name = ensemble_name(spec.model, v)
        (out / name / VERSION).mkdir(parents=True, exist_ok=True)
        config = render_config(
            spec,
            options.target,
            versions=[v],
            name=name,
            response_cache=options.response_cache,
            parameters=_ensemble_parameters(spec, artifacts, v),
        )
        (out / name / "config.pbtxt").write_text(to_pbtxt(config))


def render_repository(artifacts: Path, out: Path, options: RenderOptions | None = None) -> Path:
    """Render every model of the spec into ``out`` (created or refreshed in place) and return it."""
    options = options or RenderOptions()
    if options.target is Target.GPU_EMBEDDED:
        from model_repository.gpu_embedded import move_encoders_to_gpu

        repository = render_repository(artifacts, out, replace(options, target=Target.CPU))
        fallbacks = _place_torch_fallbacks(artifacts.resolve(), repository)
        move_encoders_to_gpu(repository, options.dynamic_batching, options.queue_delay_us, fallbacks)
        return repository
    artifacts = artifacts.resolve()
    manifest = load_manifest(artifacts)
    if options.precision is Precision.INT8 and not any(
        int8_servable(manifest, s.model.value) for s in SPECS if s.role is Role.ENCODER
    ):
        raise RenderError(
            "--precision int8 requested but the manifest marks no int8 graph servable "
            "(the export keeps int8 only where its agreement with fp32 was measured and sufficient)"
        )
    out.mkdir(parents=True, exist_ok=True)
    adapted = adapted_versions(artifacts)
    for spec in map(options.spec_for, SPECS):
        model_dir = out / spec.model.value
        version_dir = model_dir / VERSION
        params: dict[str, str] = {}
        if spec.role is not Role.ENSEMBLE:
            version_dir.mkdir(parents=True, exist_ok=True)
        if spec.role is Role.ENCODER:
            _place(_onnx_source(artifacts, spec, options, manifest), version_dir / ONNX_FILE)
            if options.target is Target.CPU:
                shutil.copyfile(BACKENDS / ENCODER_SOURCE, version_dir / "model.py")
                params["onnx_file"] = ONNX_FILE
                if spec.tokenizes is not None:  # one tokenizer for every version, beside them
                    tokenizer = SPEC_BY_MODEL[spec.tokenizes]
                    assert tokenizer.artifact is not None
                    _place(artifacts / tokenizer.artifact / TOKENIZER_FILE, model_dir / TOKENIZER_FILE)
            for v in adapted.get(spec.model, []):
                _place(
                    artifacts / ADAPTED_DIR / str(v) / spec.model.value / ONNX_FILE,
                    model_dir / str(v) / ONNX_FILE,
                )
                if options.target is Target.CPU:
                    shutil.copyfile(BACKENDS / ENCODER_SOURCE, model_dir / str(v) / "model.py")
        elif spec.role is Role.PREPROCESS:
            assert spec.source is not None
            shutil.copyfile(BACKENDS / spec.source, version_dir / "model.py")
            for name in spec.files:
                assert spec.artifact is not None
                _place(artifacts / spec.artifact / name, version_dir / name)
        else:
            version_dir.mkdir(parents=True, exist_ok=True)  # Triton wants a version directory for ensembles
            params.update(_ensemble_parameters(spec, artifacts, int(VERSION)))
        config = render_config(
            spec,
            options.target,
            dynamic_batching=options.dynamic_batching,
            queue_delay_us=options.queue_delay_us,
            parameters=params,
            versions=[int(VERSION), *adapted.get(spec.model, [])] if spec.versioned else (),
            response_cache=options.response_cache,
        )
        (model_dir / "config.pbtxt").write_text(to_pbtxt(config))
        if spec.role is Role.ENSEMBLE:
            _render_pinned_ensembles(spec, artifacts, out, options, adapted)
    log.info("rendered model repository", extra={"out": str(out), "target": options.target.value})
    return out


def render_version(
    spec: ModelSpec, artifacts: Path, out: Path, version: int, options: RenderOptions | None = None
) -> Path:
    """One version of an encoder from artifacts of its own (a trained recommender) into the repository
    ``out``, beside the versions already there; returns the version directory.

    The version directory is assembled under a temporary name and renamed into place, so a server that
    loads the model never sees half a version; the config (the same for every version) is rewritten.
    """
    options = options or RenderOptions()
    if spec.role is not Role.ENCODER:
        raise RenderError(f"{spec.model.value} is not an encoder; only encoders are versioned")
    artifacts = artifacts.resolve()
    manifest = load_manifest(artifacts)
    model_dir = out / spec.model.value
    final = model_dir / str(version)
    if final.exists():
        raise RenderError(f"{final} already exists: versions are never overwritten")
    staging = model_dir / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _place(_onnx_source(artifacts, spec, options, manifest), staging / ONNX_FILE)
    params: dict[str, str] = {}
    if options.target is Target.CPU:
        shutil.copyfile(BACKENDS / ENCODER_SOURCE, staging / "model.py")
        params["onnx_file"] = ONNX_FILE
    config = render_config(spec, options.target, dynamic_batching=options.dynamic_batching, parameters=params)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))
    staging.rename(final)
    return final
