"""The local stack heals itself: a child server that dies is reaped, whole, and started again with backoff.

One thread watches every child (``ChildServer``) of a stack. When a child's process has exited without
being asked to (kill -9, a crash, the OOM killer), the supervisor

1. kills and reaps the child's whole process group: Triton's Python-backend stubs and PostgreSQL's
   backends live in their server's group and would otherwise stay behind as orphans;
2. waits out the backoff (``initial_backoff_s`` doubling per consecutive failure up to
   ``max_backoff_s``; a child that then served ``stable_s`` starts again from the initial delay);
3. starts it again through the launcher (same command, same ports, same data) and waits for its
   readiness as at first start.

Each restart is logged as one structured line and counted in ``vitrine_stack_restarts_total{child}``;
``vitrine_stack_child_up{child}`` is 1 while the child is running. ``vitrine up`` serves these on its
own Prometheus endpoint (``--supervisor-metrics-port``). Stopping the stack stops the supervisor first,
so a child being stopped on purpose is never brought back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from operations.launcher import ChildServer, group_members
from vitrine.metrics import service_registry

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    child: ChildServer
    failures: int = 0
    due: float = 0.0
    started: float = field(default_factory=time.monotonic)
    restarting: bool = False


class Supervisor:
    """Watches ``children()`` (read every pass, so a stack may add children while it runs)."""

    def __init__(
        self,
        children: Callable[[], Sequence[ChildServer]],
        *,
        poll_s: float = 0.25,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.children = children
        self.poll_s = poll_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.registry = registry or service_registry()
        self.restarts = Counter(
            "vitrine_stack_restarts", "Children restarted after they died", ["child"], registry=self.registry
        )
        self.child_up = Gauge(
            "vitrine_stack_child_up", "1 while the child server runs", ["child"], registry=self.registry
        )
        self._watches: dict[int, _Watch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="vitrine-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No restart starts after this returns; one in progress is waited for (its child is then
        stopped by whoever stops the stack)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for thread in self._restarts:
            thread.join()
        self._restarts.clear()

    def restart_count(self, name: str) -> int:
        value = self.registry.get_sample_value("vitrine_stack_restarts_total", {"child": name})
        return int(value or 0)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for child in self.children():
                watch = self._watches.setdefault(id(child), _Watch(child))
                self._check(watch)

    def _check(self, watch: _Watch) -> None:
        child = watch.child
        with self._lock:
            if watch.restarting:
                return
            running = child.running
            self.child_up.labels(child.name).set(1.0 if running else 0.0)
            self.restarts.labels(child.name)  # every child's count shows, 0 until its first restart
            if running or child.process is None:  # running, or stopped on purpose
                if running and time.monotonic() - watch.started > self.stable_s:
                    watch.failures = 0
                return
            watch.restarting = True
        thread = threading.Thread(target=self._restart, args=(watch,), name=f"restart {child.name}")
        self._restarts = [t for t in self._restarts if t.is_alive()] + [thread]
        thread.start()

    def _restart(self, watch: _Watch) -> None:
        child = watch.child
        process = child.process
        code = process.poll() if process is not None else None
        pgid = process.pid if process is not None else None
        child.stop()  # the exited leader reaped, its whole group killed (launcher)
        left = group_members(pgid) if pgid is not None else []
        delay = min(self.initial_backoff_s * 2**watch.failures, self.max_backoff_s)
        log.warning(
            "child exited; restarting",
            extra={"child": child.name, "exit_code": code, "backoff_s": delay, "orphans_left": len(left)},
        )
        try:
            while not self._stop.wait(delay):
                t0 = time.monotonic()
                try:
                    child.start()
                except (RuntimeError, OSError) as exc:  # LaunchError, TritonStartError, a port in use
                    watch.failures += 1
                    delay = min(self.initial_backoff_s * 2**watch.failures, self.max_backoff_s)
                    log.warning(
                        "restart failed",
                        extra={"child": child.name, "error": str(exc)[:300], "backoff_s": delay},
                    )
                    continue
                watch.failures += 1
                watch.started = time.monotonic()
                self.restarts.labels(child.name).inc()
                log.warning(
                    "child restarted",
                    extra={"child": child.name, "ready_s": round(watch.started - t0, 2)},
                )
                return
        finally:
            with self._lock:
                watch.restarting = False
