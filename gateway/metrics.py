"""The gateway's own Prometheus metrics (Triton's count only what reached Triton).

Each server gets its own registry, so several gateways in one process (tests) never share counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vitrine.metrics import service_registry

_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
            0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
"""Fine between 5 and 100 ms, where the objective sits: load reports take p95 from these buckets."""


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=service_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "vitrine_gateway_requests",
            "Requests by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "vitrine_gateway_request_seconds",
            "Request latency by method",
            ["method"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "vitrine_gateway_stage_seconds",
            "Latency of pipeline stages (embed_text, embed_image, retrieve, rerank, total)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("vitrine_gateway_in_flight", "Requests being served", registry=r)
        self.events_recorded = Counter(
            "vitrine_gateway_events_recorded",
            "Shopper events stored (RecordEvents, POST /v1/events)",
            registry=r,
        )
        self.recommendations = Counter(
            "vitrine_gateway_recommendations",
            "Recommend answers by strategy (personal; cold start: session, trending)",
            ["strategy"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "vitrine_gateway_dependency_up",
            "1 when the dependency passed its last probe",
            ["dependency"],
            registry=r,
        )
        self.triton_requests = Counter(
            "vitrine_gateway_triton_requests",
            "Calls sent to each Triton replica (retries included)",
            ["replica"],
            registry=r,
        )
        self.triton_failures = Counter(
            "vitrine_gateway_triton_failures",
            "Calls that failed on each Triton replica",
            ["replica"],
            registry=r,
        )
        self.triton_replica_up = Gauge(
            "vitrine_gateway_triton_replica_up",
            "1 while the Triton replica is given calls (ready at its last probe, no UNAVAILABLE since)",
            ["replica"],
            registry=r,
        )
        self.triton_retries = Counter(
            "vitrine_gateway_triton_retries",
            "Idempotent inferences sent again to another replica after UNAVAILABLE",
            registry=r,
        )
