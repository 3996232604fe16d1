"""Prometheus registries for Vitrine's services.

Each server gets its own registry (several servers share one process in tests) carrying the process and
platform collectors, so the dashboard's CPU and memory panels see every service, not only Triton.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector


def service_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
