"""Child servers: waiting until one reports SERVING over ``grpc.health.v1``, and stopping it cleanly."""

from __future__ import annotations

import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_serving(
    address: str, proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None, name: str, timeout_s: float,
    hint: str = "",
) -> None:  # fmt: skip
    """Poll health until SERVING; fail at once if the process exits, and clearly when time runs out."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet, or not serving yet: both are worth another look
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not report SERVING within {timeout_s:g} s{hint}")
            time.sleep(0.1)


def terminate(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout_s: float) -> int:
    """Stop a child server: SIGTERM lets it drain; SIGKILL only if the drain outlasts ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
