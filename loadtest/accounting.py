"""The load generator's own CPU, and the machine's, over a measured window.

A generator on the machine it loads competes with the stack for the same cores, so a load figure carries
the generator's CPU seconds and its share of the machine, and a run whose generator took more than a set
share is flagged: nobody should read a contended figure as the product's speed, and nobody should blame
the generator without a number either.

:class:`CpuMeter` samples a process tree (this process's children, i.e. the Locust master and its
``--processes`` workers, or this process itself for the open-loop generator) and the machine's
``/proc/stat`` counters from a background thread; :meth:`CpuMeter.window` reports the last ``seconds``
before the stop, which is the measured part of a run (start-up and data loading precede it).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

DEFAULT_MAX_SHARE = 0.25
"""A generator above a quarter of the machine measures itself as much as the stack."""


@dataclass(frozen=True)
class CpuSample:
    t: float
    generator_s: float
    """CPU seconds (user + system) of the generator's process tree so far, reaped children included."""
    busy_s: float
    """CPU seconds the whole machine spent busy so far (every core; idle and iowait excluded)."""


@dataclass(frozen=True)
class CpuUse:
    """What the generator and the machine used over one window."""

    wall_s: float
    cores: int
    generator_cpu_s: float
    machine_busy_s: float
    max_share: float = DEFAULT_MAX_SHARE

    @property
    def generator_share(self) -> float:
        """The generator's CPU as a fraction of the whole machine (1.0 = every core, the whole time)."""
        return self.generator_cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    @property
    def machine_share(self) -> float:
        return self.machine_busy_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    @property
    def flagged(self) -> bool:
        return self.generator_share > self.max_share

    def line(self) -> str:
        flag = f" - ABOVE the {100 * self.max_share:g}% limit: figures contended" if self.flagged else ""
        return (
            f"generator CPU {self.generator_cpu_s:.1f} s = {100 * self.generator_share:.0f}% of "
            f"{self.cores} cores, machine busy {100 * self.machine_share:.0f}% over {self.wall_s:.0f} s{flag}"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out.update(
            generator_share=round(self.generator_share, 4),
            machine_share=round(self.machine_share, 4),
            flagged=self.flagged,
            line=self.line(),
        )
        return out


def _tree_cpu(root: psutil.Process, children_only: bool = False) -> float:
    """CPU seconds of ``root`` and every live descendant; reaped ones are in their parent's children_*.

    ``children_only``: leave out ``root``'s own time (a generator that is a child of this process)."""
    total = 0.0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in members:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # exited between listing and reading: its parent's children_* times carry it
        own = 0.0 if (children_only and proc is root) else t.user + t.system
        total += own + t.children_user + t.children_system
    return total


def _machine_busy() -> float:
    t = psutil.cpu_times()
    # Guest time is already counted in user time; idle and iowait are not work.
    unused = t.idle + sum(getattr(t, name, 0.0) for name in ("iowait", "guest", "guest_nice"))
    return float(sum(t) - unused)


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages: how busy the machine was around a measurement."""
    return os.getloadavg()


class CpuMeter:
    """Samples the generator's process tree and the machine every ``interval_s`` until stopped.

    By default the generator is this process (the open-loop generator); ``children_only`` measures what
    this process's children do instead (Locust, started with ``subprocess.run`` while the meter runs).
    """

    def __init__(
        self, children_only: bool = False, interval_s: float = 0.5, max_share: float = DEFAULT_MAX_SHARE
    ) -> None:
        self._root = psutil.Process(os.getpid())
        self._children_only = children_only
        self._interval = interval_s
        self.max_share = max_share
        self.samples: list[CpuSample] = []
        self._last_generator = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)

    def _sample(self) -> None:
        # A tree's total only grows; a dip means a child exited and was not yet reaped into the parent.
        self._last_generator = max(self._last_generator, _tree_cpu(self._root, self._children_only))
        self.samples.append(CpuSample(time.monotonic(), self._last_generator, _machine_busy()))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def start(self) -> CpuMeter:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops sampling with a last sample: a reaped child's whole CPU is in this process's children
        counters by then, including what it did after the last poll."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()

    def window(self, seconds: float | None = None) -> CpuUse:
        """Use over the last ``seconds`` before the stop (all of it when None or longer than sampled)."""
        if not self.samples:
            raise RuntimeError("the meter has no samples: start it first")
        end = self.samples[-1]
        first = self.samples[0]
        if seconds is not None:
            inside = [s for s in self.samples if s.t >= end.t - seconds]
            first = inside[0] if inside else end
        return CpuUse(
            wall_s=end.t - first.t,
            cores=psutil.cpu_count() or 1,
            generator_cpu_s=end.generator_s - first.generator_s,
            machine_busy_s=end.busy_s - first.busy_s,
            max_share=self.max_share,
        )
