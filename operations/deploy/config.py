"""What a cluster deployment chooses: names, images, replica bounds, scaling targets, resources.

Everything else a container runs with comes from the services' own typed configs (``services.py``); the
flags of ``vitrine deploy render`` derive from this dataclass as every service's flags do from its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

ENV_PREFIX = "VITRINE_DEPLOY"


class IndexBackend(enum.StrEnum):
    MILVUS = "milvus"  # Milvus through its own Helm chart: sharded, replicated, GPU indexes
    FAISS = "faiss"  # the FAISS index service, one replica with its volume: small catalogs


@dataclass(frozen=True)
class DeployConfig:
    namespace: str = field(default="vitrine", metadata={"help": "namespace of every Vitrine object"})
    monitoring_namespace: str = field(
        default="monitoring", metadata={"help": "namespace of Prometheus, Grafana and prometheus-adapter"}
    )
    image: str = field(
        default="registry.example.com/vitrine:0.1.0",
        metadata={"help": "the Vitrine image (gateway, index service, model repository render)"},
    )
    triton_image: str = field(
        default="nvcr.io/nvidia/tritonserver:24.10-py3",
        metadata={"help": "NVIDIA's Triton container (24.10 = tritonserver 2.51, the wheel's version)"},
    )
    index: IndexBackend = field(default=IndexBackend.MILVUS, metadata={"help": "the index tier"})
    milvus_release: str = field(
        default="milvus", metadata={"help": "Helm release name of the Milvus chart (its Service's name)"}
    )
    triton_min_replicas: int = field(default=1, metadata={"help": "fewest Triton pods"})
    triton_max_replicas: int = field(default=8, metadata={"help": "most Triton pods (one GPU each)"})
    triton_gpus: int = field(default=1, metadata={"help": "nvidia.com/gpu per Triton pod"})
    triton_queue_target_us: int = field(
        default=20_000,
        metadata={
            "help": "HPA target: mean queue time per request (us) over Triton's pods; 20 ms keeps a 100 ms "
            "p95 budget with room for the index and the gateway (an assumption: tune on the GPU host)"
        },
    )
    response_cache_mb: int = field(
        default=0, metadata={"help": "Triton's response cache per pod in MB; 0 = off"}
    )
    gateway_min_replicas: int = field(default=2, metadata={"help": "fewest gateway pods"})
    gateway_max_replicas: int = field(default=16, metadata={"help": "most gateway pods"})
    gateway_cpu_target: int = field(
        default=70, metadata={"help": "gateway HPA: mean CPU utilisation, percent of the request"}
    )
    gateway_cpu: str = field(default="2", metadata={"help": "CPU request per gateway pod"})
    gateway_memory: str = field(default="1Gi", metadata={"help": "memory request and limit per gateway pod"})
    tls: bool = field(
        default=True,
        metadata={"help": "serve the gateway with the certificate of the kubernetes.io/tls Secret"},
    )
    index_cpu: str = field(default="2", metadata={"help": "CPU request of the FAISS index service"})
    index_memory: str = field(
        default="8Gi",
        metadata={"help": "memory of the FAISS index service (docs/SCALING.md: ~5 GiB per 1M products)"},
    )
    index_storage: str = field(default="50Gi", metadata={"help": "volume of the FAISS index service"})
    artifacts_claim: str = field(
        default="vitrine-artifacts",
        metadata={"help": "PersistentVolumeClaim (ReadOnlyMany) holding the export's artifacts"},
    )
