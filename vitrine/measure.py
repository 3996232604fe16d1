"""What every measurement needs: one percentile definition and one description of the hardware.

Load reports, benchmarks and the per-stage timings all use :func:`percentile` (nearest rank, what Locust
reports), so a p95 means the same thing in every table; :func:`hardware` names what a figure was measured
on, because a figure means nothing without it.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile for ``q`` in [0, 1]; NaN for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


def cpu_name() -> str:
    """The CPU model as the kernel reports it, else the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name() -> str:
    """Every GPU ``nvidia-smi`` lists (name, memory, driver), or "none"."""
    if not shutil.which("nvidia-smi"):
        return "none"
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return done.stdout.strip().replace("\n", "; ") if done.returncode == 0 and done.stdout.strip() else "none"


def hardware() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "gpu": gpu_name()}


def describe_hardware(extra: str = "") -> str:
    """One line for a report: "<CPU>, N vCPU, no GPU[; extra]"."""
    info = hardware()
    gpu = "no GPU" if info["gpu"] == "none" else f"GPU {info['gpu']}"
    line = f"{info['cpu']}, {info['cpus']} vCPU, {gpu}"
    return f"{line}; {extra}" if extra else line
