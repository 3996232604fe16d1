"""The serving tier's Kubernetes objects as plain dicts: Triton, the gateway, the FAISS index service.

Ports, probes, grace periods and Secrets follow the configs ``services.py`` renders; nothing here repeats
a flag. Objects are plain ``apiVersion``/``kind`` dicts so ``checks.py`` can read them back into the
``kubernetes`` client's models.
"""

from __future__ import annotations

import math
from typing import Any

from operations.deploy.config import DeployConfig
from operations.deploy.services import (
    ARTIFACTS_DIR,
    GATEWAY_HTTP_PORT,
    GATEWAY_METRICS_PORT,
    GATEWAY_PORT,
    INDEX_DATA_DIR,
    INDEX_METRICS_PORT,
    INDEX_PORT,
    MODELS_DIR,
    TLS_DIR,
    TRITON,
    Container,
    gateway_config,
    gateway_container,
    index_config,
    index_container,
    model_repository_container,
    triton_container,
)

Obj = dict[str, Any]
PART_OF = "vitrine"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
"""The label NVIDIA's GPU feature discovery puts on GPU nodes."""
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
TRITON_QUEUE_METRIC = "triton_queue_time_us"
"""The Pods metric prometheus-adapter serves from Triton's counters (``observability.adapter_rules``)."""


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def meta(name: str, deploy: DeployConfig, **extra: Any) -> Obj:
    return {"name": name, "namespace": deploy.namespace, "labels": labels(name), **extra}


def scrape(port: int) -> dict[str, str]:
    """Pod annotations the scrape configuration (``observability.prometheus_config``) keeps."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def container(name: str, image: str, spec: Container, **extra: Any) -> Obj:
    out: Obj = {"name": name, "image": image, "command": list(spec.command), "args": list(spec.args)}
    if spec.secret_env:
        out["env"] = [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
            for var, secret, key, optional in spec.secret_env
        ]
    return {**out, **extra}


def _port(name: str, port: int) -> Obj:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _grace(grace_s: float) -> int:
    """The pod's termination grace: the service's own drain time plus a margin for the process to exit."""
    return math.ceil(grace_s) + 10


def triton(deploy: DeployConfig) -> list[Obj]:
    name = "triton"
    http = {"port": "http"}
    gpu = {"nvidia.com/gpu": str(deploy.triton_gpus)}
    server = container(
        "tritonserver", deploy.triton_image, triton_container(deploy),
        ports=[_port("grpc", TRITON.grpc_port), _port("http", TRITON.http_port),
               _port("metrics", TRITON.metrics_port)],
        resources={"requests": {"cpu": "4", "memory": "8Gi", **gpu}, "limits": {"memory": "16Gi", **gpu}},
        readinessProbe={"httpGet": {"path": "/v2/health/ready", **http}, "periodSeconds": 5,
                        "failureThreshold": 2},
        livenessProbe={"httpGet": {"path": "/v2/health/live", **http}, "periodSeconds": 10,
                       "failureThreshold": 3},
        # Loading TensorRT-accelerated encoders takes minutes on a cold node: liveness waits for it.
        startupProbe={"httpGet": {"path": "/v2/health/ready", **http}, "periodSeconds": 10,
                      "failureThreshold": 60},
        volumeMounts=[{"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                      {"name": "shm", "mountPath": "/dev/shm"}],
    )  # fmt: skip
    render = container(
        "model-repository", deploy.image, model_repository_container(deploy),
        volumeMounts=[{"name": "models", "mountPath": MODELS_DIR},
                      {"name": "artifacts", "mountPath": ARTIFACTS_DIR, "readOnly": True}],
    )  # fmt: skip
    pod = {
        "metadata": {"labels": labels(name), "annotations": scrape(TRITON.metrics_port)},
        "spec": {
            "nodeSelector": GPU_NODE_SELECTOR,
            "tolerations": GPU_TOLERATIONS,
            "initContainers": [render],
            "containers": [server],
            "terminationGracePeriodSeconds": 60,
            "volumes": [
                {"name": "models", "emptyDir": {}},
                {"name": "artifacts", "persistentVolumeClaim": {"claimName": deploy.artifacts_claim,
                                                                "readOnly": True}},
                # Python-backend models exchange tensors through shared memory; the default 64 MB is small.
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            ],
        },
    }  # fmt: skip
    return [
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, deploy),
            "spec": {"replicas": deploy.triton_min_replicas, "selector": {"matchLabels": labels(name)},
                     "template": pod},
        },
        {
            # Headless: the name resolves to every ready pod, and each gateway balances across them.
            "apiVersion": "v1", "kind": "Service", "metadata": meta(name, deploy),
            "spec": {"clusterIP": "None", "selector": labels(name), "publishNotReadyAddresses": False,
                     "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                               for p in server["ports"]]},
        },
        {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(name, deploy),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": deploy.triton_min_replicas, "maxReplicas": deploy.triton_max_replicas,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": TRITON_QUEUE_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(deploy.triton_queue_target_us)},
                }}],
                # A GPU pod takes minutes to become ready: scale up at once, down slowly.
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
        },
    ]  # fmt: skip


def _secret_volume(name: str, secret: str) -> Obj:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o400}}


def gateway(deploy: DeployConfig) -> list[Obj]:
    name = "vitrine-gateway"
    config = gateway_config(deploy)
    if deploy.tls:
        # Kubernetes' gRPC probe speaks no TLS: with TLS on, readiness reads /healthz over HTTPS, which
        # reports the same SERVING/NOT_SERVING as grpc.health.v1 (503 when a dependency cannot serve).
        ready: Obj = {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS"}}
    else:
        ready = {"grpc": {"port": GATEWAY_PORT}}
    mounts = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if deploy.tls else []
    server = container(
        "gateway", deploy.image, gateway_container(deploy),
        ports=[_port("grpc", GATEWAY_PORT), _port("http", GATEWAY_HTTP_PORT),
               _port("metrics", GATEWAY_METRICS_PORT)],
        resources={"requests": {"cpu": deploy.gateway_cpu, "memory": deploy.gateway_memory},
                   "limits": {"memory": deploy.gateway_memory}},
        readinessProbe={**ready, "periodSeconds": 5, "failureThreshold": 2},
        livenessProbe={"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "failureThreshold": 3},
        volumeMounts=mounts,
    )  # fmt: skip
    volumes = [_secret_volume("tls", "vitrine-gateway-tls")] if deploy.tls else []
    pod = {
        "metadata": {"labels": labels(name), "annotations": scrape(GATEWAY_METRICS_PORT)},
        "spec": {"containers": [server], "volumes": volumes,
                 "terminationGracePeriodSeconds": _grace(config.grace_s)},
    }  # fmt: skip
    return [
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, deploy),
            "spec": {"replicas": deploy.gateway_min_replicas, "selector": {"matchLabels": labels(name)},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                     "template": pod},
        },
        {
            "apiVersion": "v1", "kind": "Service", "metadata": meta(name, deploy),
            "spec": {"selector": labels(name),
                     "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                               for p in server["ports"]]},
        },
        {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(name, deploy),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": deploy.gateway_min_replicas, "maxReplicas": deploy.gateway_max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": deploy.gateway_cpu_target}}}],
            },
        },
        {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name, deploy),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(name)}},
        },
    ]  # fmt: skip


def index_service(deploy: DeployConfig) -> list[Obj]:
    """One replica over its volume: the FAISS index service is one process by design (small catalogs)."""
    name = "vitrine-index"
    config = index_config(deploy)
    server = container(
        "index-service", deploy.image, index_container(deploy),
        ports=[_port("grpc", INDEX_PORT), _port("metrics", INDEX_METRICS_PORT)],
        resources={"requests": {"cpu": deploy.index_cpu, "memory": deploy.index_memory},
                   "limits": {"memory": deploy.index_memory}},
        readinessProbe={"grpc": {"port": INDEX_PORT}, "periodSeconds": 5, "failureThreshold": 2},
        livenessProbe={"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "failureThreshold": 3},
        # A restart replays the database and loads snapshots before SERVING: give it time.
        startupProbe={"grpc": {"port": INDEX_PORT}, "periodSeconds": 10, "failureThreshold": 60},
        volumeMounts=[{"name": "data", "mountPath": INDEX_DATA_DIR}],
    )  # fmt: skip
    return [
        {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(name, deploy),
            "spec": {
                "replicas": 1, "serviceName": name, "selector": {"matchLabels": labels(name)},
                "template": {
                    "metadata": {"labels": labels(name), "annotations": scrape(INDEX_METRICS_PORT)},
                    "spec": {"containers": [server],
                             "terminationGracePeriodSeconds": _grace(config.grace_s)},
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": deploy.index_storage}}},
                }],
            },
        },
        {
            "apiVersion": "v1", "kind": "Service", "metadata": meta(name, deploy),
            "spec": {"clusterIP": "None", "selector": labels(name),
                     "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                               for p in server["ports"]]},
        },
    ]  # fmt: skip
