"""The embedded-server launcher: backend preparation, start failures, and the foreground command."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from model_repository.server import Endpoints, TritonStartError, prepare_backends, triton_home
from operations.servers import TritonServer
from vitrine.net import free_ports


def test_backend_directory_holds_symlinks_to_the_stub_for_this_python(tmp_path):
    python_dir = prepare_backends(tmp_path) / "python"
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = python_dir / "triton_python_backend_stub"
    assert stub.is_symlink()
    assert stub.resolve() == (triton_home() / "python_backend_stubs" / tag / stub.name).resolve()
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        assert (python_dir / name).is_symlink() and (python_dir / name).resolve().is_file()


def test_a_broken_model_fails_start_with_the_log_tail(tmp_path):
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    (model / "1" / "model.py").write_text("raise RuntimeError('cannot initialise this model')\n")
    server = TritonServer(tmp_path / "repo", Endpoints(*free_ports(3)), workdir=tmp_path / "work")
    with pytest.raises(TritonStartError, match="cannot initialise this model"):
        server.start(timeout_s=60)
    assert server.process is None


def test_missing_repository_is_reported(tmp_path):
    server = TritonServer(tmp_path / "absent", Endpoints(1, 2, 3), workdir=tmp_path)
    with pytest.raises(TritonStartError, match="does not exist: render it first"):
        server.start()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
def test_serve_cli_runs_in_the_foreground_and_stops_on_sigterm(triton, tmp_path):
    ports = free_ports(3)
    log_file = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "operations.cli", "triton", "--repo", str(triton.repo)]
    cmd += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    cmd += ["--log-file", str(log_file)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            line = process.stdout.readline()  # printed once Triton reports ready
            assert line.startswith("triton ready: grpc 127.0.0.1:"), line + process.stderr.read()
            assert _ready(ports[1])
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert not _ready(ports[1]), "tritonserver outlived the CLI"
    log = log_file.read_text()
    assert "successfully unloaded" in log, log[-2000:]


def test_a_python_without_a_stub_is_named_in_the_error(tmp_path, monkeypatch):
    import model_repository.server as server

    monkeypatch.setattr(server, "_python_tag", lambda: "3.99")
    with pytest.raises(TritonStartError, match=r"no Triton Python-backend stub for Python 3\.99.*3\.11"):
        prepare_backends(tmp_path)


def _non_loopback_address() -> str | None:
    """An address of this machine other than loopback (the one a route to the outside would use)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_triton_listens_on_loopback_only_by_default(triton):
    import socket

    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for port in (triton.endpoints.grpc_port, triton.endpoints.http_port, triton.endpoints.metrics_port):
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"Triton answers on {address}:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
