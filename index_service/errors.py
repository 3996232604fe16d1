"""Domain errors, each carrying the gRPC status it becomes at the transport boundary (servicer.py)."""

from __future__ import annotations

import grpc

MAX_ECHO_CHARS = 80
"""Most characters of one caller-supplied value (an id, a name) a message repeats."""

MAX_MESSAGE_CHARS = 1024
"""Most characters of any status message, far below gRPC's 8 KiB metadata limit."""


def quoted(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of a value taken from a request, cut with an ellipsis when long: a 10,000-character id
    must not come back whole inside a status message."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def capped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


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
