"""The Kubernetes deployment, checked offline: no cluster runs here, and none ran these manifests.

The committed manifests must be what the renderer writes from the services' typed configs today; every
object must deserialize into the ``kubernetes`` client's model of its kind; every container's arguments
must parse with its program's own parser and give back the rendered config. The checks are shown to
fire: on wrong types, missing required fields and unknown fields, and on a flag renamed in a copy of the
gateway's config while the manifests keep the old name.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ENV_PREFIX as GATEWAY_ENV_PREFIX
from gateway.config import GatewayConfig
from loadtest.observability import DASHBOARD_FILE
from operations.deploy import DeployConfig, IndexBackend, load, render
from operations.deploy.checks import (
    Program,
    check_containers,
    check_documents,
    check_object,
    config_program,
    default_programs,
    triton_options,
    triton_program,
)
from operations.deploy.services import EXTERNAL_SECRETS, gateway_config, index_config
from operations.deploy.workloads import TRITON_QUEUE_METRIC

ROOT = Path(__file__).resolve().parents[2]
Command = tuple[str, ...]
VARIANTS = {
    "cluster": DeployConfig(),
    "small": DeployConfig(index=IndexBackend.FAISS, tls=False, gateway_min_replicas=1, triton_max_replicas=2),
}
"""deploy/<name>/ -> the config it renders from (deploy/README.md: `vitrine deploy render --out ...`)."""


@pytest.fixture(scope="module")
def programs() -> dict[tuple[str, ...], Program]:
    return default_programs()


def _objects(files: dict[str, str]) -> dict[str, list[Any]]:
    return {n: list(yaml.safe_load_all(t)) for n, t in files.items()}


def _find(docs: dict[str, list[Any]], kind: str, name: str) -> dict[str, Any]:
    for objs in docs.values():
        for o in objs:
            if isinstance(o, dict) and o.get("kind") == kind and o["metadata"]["name"] == name:
                return o
    raise AssertionError(f"no {kind}/{name}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_committed_manifests_are_what_the_configs_render(variant: str) -> None:
    directory = ROOT / "deploy" / variant
    rendered = render(VARIANTS[variant])
    committed = {p.name: p.read_text() for p in sorted(directory.glob("*.yaml"))}
    stale = sorted(n for n in rendered.keys() | committed.keys() if rendered.get(n) != committed.get(n))
    assert not stale, (
        f"deploy/{variant}/ differs from the render in {stale}: render it again (deploy/README.md)"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_and_container_passes_the_offline_checks(
    variant: str, programs: dict[tuple[str, ...], Program]
) -> None:
    deploy = VARIANTS[variant]
    exact = {
        **programs,
        ("python", "-m", "gateway"): config_program(
            GatewayConfig, GATEWAY_ENV_PREFIX, gateway_config(deploy)
        ),
        ("python", "-m", "index_service"): config_program(
            type(index_config(deploy)), "VITRINE_INDEX", index_config(deploy)
        ),
    }
    documents = load(ROOT / "deploy" / variant)
    kinds = sorted({d["kind"] for docs in documents.values() for d in docs if "kind" in d})
    assert check_documents(documents, exact) == []
    expected = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "PodDisruptionBudget",
                "Service"} | ({"StatefulSet"} if deploy.index is IndexBackend.FAISS else set())  # fmt: skip
    assert set(kinds) == expected


def test_the_models_refuse_wrong_types_missing_fields_and_unknown_fields() -> None:
    gateway = _find(_objects(render()), "Deployment", "vitrine-gateway")
    assert check_object(gateway) == []
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "two"
    assert "replicas" in " ".join(check_object(wrong_type))
    missing = copy.deepcopy(gateway)
    del missing["spec"]["template"]["spec"]["containers"]
    assert "containers" in " ".join(check_object(missing))
    unknown = copy.deepcopy(gateway)
    unknown["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert check_object(unknown) == [
        "Deployment/vitrine-gateway: .spec.template.spec.containers[0].readinesProbe: "
        "not a field of V1Container"
    ]
    assert check_object({"apiVersion": "v1", "kind": "Deploymant"}) == [
        "V1Deploymant: no such kind in the kubernetes client"
    ]


def _renamed(cls: type, old: str, new: str) -> type:
    """A copy of a config dataclass with one field renamed: what a refactor does to a flag."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        else:
            kw["default_factory"] = f.default_factory
        fields.append((new if f.name == old else f.name, hints[f.name], dataclasses.field(**kw)))
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True)


def test_a_renamed_flag_fails_the_check_until_the_manifests_are_rendered_again() -> None:
    deploy = DeployConfig()
    gateway = _find(_objects(render(deploy)), "Deployment", "vitrine-gateway")
    current: dict[Command, Program] = {
        ("python", "-m", "gateway"): config_program(GatewayConfig, GATEWAY_ENV_PREFIX, gateway_config(deploy))
    }
    assert check_containers(gateway, current) == []

    renamed: dict[Command, Program] = {("python", "-m", "gateway"): config_program(
        _renamed(GatewayConfig, "triton_url", "triton_urls"), GATEWAY_ENV_PREFIX
    )}  # fmt: skip
    problems = check_containers(gateway, renamed)
    assert len(problems) == 1 and "unrecognized arguments: --triton-url=dns:///triton." in problems[0]

    # A secret travels in the environment: renaming its field leaves a variable nothing reads.
    secret: dict[Command, Program] = {("python", "-m", "gateway"): config_program(
        _renamed(GatewayConfig, "index_api_key", "index_key"), GATEWAY_ENV_PREFIX
    )}  # fmt: skip
    assert check_containers(gateway, secret) == [
        "container gateway: VITRINE_GATEWAY_INDEX_API_KEY names no field of its config"
    ]

    # A value the parser accepts but that is not what was rendered is caught too.
    changed = copy.deepcopy(gateway)
    args = changed["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--max-in-flight=64")] = "--max-in-flight=65"
    assert "max-in-flight" in " ".join(check_containers(changed, current))


def test_triton_arguments_are_options_the_binary_knows() -> None:
    options = triton_options()
    assert options["grpc-port"] == "integer" and options["strict-readiness"] == "boolean"
    check = triton_program(options).parse
    assert check(["--grpc-port=8001", "--allow-metrics=true"]) == []
    assert check(["--grpc-prot=8001", "--allow-metrics=yes", "--http-port=eighty"]) == [
        "tritonserver: unknown option --grpc-prot",
        "tritonserver: --allow-metrics wants a boolean, got 'yes'",
        "tritonserver: --http-port wants an integer, got 'eighty'",
    ]


def test_triton_runs_on_gpu_nodes_behind_a_headless_service_scaled_on_queue_time() -> None:
    docs = _objects(render())
    pod = _find(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--model-repository=/models" in server["args"] and "--grpc-address=0.0.0.0" in server["args"]
    assert pod["initContainers"][0]["args"][:4] == ["render", "--artifacts=/artifacts", "--out=/models",
                                                    "--target=gpu"]  # fmt: skip
    assert _find(docs, "Service", "triton")["spec"]["clusterIP"] == "None"
    hpa = _find(docs, "HorizontalPodAutoscaler", "triton")["spec"]["metrics"][0]
    assert hpa["type"] == "Pods" and hpa["pods"]["metric"]["name"] == TRITON_QUEUE_METRIC
    rules = yaml.safe_load(_find(docs, "ConfigMap", "vitrine-adapter-rules")["data"]["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == [TRITON_QUEUE_METRIC]
    assert "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]
    assert "nv_inference_request_success" in rules[0]["metricsQuery"]
    gateway = _find(docs, "Deployment", "vitrine-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "--triton-url=dns:///triton.vitrine.svc.cluster.local:8001" in gateway["args"]


def test_gateway_keys_tls_and_state_come_from_secrets() -> None:
    docs = _objects(render())
    pod = _find(docs, "Deployment", "vitrine-gateway")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["env"]}
    secret_fields = [
        f.name
        for f in dataclasses.fields(GatewayConfig)
        if f.metadata.get("secret") and f.name not in EXTERNAL_SECRETS
    ]
    for name in secret_fields:
        assert refs[f"VITRINE_GATEWAY_{name.upper()}"] == {
            "name": "vitrine-gateway",
            "key": name,
            "optional": True,
        }
        assert not any(a.startswith(f"--{name.replace('_', '-')}=") for a in gateway["args"])
    if "state_url" in {f.name for f in dataclasses.fields(GatewayConfig)}:
        assert refs["VITRINE_GATEWAY_STATE_URL"] == {
            "name": "vitrine-postgres",
            "key": "dsn",
            "optional": False,
        }
        assert not any(a.startswith("--state-url") for a in gateway["args"])
    assert pod["volumes"] == [
        {"name": "tls", "secret": {"secretName": "vitrine-gateway-tls", "defaultMode": 0o400}}
    ]
    assert "--tls-cert=/etc/vitrine/tls/tls.crt" in gateway["args"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert _find(docs, "PodDisruptionBudget", "vitrine-gateway")["spec"]["maxUnavailable"] == 1
    dashboard = _find(docs, "ConfigMap", "vitrine-dashboard")
    assert dashboard["data"]["vitrine.json"] == DASHBOARD_FILE.read_text()


def test_the_small_variant_runs_the_faiss_index_as_one_replica_with_its_volume() -> None:
    docs = _objects(render(VARIANTS["small"]))
    index = _find(docs, "StatefulSet", "vitrine-index")["spec"]
    assert index["replicas"] == 1 and index["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert index["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"] == {"port": 50051}
    gateway = _find(docs, "Deployment", "vitrine-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "--index-address=vitrine-index.vitrine.svc.cluster.local:50051" in gateway["args"]
    assert gateway["readinessProbe"]["grpc"] == {"port": 50050}
    assert "milvus-values.yaml" not in render(VARIANTS["small"])
    from gateway.index_backends import is_milvus

    cluster = _find(_objects(render()), "Deployment", "vitrine-gateway")["spec"]["template"]["spec"]
    (address,) = [
        a.split("=", 1)[1] for a in cluster["containers"][0]["args"] if a.startswith("--index-address=")
    ]
    assert is_milvus(address) and address == "milvus://milvus.vitrine.svc.cluster.local:19530"
    values = yaml.safe_load(render()["milvus-values.yaml"])
    assert values["queryNode"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert values["cluster"] == {"enabled": True}


def test_vitrine_deploy_render_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from operations.cli import main

    assert main(["deploy", "render", "--out", str(tmp_path), "--namespace", "shop", "--index", "faiss"]) == 0
    assert main(["deploy", "check", str(tmp_path)]) == 0
    assert "no problems" in capsys.readouterr().out
    broken = tmp_path / "gateway.yaml"
    broken.write_text(broken.read_text().replace("--max-in-flight=", "--max-inflight="))
    assert main(["deploy", "check", str(tmp_path)]) == 1
    assert "unrecognized arguments: --max-inflight=64" in capsys.readouterr().out
