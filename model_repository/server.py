"""How to run the real tritonserver binary shipped in the ``nvidia-pytriton`` wheel, embedded, on CPU.

Only the binary is used (not the pytriton Python API); starting and stopping it is the one launcher's
job (``operations.servers.TritonServer``). Its Python backend needs three things this module
prepares and checks, with a clear error for each: a backend directory whose ``python/`` holds symlinks
(not copies: the stub finds its libraries through a relative RPATH) to the backend library, its utils
module and the stub built for the running Python; ``libpython3.X.so.1.0`` for that stub; and the running
interpreter's ``bin/`` first on ``PATH``, which is how the stub finds this environment's packages.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class TritonStartError(RuntimeError):
    """tritonserver could not be prepared or did not become ready; the message carries the log tail."""


def triton_home() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise TritonStartError(
            "nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0"
        ) from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def check_libpython() -> None:
    """The stub links ``libpython3.X.so.1.0`` dynamically; say which package provides it when absent."""
    name = f"libpython{_python_tag()}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if (Path(libdir) / name).exists() or ctypes.util.find_library(f"python{_python_tag()}"):
        return
    try:
        ctypes.CDLL(name)
    except OSError:
        raise TritonStartError(
            f"{name} not found: the Triton Python-backend stub needs the shared Python library "
            f"(Debian/Ubuntu: apt-get install libpython{_python_tag()}; pyenv: build with "
            "--enable-shared)"
        ) from None


def prepare_backends(directory: Path) -> Path:
    """``directory/python/`` with symlinks to the Python backend and the stub for this interpreter."""
    home = triton_home()
    stub = home / "python_backend_stubs" / _python_tag() / "triton_python_backend_stub"
    if not stub.exists():
        available = sorted(p.name for p in (home / "python_backend_stubs").iterdir())
        raise TritonStartError(
            f"no Triton Python-backend stub for Python {_python_tag()} in nvidia-pytriton "
            f"(stubs exist for {', '.join(available)}): use one of those Python versions"
        )
    python_dir = directory / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        home / "backends" / "python" / "libtriton_python.so",
        home / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = python_dir / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return directory


@dataclass(frozen=True)
class Endpoints:
    grpc_port: int
    http_port: int
    metrics_port: int
    host: str = "127.0.0.1"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def triton_flags(endpoints: Endpoints, verbose: bool = False, gpu_metrics: bool = False) -> list[str]:
    """tritonserver's own settings (addresses, ports, metrics, readiness, logging) wherever it runs: the
    embedded binary here and NVIDIA's container in a cluster (``operations.deploy``) take the same ones."""
    return [
        # Loopback unless asked: Triton has no authentication, and its models are internal to the stack.
        f"--grpc-address={endpoints.host}",
        f"--http-address={endpoints.host}",
        f"--metrics-address={endpoints.host}",
        f"--grpc-port={endpoints.grpc_port}",
        f"--http-port={endpoints.http_port}",
        f"--metrics-port={endpoints.metrics_port}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={str(gpu_metrics).lower()}",
        "--allow-cpu-metrics=true",
        "--metrics-config=summary_latencies=true",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--log-verbose={1 if verbose else 0}",
    ]


def triton_command(
    repo: Path, endpoints: Endpoints, backends: Path, verbose: bool = False, extra_args: tuple[str, ...] = ()
) -> list[str]:
    """tritonserver's command line over ``repo``, with the Python backend prepared in ``backends``."""
    return [
        str(triton_home() / "bin" / "tritonserver"),
        f"--model-repository={Path(repo).resolve()}",
        f"--backend-directory={prepare_backends(backends)}",
        f"--cache-directory={triton_home() / 'caches'}",  # the wheel's local response cache, when configured
        *triton_flags(endpoints, verbose),
        # Honours the instance priorities the CPU rendering gives encoders (``spec.render_config``): a lone
        # request goes to the warm first instance, the second takes work only while the first is busy.
        "--rate-limit=execution_count",
        *extra_args,
    ]


def triton_environment() -> dict[str, str]:
    """This interpreter's ``bin/`` first on PATH (how the stub finds the environment's packages)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    # One onnxruntime/numpy pool per stub process is sized in the session; keep BLAS from adding more.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env
