"""Domain errors, each carrying the gRPC status it becomes at the transport boundary (servicer.py)."""

from __future__ import annotations

import grpc


class IndexServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(IndexServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(IndexServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(IndexServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(IndexServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
