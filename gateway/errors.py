"""The gateway's failure vocabulary and its two translation points.

Dependencies fail in their own dialects (``grpc.aio.AioRpcError`` from the index service, tritonclient's
``InferenceServerException`` with a status string from Triton). ``from_dependency`` turns both into
typed errors once, at the client boundary, naming the dependency; ``status_of`` turns a typed error into
the gRPC status the caller sees, once, in the servicer. Nothing in between inspects status codes.
The HTTP/JSON API reports the same status through ``HTTP_STATUS``: same code name, same message.
The base class and the message bounds are the kernel's (``vitrine.errors``), shared with the index service.
"""

from __future__ import annotations

from enum import Enum

import grpc

from vitrine.errors import ServiceError, bounded


class Dependency(str, Enum):
    TRITON = "triton"
    INDEX = "index"
    STATE = "state"
    """The shared-state database (PostgreSQL): events and the serving pointer, not searches."""


class GatewayError(ServiceError):
    """Base of every error the gateway reports on purpose."""


class InvalidInput(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class Overloaded(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(GatewayError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DependencyError(GatewayError):
    """A dependency failed; ``code`` is what the caller sees, ``dependency`` says which one."""

    def __init__(self, dependency: Dependency, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{dependency.value}: {detail}")
        self.dependency = dependency
        self.code = code
        self.detail = detail


class Unavailable(DependencyError):
    def __init__(self, dependency: Dependency, detail: str) -> None:
        super().__init__(dependency, grpc.StatusCode.UNAVAILABLE, f"unavailable ({detail})")


# How a dependency's status reaches the caller. Caller mistakes the dependency detected (a corrupt image
# Triton could not decode, a filter the index refused) stay INVALID_ARGUMENT; a dependency shedding load
# (the index's concurrency limit, Triton's bounded queue) becomes RESOURCE_EXHAUSTED, like the gateway's
# own limit, so clients back off rather than treat a busy stack as a broken one; anything that says the
# dependency is down becomes UNAVAILABLE so clients retry; everything else is INTERNAL, because the
# gateway built the request and a rejection is its bug.
_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE: grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND: grpc.StatusCode.UNAVAILABLE,  # a model or collection that is not loaded
    grpc.StatusCode.FAILED_PRECONDITION: grpc.StatusCode.UNAVAILABLE,
    # A dependency that refuses the gateway's own credentials: the gateway cannot serve (health turns
    # NOT_SERVING so operators see it), and it is not the caller's mistake.
    grpc.StatusCode.UNAUTHENTICATED: grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED: grpc.StatusCode.UNAVAILABLE,
}

_BY_NAME = {code.name: code for code in grpc.StatusCode}

TRITON_QUEUE_FULL = "exceeds maximum queue size"
"""Triton's dynamic batcher refuses a request beyond ``max_queue_size`` with UNAVAILABLE and this text."""

TRITON_STUB_DOWN = "is not healthy"
"""Triton answers INTERNAL "Stub process '<model>' is not healthy" while a Python model's stub process
is dead or being restarted (seen right after a restart on a loaded machine): the server cannot serve that
model now, which is UNAVAILABLE (worth a retry, on another replica where there is one), not a bug."""


def _triton_code(status: str | None) -> grpc.StatusCode:
    """tritonclient reports gRPC codes as strings like ``StatusCode.UNAVAILABLE``."""
    name = (status or "").rsplit(".", 1)[-1].upper()
    return _BY_NAME.get(name, grpc.StatusCode.UNKNOWN)


def from_dependency(dependency: Dependency, exc: BaseException) -> GatewayError:
    """The one place dependency exceptions become typed errors."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        detail = (exc.details() if hasattr(exc, "details") else None) or str(code)
    elif isinstance(exc, InferenceServerException):
        code = _triton_code(exc.status())
        detail = exc.message() or str(exc)
        if TRITON_QUEUE_FULL in detail.lower():
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        elif TRITON_STUB_DOWN in detail or (
            code == grpc.StatusCode.UNKNOWN and "unavailable" in detail.lower()
        ):
            code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(exc, (ConnectionError, OSError)):
        code, detail = grpc.StatusCode.UNAVAILABLE, str(exc)
    else:
        code, detail = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
    mapped = _PASS_THROUGH.get(code, grpc.StatusCode.INTERNAL)
    if mapped == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"{dependency.value} is overloaded, retry later: {detail}")
    if mapped == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(dependency, detail)
    if mapped == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded waiting for {dependency.value}")
    if mapped == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(f"{dependency.value} rejected the input: {detail}")
    return DependencyError(dependency, mapped, detail)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place typed errors become a gRPC status and message (bounded)."""
    if isinstance(exc, GatewayError):
        return exc.code, bounded(str(exc))
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


# The HTTP status of each gRPC code, after google.rpc.Code's documented HTTP mapping (as gRPC-Gateway
# and Google's JSON APIs use it), except FAILED_PRECONDITION: 412 rather than 400, because the request
# was well formed and it is the server's state that must change first.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
