"""The state tier and observability: Milvus through its own Helm chart's values, PostgreSQL referenced,
the scrape configuration, the prometheus-adapter rule of the Triton HPA, the Grafana dashboard.

Milvus is installed by its chart (``helm install milvus milvus/milvus -f milvus-values.yaml``); this
module only writes the chart's values: cluster mode, the GPU image, query and index nodes on GPU nodes
(GPU_CAGRA and GPU_IVF_PQ are built by index nodes and served by query nodes). PostgreSQL is a managed
instance or an operator's: the gateway reads its DSN from the ``vitrine-postgres`` Secret and nothing here
runs it.
"""

from __future__ import annotations

import json
from typing import Any

from loadtest.observability import DASHBOARD_FILE, GATEWAY_JOB, INDEX_JOB, TRITON_JOB
from operations.deploy.config import DeployConfig
from operations.deploy.workloads import GPU_NODE_SELECTOR, GPU_TOLERATIONS, TRITON_QUEUE_METRIC, Obj, meta

MILVUS_IMAGE_TAG = "v2.5.9-gpu"
MILVUS_QUERY_NODES = 2
"""Two query nodes can hold two in-memory replicas of a collection (``load_collection(replica_number=2)``),
so one node can go down without losing search; docs/SCALING.md sizes them per catalog."""
JOBS = {TRITON_JOB: "triton", GATEWAY_JOB: "vitrine-gateway", INDEX_JOB: "vitrine-index"}
"""Prometheus job (as the dashboard's queries name it) -> the pods' ``app.kubernetes.io/name``."""


def milvus_values(deploy: DeployConfig) -> dict[str, Any]:
    gpu_node = {"nodeSelector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS}
    gpu = {"nvidia.com/gpu": "1"}
    return {
        "cluster": {"enabled": True},
        "image": {"all": {"repository": "milvusdb/milvus", "tag": MILVUS_IMAGE_TAG}},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": False}},
        "proxy": {"replicas": 2, "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}},
        "queryNode": {
            "replicas": MILVUS_QUERY_NODES,
            "resources": {"requests": {"cpu": "8", "memory": "64Gi", **gpu}, "limits": gpu},
            **gpu_node,
        },
        "indexNode": {
            "replicas": 1,
            "resources": {"requests": {"cpu": "8", "memory": "32Gi", **gpu}, "limits": gpu},
            **gpu_node,
        },
        "dataNode": {"replicas": 2},
        "mixCoordinator": {"replicas": 1},
        # GPU memory pool of each query and index node (MB): the CAGRA graphs and the vectors of the
        # loaded segments live in it; docs/SCALING.md says how much a catalog needs.
        "extraConfigFiles": {"user.yaml": "gpu:\n  initMemSize: 4096\n  maxMemSize: 65536\n"},
        "etcd": {"replicaCount": 3},
        "minio": {"mode": "distributed"},
    }


def prometheus_config(deploy: DeployConfig) -> str:
    """Scrape configuration: pods of each component found through the API, on their annotated port, with
    the ``namespace`` and ``pod`` labels prometheus-adapter maps back to Kubernetes objects."""
    jobs = []
    for job, app in JOBS.items():
        jobs.append({
            "job_name": job,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [deploy.namespace]}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "regex": app,
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
                 "action": "keep"},
                {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        })  # fmt: skip
    config = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"}, "scrape_configs": jobs}
    return json.dumps(config, indent=2)  # JSON is YAML: one serialisation, no templating


def adapter_rules(deploy: DeployConfig) -> dict[str, Any]:
    """prometheus-adapter's rule, as NVIDIA's reference chart scales Triton: the mean time a request
    waited in a pod's queues over the last 30 s (queue microseconds / requests, +1 so an idle pod reads 0)."""
    selector = f'{{namespace="{deploy.namespace}",pod!=""}}'
    return {
        "rules": [{
            "seriesQuery": f"nv_inference_queue_duration_us{selector}",
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": "^nv_inference_queue_duration_us$", "as": TRITON_QUEUE_METRIC},
            "metricsQuery": "sum(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s]))"
            " by (<<.GroupBy>>) / (1 + sum(delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))"
            " by (<<.GroupBy>>))",
        }]
    }  # fmt: skip


def observability(deploy: DeployConfig, adapter_text: str, prometheus_text: str) -> list[Obj]:
    """ConfigMaps for the monitoring namespace: mount or merge them into the operator's own releases
    (the Grafana chart's dashboard sidecar picks up ``grafana_dashboard: "1"``)."""
    at = DeployConfig(namespace=deploy.monitoring_namespace)
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("vitrine-prometheus", at),
         "data": {"prometheus.yml": prometheus_text}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("vitrine-adapter-rules", at),
         "data": {"config.yaml": adapter_text}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {**meta("vitrine-dashboard", at),
                      "labels": {**meta("vitrine-dashboard", at)["labels"], "grafana_dashboard": "1"}},
         "data": {"vitrine.json": DASHBOARD_FILE.read_text()}},
    ]  # fmt: skip
