"""Domain errors, each carrying the gRPC status it becomes at the transport boundary (servicer.py).

The base, the message bounds and ``quoted``/``bounded`` are the kernel's (``vitrine.errors``)."""

from __future__ import annotations

import grpc

from vitrine.errors import ServiceError


class IndexServiceError(ServiceError):
    """Base of every error the index service reports on purpose."""


class InvalidArgument(IndexServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(IndexServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(IndexServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(IndexServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
