"""Requests grpcio cannot decode become INVALID_ARGUMENT with a message that says what was wrong.

grpcio decodes a request with the handler's deserializer before any servicer code runs; when that raises
(garbage bytes, a ``string`` field that is not valid UTF-8, groups nested beyond protobuf's recursion
limit) the client gets UNKNOWN "Unexpected <class ...DecodeError>" on a unary call and INTERNAL on a
stream: a status that blames the server and a message that names an internal class. ``DecodeErrors``, a
server interceptor, wraps every handler's deserializer so a failure becomes an ``Undecodable`` value
instead of an exception, and the wrapped handler answers INVALID_ARGUMENT for it before the servicer
sees the call. A streaming method listed in ``per_item`` gets the ``Undecodable`` in its request stream
instead, so a servicer whose contract reports bad items one by one can report this one too.

Place it after any authentication interceptor: a caller without a valid key learns nothing about how
its bytes decode.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """A request message grpcio could not decode; ``reason`` is safe to return to the caller."""

    reason: str


def describe(data: bytes, message_name: str) -> str:
    """Why ``data`` is not a ``message_name``: bad wire format (which every message type shares), or a
    well-formed body whose typed decode failed, which for proto3 means a string that is not UTF-8."""
    try:
        empty_pb2.Empty.FromString(data)
    except DecodeError:
        return (
            f"request is not a valid {message_name}: the bytes are not protobuf wire format "
            "(truncated, garbage, or nested more than 100 levels deep)"
        )
    return (
        f"request is not a valid {message_name}: a string field is not valid UTF-8, a field has the "
        "wrong wire type, or messages are nested more than 100 levels deep"
    )


def _safe(deserializer: Callable[[bytes], Any] | None, message_name: str) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception:  # upb raises DecodeError; other runtimes raise other Message errors
            return Undecodable(describe(data, message_name))

    return decode


def _message_name(deserializer: Callable[[bytes], Any] | None) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or "message")


def _checked_stream(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, per_item: bool
) -> AsyncIterator[Any]:
    if per_item:
        return requests

    async def stream() -> AsyncIterator[Any]:
        position = 0
        async for request in requests:
            if isinstance(request, Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"stream message {position}: {request.reason}"
                )
            yield request
            position += 1

    return stream()


def _behaviour(inner: Callable[..., Any], streaming_response: bool, prepare: Callable[..., Any]) -> Any:
    """``inner`` behind ``prepare`` (which aborts on an undecodable request or wraps a request stream),
    in ``inner``'s own style: grpc.aio iterates an async generator and awaits a coroutine (which may
    ``context.write``), and refuses a mix of the two."""
    if streaming_response and inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner(await prepare(request, context), context):
                yield response

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await inner(await prepare(request, context), context)

    return coroutine


def wrap_handler(handler: grpc.RpcMethodHandler, per_item: bool = False) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that cannot raise and a behaviour that refuses what did not decode."""
    decode = _safe(handler.request_deserializer, _message_name(handler.request_deserializer))

    async def check_one(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return request

    async def check_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return _checked_stream(requests, context, per_item)

    kinds: dict[tuple[bool, bool], tuple[Any, Any, Any]] = {
        (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary, check_one),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream, check_one),
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary, check_stream),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream, check_stream),
    }
    make, inner, prepare = kinds[(handler.request_streaming, handler.response_streaming)]
    assert inner is not None, "a handler carries the behaviour of its kind"
    return make(
        _behaviour(inner, handler.response_streaming, prepare),
        request_deserializer=decode,
        response_serializer=handler.response_serializer,
    )


class DecodeErrors(grpc.aio.ServerInterceptor):
    """Every method's undecodable request becomes INVALID_ARGUMENT; streaming methods named in
    ``per_item`` (full method paths, ``/package.Service/Method``) receive ``Undecodable`` items instead."""

    def __init__(self, per_item: Iterable[str] = ()) -> None:
        self.per_item = frozenset(per_item)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return wrap_handler(handler, handler_call_details.method in self.per_item)
