"""One child-server launcher: start a server process, wait on its one readiness handshake, stop it cleanly.

Every Vitrine server (Triton, the index service, the gateway) is started the same way: ports are chosen
before launch (0 becomes a free loopback port), the process is spawned with its own flags, and ``start``
returns once the server's own readiness signal says so: ``grpc.health.v1`` SERVING for Vitrine's
services, ``/v2/health/ready`` for Triton (true only when every model loaded). A process that exits
first fails the start at once with the tail of its log. ``stop`` is SIGTERM (the server drains), then
SIGKILL of the whole process group once ``stop_timeout_s`` has passed; ``kill`` is SIGKILL alone, what a
durability test wants. Either returns only when no process of the group lives: each server runs in a
session of its own, and what it spawned (Triton's Python-backend stubs, PostgreSQL's backends) stays in
its group even once orphaned, so a kill of the group reaches all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

Probe = Callable[[], bool]


GROUP_EXIT_TIMEOUT_S = 10.0


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies left out) whose process group is ``pgid``, read from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, timeout_s: float = GROUP_EXIT_TIMEOUT_S) -> list[int]:
    """SIGKILL to the whole group, then wait until none of it lives; returns what still lives after
    ``timeout_s`` (nothing, unless a process is stuck in the kernel)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class LaunchError(RuntimeError):
    """A child server could not start or did not become ready; the message carries its log tail."""


def grpc_serving(address: str, timeout_s: float = 2.0) -> Probe:
    """Readiness of a Vitrine service: its ``grpc.health.v1`` overall status is SERVING."""

    def probe() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                return False  # not listening yet, or not serving yet: both are worth another look
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_ready(url: str, timeout_s: float = 2.0) -> Probe:
    """Readiness over HTTP (Triton's ``/v2/health/ready``): status 200."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    return probe


class ChildServer:
    """One server process; ``restart`` starts the same command again (same ports, same data)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        probe: Probe,
        *,
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        hint: str = "",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.probe = probe
        self._own_log: weakref.finalize | None = None
        if log_file is None:
            # A log of its own, kept after a stop (for the tail) and removed with this object or close().
            own = tempfile.mkdtemp(prefix=f"vitrine-{name.replace(' ', '-')}-")
            self._own_log = weakref.finalize(self, shutil.rmtree, own, ignore_errors=True)
            log_file = Path(own) / "server.log"
        self.log_file = Path(log_file)
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.hint = hint
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Hook for what must hold before the command can run (files, libraries); raise LaunchError."""

    def start(self, timeout_s: float | None = None) -> ChildServer:
        if self.process is not None:
            raise LaunchError(f"{self.name} is already running")
        self.check()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            # Its own session: stop() can reach the server's children (Triton's backend stubs) too.
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        log.info("starting", extra={"server": self.name, "pid": self.process.pid})
        try:
            self._wait_ready(self.startup_timeout_s if timeout_s is None else timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("ready", extra={"server": self.name})
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            code = self.process.poll()
            if code is not None:
                raise LaunchError(f"{self.name} exited with status {code}:\n{self.log_tail()}")
            if self.probe():
                return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{self.name} not ready after {timeout_s:g} s{self.hint}:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM lets the server drain; SIGKILL to its group only if the drain outlasts the timeout."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("ignored SIGTERM; killing", extra={"server": self.name, "pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Children in the server's group (Triton's Python-backend stubs) never outlive it.
        self._reap_group(process.pid)
        return int(process.returncode)

    def _reap_group(self, pgid: int) -> None:
        left = kill_group(pgid)
        if left:
            log.warning("processes outlived their group's kill", extra={"server": self.name, "pids": left})

    def kill(self) -> int | None:
        """SIGKILL: no drain, no flush; what survives is what was durable."""
        process, self.process = self.process, None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._reap_group(process.pid)
        return int(process.returncode)

    def restart(self) -> ChildServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_log is not None:
            self._own_log()
            self._own_log = None

    def __enter__(self) -> ChildServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
