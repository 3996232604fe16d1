"""What every Vitrine service's errors share: a gRPC status per class, and messages of bounded size.

Each service declares its own vocabulary (``gateway.errors``, ``index_service.errors``) as subclasses of
``ServiceError``; the class says which status the error becomes where the service translates it, once,
at its transport boundary. Messages repeat caller input (an id, a filter field, a decoder's complaint),
so whatever reaches a caller is cut first: ``quoted`` for one value inside a message, ``bounded`` for
the whole message.
"""

from __future__ import annotations

import grpc

MAX_ECHO_CHARS = 80
"""Most characters of one caller-supplied value (an id, a name) a message repeats."""

MAX_MESSAGE_CHARS = 1024
"""Most characters of any status message, far below gRPC's 8 KiB metadata limit."""


class ServiceError(Exception):
    """An error a service reports on purpose; ``code`` is the gRPC status it becomes."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


def quoted(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of a value taken from a request, cut with an ellipsis when long: a 10,000-character id
    must not come back whole inside a status message."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, the last three an ellipsis when anything was cut."""
    return message if len(message) <= limit else message[: limit - 3] + "..."
