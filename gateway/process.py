"""Runs ``python -m gateway`` as a child process (the main job, benchmarks), waiting on its health."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitrine.health import terminate, wait_serving


class GatewayProcess:
    def __init__(
        self,
        args: tuple[str, ...] = (),
        *,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.args = args
        self.host = host
        self.log_file = log_file
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> GatewayProcess:
        with tempfile.TemporaryDirectory(prefix="vitrine-gateway-") as tmp:
            ready = Path(tmp) / "port"
            cmd = [
                sys.executable,
                "-m",
                "gateway",
                "--host",
                self.host,
                *self.args,
                "--ready-file",
                str(ready),
            ]
            out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
            try:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=dict(os.environ))
            finally:
                if self.log_file:
                    out.close()  # type: ignore[union-attr]
            deadline = time.monotonic() + self.startup_timeout_s
            while not ready.exists() or not ready.read_text().strip():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with code {self.proc.returncode} before listening")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("gateway did not start listening in time")
                time.sleep(0.05)
            self.port = int(ready.read_text())
        self.wait_serving()
        return self

    def wait_serving(self) -> None:
        """SERVING means Triton's ensembles and the index both answered the gateway's probe."""
        wait_serving(
            self.address, self.proc, "gateway", self.startup_timeout_s, " (are Triton and the index up?)"
        )

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout_s)
        self.proc = None
        return code

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
