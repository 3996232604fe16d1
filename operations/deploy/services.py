"""Each container's command line and environment, rendered from the config its service parses.

A container's arguments are ``to_argv`` of a typed config (every field, as the launcher hands a config to
a child process), so a field added to a service's config appears in the manifests on the next render and
a renamed one cannot hide: ``checks.check_args`` parses every manifest's arguments with the service's own
parser. Fields marked secret never reach a command line: each becomes an environment variable read from
the service's Secret (key = field name, optional, so an unset key keeps the field's default). Fields whose
value lives in a Secret managed elsewhere (the PostgreSQL DSN) are listed in ``EXTERNAL_SECRETS``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.config import ENV_PREFIX as GATEWAY_ENV_PREFIX
from gateway.config import GatewayConfig
from index_service.config import ENV_PREFIX as INDEX_ENV_PREFIX
from index_service.config import IndexServiceConfig
from model_repository.render import RenderOptions, response_cache_args
from model_repository.server import Endpoints, triton_flags
from operations.assembly import RELOADABLE_MODELS
from operations.deploy.config import DeployConfig, IndexBackend
from vitrine.config import env_name, to_argv
from vitrine.contracts import Target

GATEWAY_PORT, GATEWAY_HTTP_PORT, GATEWAY_METRICS_PORT = 50050, 8080, 9101
INDEX_PORT, INDEX_METRICS_PORT = 50051, 9102
TRITON = Endpoints(grpc_port=8001, http_port=8000, metrics_port=8002, host="0.0.0.0")
MILVUS_PORT = 19530

MODELS_DIR = "/models"
ARTIFACTS_DIR = "/artifacts"
TLS_DIR = "/etc/vitrine/tls"
INDEX_DATA_DIR = "/var/lib/vitrine/index"

EXTERNAL_SECRETS: dict[str, tuple[str, str]] = {"state_url": ("vitrine-postgres", "dsn")}
"""Config field -> (Secret, key) for values an operator's Secret holds: the managed PostgreSQL's DSN
(with its password) is referenced, never written into a manifest."""


@dataclass(frozen=True)
class Container:
    """What one container runs: the program, its flags, the environment taken from Secrets."""

    command: tuple[str, ...]
    args: tuple[str, ...]
    secret_env: tuple[tuple[str, str, str, bool], ...] = ()
    """(variable, Secret, key, optional) for each secret field: a service's own keys are optional (unset =
    the field's default), an external one (the shared state's DSN) is required."""


def fields_of(cls: type) -> Iterator[tuple[dataclasses.Field[Any], type]]:
    """Every plain field of a config dataclass, nested config dataclasses flattened (as their flags are)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            yield from fields_of(tp)
        else:
            yield f, tp


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _without(argv: list[str], names: set[str]) -> list[str]:
    """``argv`` less the flags of ``names`` (and their values)."""
    drop = {flag(n) for n in names} | {"--no-" + n.replace("_", "-") for n in names}
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = not arg.startswith("--no-") and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(arg)
    return out


def _service_container(module: str, config: Any, prefix: str, own_secret: str) -> Container:
    names = {f.name for f, _ in fields_of(type(config))}
    external = {n: ref for n, ref in EXTERNAL_SECRETS.items() if n in names}
    env = [
        (env_name(prefix, f.name), own_secret, f.name, True)
        for f, _ in fields_of(type(config))
        if f.metadata.get("secret") and f.name not in external
    ]
    env += [(env_name(prefix, n), secret, key, False) for n, (secret, key) in external.items()]
    argv = _without(to_argv(config), set(external))
    return Container(("python", "-m", module), tuple(_joined(argv)), tuple(env))


def _joined(argv: list[str]) -> list[str]:
    """``--flag value`` as ``--flag=value``: one line per setting in a manifest (argparse reads both)."""
    out: list[str] = []
    for arg in argv:
        last = out[-1] if out else ""
        if (
            last.startswith("--")
            and not last.startswith("--no-")
            and "=" not in last
            and not arg.startswith("--")
        ):
            out[-1] = f"{last}={arg}"
            continue
        out.append(arg)
    return out


def service_host(name: str, deploy: DeployConfig) -> str:
    return f"{name}.{deploy.namespace}.svc.cluster.local"


def index_address(deploy: DeployConfig) -> str:
    if deploy.index is IndexBackend.MILVUS:
        return f"milvus://{service_host(deploy.milvus_release, deploy)}:{MILVUS_PORT}"
    return f"{service_host('vitrine-index', deploy)}:{INDEX_PORT}"


def gateway_config(deploy: DeployConfig) -> GatewayConfig:
    config = dataclasses.replace(
        GatewayConfig(),
        host="0.0.0.0",
        port=GATEWAY_PORT,
        http_port=GATEWAY_HTTP_PORT,
        metrics_port=GATEWAY_METRICS_PORT,
        # The headless Service's name resolves to every ready Triton pod: each is a replica.
        triton_url=f"dns:///{service_host('triton', deploy)}:{TRITON.grpc_port}",
        index_address=index_address(deploy),
        log_level="info",
    )
    if deploy.tls:
        config = dataclasses.replace(config, tls_cert=f"{TLS_DIR}/tls.crt", tls_key=f"{TLS_DIR}/tls.key")
    return config


def index_config(deploy: DeployConfig) -> IndexServiceConfig:
    return dataclasses.replace(
        IndexServiceConfig(),
        host="0.0.0.0",
        port=INDEX_PORT,
        metrics_port=INDEX_METRICS_PORT,
        data_dir=INDEX_DATA_DIR,
        log_level="info",
    )


def gateway_container(deploy: DeployConfig) -> Container:
    return _service_container("gateway", gateway_config(deploy), GATEWAY_ENV_PREFIX, "vitrine-gateway")


def index_container(deploy: DeployConfig) -> Container:
    return _service_container("index_service", index_config(deploy), INDEX_ENV_PREFIX, "vitrine-index")


def render_options(deploy: DeployConfig) -> RenderOptions:
    return RenderOptions(target=Target.GPU, response_cache_mb=deploy.response_cache_mb)


def model_repository_container(deploy: DeployConfig) -> Container:
    """The init container writing the GPU rendering of the model repository from the export's artifacts."""
    options = render_options(deploy)
    args = (
        "render", f"--artifacts={ARTIFACTS_DIR}", f"--out={MODELS_DIR}", f"--target={options.target.value}",
        f"--precision={options.precision.value}",
        "--dynamic-batching" if options.dynamic_batching else "--no-dynamic-batching",
    )  # fmt: skip
    return Container(("python", "-m", "model_repository"), args)


def triton_container(deploy: DeployConfig) -> Container:
    args = (
        f"--model-repository={MODELS_DIR}",
        *triton_flags(TRITON, gpu_metrics=True),
        *response_cache_args(render_options(deploy)),
        # As the stack runs it: every model loaded at start, one reloaded when a rollout asks.
        *RELOADABLE_MODELS,
    )
    return Container(("tritonserver",), args)
