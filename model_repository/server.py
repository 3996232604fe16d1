"""Run the real tritonserver binary shipped in the ``nvidia-pytriton`` wheel, embedded, on CPU.

Only the binary is used (not the pytriton Python API). Its Python backend needs three things this module
prepares and checks, with a clear error for each: a backend directory whose ``python/`` holds symlinks
(not copies: the stub finds its libraries through a relative RPATH) to the backend library, its utils
module and the stub built for the running Python; ``libpython3.X.so.1.0`` for that stub; and the running
interpreter's ``bin/`` first on ``PATH``, which is how the stub finds this environment's packages.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0


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


class EmbeddedTriton:
    """One tritonserver process: ``start`` returns once the server reports ready, ``stop`` ends it.

    Readiness is Triton's own ``/v2/health/ready``, which turns true only when every model loaded; a
    server that exits first raises :class:`TritonStartError` with the tail of its log.
    """

    def __init__(
        self,
        repo: Path,
        endpoints: Endpoints,
        *,
        log_file: Path | None = None,
        workdir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        verbose: bool = False,
    ) -> None:
        self.repo = Path(repo).resolve()
        self.endpoints = endpoints
        self._owned_workdir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._owned_workdir = tempfile.TemporaryDirectory(prefix="vitrine-triton-")
            workdir = Path(self._owned_workdir.name)
        self.workdir = Path(workdir)
        self.log_file = Path(log_file) if log_file else self.workdir / "tritonserver.log"
        self.extra_args = extra_args
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return self.endpoints.grpc_url

    @property
    def http_url(self) -> str:
        return self.endpoints.http_url

    @property
    def metrics_url(self) -> str:
        return self.endpoints.metrics_url

    def command(self) -> list[str]:
        backends = prepare_backends(self.workdir / "backends")
        return [
            str(triton_home() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.endpoints.grpc_port}",
            f"--http-port={self.endpoints.http_port}",
            f"--metrics-port={self.endpoints.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--metrics-config=summary_latencies=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={1 if self.verbose else 0}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        # One onnxruntime/numpy pool per stub process is sized in the session; keep BLAS from adding more.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        return env

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> EmbeddedTriton:
        if self.process is not None:
            raise TritonStartError("tritonserver is already running")
        if not (self.repo / ".").is_dir():
            raise TritonStartError(f"model repository {self.repo} does not exist: render it first")
        check_libpython()
        cmd = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        log.info("tritonserver starting", extra={"pid": self.process.pid, "repo": str(self.repo)})
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready", extra={"grpc": self.endpoints.grpc_url})
        return self

    def is_ready(self) -> bool:
        url = f"http://{self.endpoints.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonStartError(f"tritonserver exited with status {code}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (Triton drains in-flight requests and unloads), then SIGKILL the group after the grace."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver ignored SIGTERM; killing", extra={"pid": process.pid})
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            code = process.returncode
            # Python-backend stubs are children in the same session; none may outlive the server.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._owned_workdir is not None:
            self._owned_workdir.cleanup()
            self._owned_workdir = None
        return code

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
