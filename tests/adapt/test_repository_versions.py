"""The model-repository spec declares encoder versions; rendering pins every ensemble to one."""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from adapt import reranker
from adapt.heads import AdapterPair, HeadKind
from adapt.serving import export_version
from model_repository.render import render_repository
from vitrine.contracts import Model, ensemble_name
from vitrine.reranking import TRAINED_HERE, WEIGHTS_PARAMETER


def _config(repo: Path, name: str) -> mc.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())


def _step_versions(config: mc.ModelConfig) -> dict[str, int]:
    return {s.model_name: s.model_version for s in config.ensemble_scheduling.step}


def test_without_adapters_only_version_1_is_served(tiny_artifacts: Path, tmp_path: Path) -> None:
    repo = render_repository(tiny_artifacts, tmp_path / "repo")
    assert list(_config(repo, Model.CLIP_IMAGE_ENCODER.value).version_policy.specific.versions) == [1]
    assert _step_versions(_config(repo, Model.EMBED_IMAGE.value))[Model.CLIP_IMAGE_ENCODER.value] == 1
    assert not (repo / ensemble_name(Model.EMBED_IMAGE, 2)).exists()
    # The rerank ensemble states its cross-encoder's weights (the test export's are random): the one
    # statement the gateway reads to decide whether searches re-rank by default.
    assert _config(repo, Model.RERANK.value).parameters[WEIGHTS_PARAMETER].string_value == "random"


def test_an_adapted_version_gets_its_own_pinned_ensembles(tiny_artifacts: Path, tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    export_version(AdapterPair(512, 32, HeadKind.RESIDUAL, 0.2, 0.07), art, "2", {}, measure=False)
    repo = render_repository(art, tmp_path / "repo")
    for encoder, ensemble in (
        (Model.CLIP_TEXT_ENCODER, Model.EMBED_TEXT),
        (Model.CLIP_IMAGE_ENCODER, Model.EMBED_IMAGE),
    ):
        assert list(_config(repo, encoder.value).version_policy.specific.versions) == [1, 2]
        assert (repo / encoder.value / "2" / "model.onnx").is_file()
        assert _step_versions(_config(repo, ensemble.value))[encoder.value] == 1
        pinned = _config(repo, ensemble_name(ensemble, 2))
        assert pinned.name == ensemble_name(ensemble, 2) == f"{ensemble.value}_v2"
        assert _step_versions(pinned)[encoder.value] == 2
        assert [i.name for i in pinned.input] == [i.name for i in _config(repo, ensemble.value).input]
    # This version ships no cross-encoder: rerank stays pinned to version 1 and gets no rerank_v2.
    assert list(_config(repo, Model.CROSS_ENCODER.value).version_policy.specific.versions) == [1]
    assert _step_versions(_config(repo, Model.RERANK.value))[Model.CROSS_ENCODER.value] == 1
    assert not (repo / ensemble_name(Model.RERANK, 2)).exists()
    # Models without versions keep following their latest (and only) version.
    assert _step_versions(_config(repo, Model.RERANK.value))[Model.RERANK_TOKENIZE.value] == -1


def test_a_trained_cross_encoder_gets_its_version_and_pinned_rerank(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    cross = reranker.Encoder(art, layers=1)
    manifest = export_version(
        AdapterPair(512, 32, HeadKind.RESIDUAL, 0.2, 0.07), art, "2", {}, measure=False, cross_encoder=cross
    )
    entry = manifest["models"][Model.CROSS_ENCODER.value]
    assert entry["validation"]["max_abs_diff"] < 1e-3 and entry["trained_blocks"] == 1
    repo = render_repository(art, tmp_path / "repo")
    assert list(_config(repo, Model.CROSS_ENCODER.value).version_policy.specific.versions) == [1, 2]
    assert (repo / Model.CROSS_ENCODER.value / "2" / "model.onnx").is_file()
    assert _step_versions(_config(repo, Model.RERANK.value))[Model.CROSS_ENCODER.value] == 1
    assert _step_versions(_config(repo, ensemble_name(Model.RERANK, 2)))[Model.CROSS_ENCODER.value] == 2
    weights = {
        name: _config(repo, name).parameters[WEIGHTS_PARAMETER].string_value
        for name in (Model.RERANK.value, ensemble_name(Model.RERANK, 2))
    }
    assert weights == {Model.RERANK.value: "random", ensemble_name(Model.RERANK, 2): TRAINED_HERE}


def test_a_version_fused_onto_another_export_is_not_served(tiny_artifacts: Path, tmp_path: Path) -> None:
    import json

    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    export_version(AdapterPair(512, 32, HeadKind.RESIDUAL, 0.2, 0.07), art, "2", {}, measure=False)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["models"][Model.CLIP_IMAGE_ENCODER.value]["sha256"] = "0" * 64  # as if re-exported since
    (art / "manifest.json").write_text(json.dumps(manifest))
    repo = render_repository(art, tmp_path / "repo")
    assert list(_config(repo, Model.CLIP_IMAGE_ENCODER.value).version_policy.specific.versions) == [1]
    assert not (repo / ensemble_name(Model.EMBED_IMAGE, 2)).exists()
    assert list(_config(repo, Model.CLIP_TEXT_ENCODER.value).version_policy.specific.versions) == [1, 2]
