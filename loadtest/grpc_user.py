"""Locust's gRPC pattern: gevent-friendly sync channels whose calls are reported as Locust requests.

Locust measures what its ``events.request`` hook is told. A client interceptor fires it around every unary
call so latency, response size and failures (by gRPC status) are recorded without each task timing itself.
A call carries its report name in a private metadata key, stripped before the call leaves the process, so
the statistics are per scenario ("Search text_rerank50") rather than per method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent

from vitrine import targets

# Without this the C core blocks the whole gevent hub on each call and every simulated user waits in line.
grpc_gevent.init_gevent()

REQUEST_TYPE = "grpc"
NAME_KEY = "x-vitrine-loadtest-name"


def named(name: str) -> tuple[tuple[str, str], ...]:
    """Metadata that gives one call its name in the Locust statistics."""
    return ((NAME_KEY, name),)


class RpcFailure(Exception):
    """A failed call as Locust groups it, by status code and message: 'failures by reason'."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


def failure_from(error: grpc.RpcError) -> RpcFailure:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return RpcFailure(code.name if code is not None else "UNKNOWN", details or "")


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Fires ``events.request`` once per unary call, success or failure."""

    def __init__(self, fire: Callable[..., None]) -> None:
        self._fire = fire

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = tuple(client_call_details.metadata or ())
        name = client_call_details.method.rsplit("/", 1)[-1]
        kept = tuple((k, v) for k, v in metadata if k != NAME_KEY)
        for key, value in metadata:
            if key == NAME_KEY:
                name = value
        start = time.perf_counter()
        call = continuation(_CallDetails(client_call_details, kept), request)
        exception: Exception | None = None
        length = 0
        try:
            length = call.result().ByteSize()
        except grpc.RpcError as error:
            exception = failure_from(error)
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
        return call


def intercepted_channel(target: str, fire: Callable[..., None]) -> grpc.Channel:
    """``target``: one gateway, several comma-separated (each user spreads its calls over them with
    ``round_robin``), or a gRPC target (``vitrine.targets``)."""
    return grpc.intercept_channel(targets.insecure_channel(target), LocustInterceptor(fire))


@contextmanager
def timed(fire: Callable[..., None], name: str) -> Iterator[dict[str, Any]]:
    """The interceptor's report for clients that own their channel (tritonclient).

    The body may set ``report["length"]``; an exception is recorded as a failure and not re-raised,
    exactly as an intercepted call records a bad status and lets the user carry on.
    """
    report: dict[str, Any] = {"length": 0}
    start = time.perf_counter()
    exception: Exception | None = None
    try:
        yield report
    except grpc.RpcError as error:
        exception = failure_from(error)
    except Exception as error:  # tritonclient wraps statuses in InferenceServerException
        status = getattr(error, "status", None)
        code = status() if callable(status) else None
        message = getattr(error, "message", None)
        text = message() if callable(message) else str(error)
        exception = RpcFailure(str(code or type(error).__name__).removeprefix("StatusCode."), text or "")
    fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=(time.perf_counter() - start) * 1000.0,
        response_length=int(report["length"]),
        exception=exception,
        context={},
    )
