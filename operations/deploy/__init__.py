"""The Kubernetes deployment, rendered from the typed configs the services parse (``vitrine deploy``).

``render`` returns plain manifests (YAML files) and the Milvus chart's values: Triton on GPU nodes behind
a headless Service with an HPA on queue time, the gateway with its HPA, PodDisruptionBudget and Secrets,
the index tier (Milvus, or the FAISS index service as a one-replica StatefulSet), PostgreSQL referenced
through a Secret, and the observability ConfigMaps. ``checks`` validates them offline: no cluster is
needed, and none ran them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from operations.deploy.config import DeployConfig, IndexBackend
from operations.deploy.state import adapter_rules, milvus_values, observability, prometheus_config
from operations.deploy.workloads import Obj, gateway, index_service, triton

HEADER = (
    "# Rendered by `vitrine deploy render` from the services' typed configs (operations/deploy/): do not\n"
    "# edit; change a config and render again. Checked offline by tests/deploy; never applied to a cluster\n"
    "# by this repository's tests.\n"
)


def dump(objs: list[Obj]) -> str:
    return HEADER + "---\n".join(yaml.safe_dump(o, sort_keys=False, width=110) for o in objs)


def render(deploy: DeployConfig | None = None) -> dict[str, str]:
    """File name -> text of every file of the deployment."""
    deploy = deploy or DeployConfig()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": deploy.namespace}}
    files = {
        "namespace.yaml": dump([namespace]),
        "triton.yaml": dump(triton(deploy)),
        "gateway.yaml": dump(gateway(deploy)),
        "observability.yaml": dump(
            observability(
                deploy,
                yaml.safe_dump(adapter_rules(deploy), sort_keys=False, width=200),
                prometheus_config(deploy),
            )
        ),
    }
    if deploy.index is IndexBackend.MILVUS:
        files["milvus-values.yaml"] = (
            HEADER
            + "# Values for Milvus's own Helm chart:\n"
            + "#   helm install milvus milvus/milvus -f milvus-values.yaml\n"
            + yaml.safe_dump(milvus_values(deploy), sort_keys=False, width=110)
        )
    else:
        files["index-faiss.yaml"] = dump(index_service(deploy))
    return files


def write(out: Path, deploy: DeployConfig | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(deploy).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def load(directory: Path) -> dict[str, list[Any]]:
    """File name -> its YAML documents, as ``kubectl apply -f DIR`` would read them."""
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted(directory.glob("*.yaml"))
    }


__all__ = ["DeployConfig", "IndexBackend", "dump", "load", "render", "write"]
