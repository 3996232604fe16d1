"""API keys for the index service: read and write scopes, checked before a request is even decoded.

Reads (Search, Get, GetStats, ListCollections, ListAliases) need ``read``; every other IndexService
method needs ``write``, so a method added later is closed to read-only keys until someone decides
otherwise. Health and reflection stay open (the launcher's readiness probe uses health). Keys and their
format are ``vitrine.api_keys``; they come from ``--api-keys``/``VITRINE_INDEX_API_KEYS`` or
``--api-keys-file`` and are off by default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vitrine.api_keys import UNAUTHENTICATED_MESSAGE, ApiKeys, Denied, Scope, bearer
from vitrine.index.v2 import index_pb2

SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name
READ_METHODS = frozenset({"Search", "Get", "GetStats", "ListCollections", "ListAliases"})


def scope_of(method: str) -> Scope:
    return Scope.READ if method in READ_METHODS else Scope.WRITE


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``code`` without reading the request."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield None  # unreachable: abort raises

    # The request is never looked at: it is passed on undecoded.
    kw: dict[str, Any] = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)


class RequireApiKey(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE_NAME:
            return handler
        token = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                token = bearer(value if isinstance(value, str) else value.decode("latin-1"))
        needed = scope_of(method)
        denied = self.keys.check(token, needed)
        if denied is Denied.UNAUTHENTICATED:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if denied is Denied.PERMISSION_DENIED:
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this API key may not call {method[:64]}: it needs the {needed.value} scope",
            )
        return handler
