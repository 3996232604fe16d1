"""Runs ``python -m index_service`` as a child process: for tests (kill -9 included) and the main job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vitrine.health import terminate, wait_serving


class IndexServiceProcess:
    """A real server process on a free port over a data directory; ``restart`` keeps the directory."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.extra_args = extra_args
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.metrics_port: int | None = None
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> IndexServiceProcess:
        cmd = [
            sys.executable, "-m", "index_service",
            "--host", self.host, "--port", "0", "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **(self.env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server's first line names its port, once data is loaded
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"index service exited with code {code} before listening")
        announced = json.loads(line)
        self.port = int(announced["port"])
        self.metrics_port = announced.get("metrics_port")
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        wait_serving(self.address, self.proc, "index service", self.startup_timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Graceful: SIGTERM, then wait for the drain."""
        if self.proc is None:
            return None
        terminate(self.proc, timeout_s)
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL: no drain, no flush; what survives is what was durable."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self._reap()

    def restart(self) -> IndexServiceProcess:
        self.stop()
        return self.start()

    def _reap(self) -> int | None:
        assert self.proc is not None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> IndexServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
