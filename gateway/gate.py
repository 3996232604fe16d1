"""Around every call, whichever transport carries it: admission, metrics, and the one status translation.

``CallGate.call(method)`` admits a call under one in-flight bound shared by gRPC and HTTP, counts it
under its gRPC method name, and turns any failure into ``Failure(code, message)``: gRPC aborts with
them, HTTP answers ``errors.HTTP_STATUS[code]`` with the same message, so an error reads the same on
both APIs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

import grpc

from gateway.errors import DependencyError, GatewayError, Overloaded, status_of
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class Failure(Exception):
    """A call failed with this status; the transport reports ``code`` and ``message`` as they are."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CallGate:
    """Admission (one in-flight bound for both transports), metrics under the method's name, and the
    one translation of any failure into ``Failure(code, message)``."""

    def __init__(
        self, metrics: GatewayMetrics, max_in_flight: int, on_unavailable: Callable[[DependencyError], None]
    ) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.on_unavailable = on_unavailable
        self.in_flight = 0

    def call(self, method: str) -> _Call:
        return _Call(self, method)

    def observe(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.metrics.stage_latency.labels(stage).observe(ms / 1000.0)


class _Call:
    """One admitted (or refused) call. ``__aexit__`` never swallows an exception (it returns None), so
    a ``return`` inside ``async with gate.call(...)`` is the function's only way out besides a raise."""

    def __init__(self, gate: CallGate, method: str) -> None:
        self.gate = gate
        self.method = method
        self.admitted = False
        self.t0 = 0.0

    async def __aenter__(self) -> None:
        gate = self.gate
        self.t0 = time.perf_counter()
        self.admitted = gate.in_flight < gate.max_in_flight
        if not self.admitted:
            refusal = Overloaded(f"{gate.max_in_flight} requests in flight; retry with backoff")
            self._settle(refusal.code)
            raise Failure(*status_of(refusal))
        gate.in_flight += 1
        gate.metrics.in_flight.set(gate.in_flight)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = grpc.StatusCode.OK
        failure: Failure | None = None
        if isinstance(exc, Failure):
            code = exc.code
        elif isinstance(exc, Exception):
            code, message = status_of(exc)
            if isinstance(exc, DependencyError) and code == grpc.StatusCode.UNAVAILABLE:
                self.gate.on_unavailable(exc)
            if not isinstance(exc, (GatewayError, TimeoutError)):
                log.exception("unexpected failure", extra={"method": self.method}, exc_info=exc)
            failure = Failure(code, message)
        self._settle(code)
        if failure is not None:
            raise failure from exc

    def _settle(self, code: grpc.StatusCode) -> None:
        gate = self.gate
        if self.admitted:
            gate.in_flight -= 1
            gate.metrics.in_flight.set(gate.in_flight)
        gate.metrics.requests.labels(self.method, code.name).inc()
        gate.metrics.latency.labels(self.method).observe(time.perf_counter() - self.t0)
