"""One way to assemble a Vitrine gRPC server, shared by the gateway and the index service.

``build_server`` takes a ``ServerSpec`` (the API service's name, where to bind, message limits, keys,
TLS) and a function that adds the service's servicer, and returns the server bound but not started,
with its health servicer and its port (a requested port 0 comes back as the one bound). Every server
gets the same, in this order:

* ``ApiKeyInterceptor`` when keys are configured: each method of the API service needs the scope the
  service's ``scope_of`` names; a missing or unknown key is UNAUTHENTICATED, a known key without the
  scope PERMISSION_DENIED. The refusal is answered without decoding the request, so a caller without a
  key learns nothing about how its bytes decode. Health and reflection stay open for probes and tools.
* ``vitrine.grpc_decode.DecodeErrors``: an undecodable request is INVALID_ARGUMENT saying why; the
  streaming methods named in ``per_item`` get the failure in their stream, to report like a bad item.
* ``grpc.health.v1``, whose status the service sets (``GrpcServer.set_serving``).
* Server reflection under both names tools ask for, ``grpc.reflection.v1`` (grpcurl and Postman try
  it first) and ``grpc.reflection.v1alpha``. grpcio-reflection ships only a ``v1alpha`` servicer; the
  two protocols' messages are the same on the wire, so the one servicer answers under both names, and
  ``v1``'s descriptor is derived from ``v1alpha``'s so ``describe`` resolves it too.

Binding is grpcio's own, without retries; note that grpcio sets SO_REUSEPORT by default, so a port
another server already listens on is shared rather than refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from vitrine.api_keys import ApiKeys, Denied, Scope, bearer, refusal_message
from vitrine.grpc_decode import DecodeErrors

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"

_REFUSAL_CODES = {
    Denied.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Denied.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True)
class ServerSpec:
    """What differs between two Vitrine gRPC servers; everything else ``build_server`` does alike."""

    service: str
    """Full name of the API service (``vitrine.index.v2.IndexService``): keys guard its methods, health
    and reflection name it."""
    host: str
    port: int
    max_message_bytes: int
    keys: ApiKeys
    """No key configured (``ApiKeys()``) leaves the service open."""
    scope_of: Callable[[str], Scope]
    """The scope a method (its bare name, ``Search``) needs; a method nobody listed should need write."""
    per_item: Iterable[str] = ()
    """Bare names of streaming methods that report an undecodable message as a bad item."""
    tls_cert: str = ""
    tls_key: str = ""
    max_concurrent_rpcs: int | None = None


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int
    service: str

    async def set_serving(self, serving: bool) -> None:
        """Health of the whole server (``""``) and of the API service, which probes may ask for by name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", self.service):
            await self.health.set(name, status)


def build_server(spec: ServerSpec, add_servicer: Callable[[grpc.aio.Server], None]) -> GrpcServer:
    """The server for ``spec`` with the API service ``add_servicer`` adds, bound, not yet started."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if spec.keys.enabled:
        interceptors.append(ApiKeyInterceptor(spec.service, spec.keys, spec.scope_of))
    interceptors.append(DecodeErrors(per_item=[f"/{spec.service}/{method}" for method in spec.per_item]))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", spec.max_message_bytes),
            ("grpc.max_send_message_length", spec.max_message_bytes),
        ],
        maximum_concurrent_rpcs=spec.max_concurrent_rpcs,
    )
    add_servicer(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    add_reflection(server, (spec.service, HEALTH_SERVICE))
    address = f"{spec.host}:{spec.port}"
    if spec.tls_cert and spec.tls_key:
        credentials = grpc.ssl_server_credentials(
            [(Path(spec.tls_key).read_bytes(), Path(spec.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return GrpcServer(server, health, port, spec.service)


# ---- API keys -------------------------------------------------------------------------------------------


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """``keys`` on every method of ``service``; other services (health, reflection) stay open."""

    def __init__(self, service: str, keys: ApiKeys, scope_of: Callable[[str], Scope]) -> None:
        self.service = service
        self.keys = keys
        self.scope_of = scope_of

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, method = (details.method or "").lstrip("/").partition("/")
        if handler is None or service != self.service:
            return handler
        token = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                token = bearer(value if isinstance(value, str) else value.decode("latin-1"))
        needed = self.scope_of(method)
        denied = self.keys.check(token, needed)
        if denied is None:
            return handler
        return refusing(handler, _REFUSAL_CODES[denied], refusal_message(denied, needed, method))


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``code`` without decoding the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    # No request deserializer: the request reaches ``refuse`` as the bytes it came as, never decoded.
    return make(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


# ---- reflection -----------------------------------------------------------------------------------------


def add_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Reflection for ``services`` and itself, under ``grpc.reflection.v1`` and ``v1alpha``."""
    _register_reflection_v1_descriptor()
    servicer = reflection_aio.ReflectionServicer((*services, REFLECTION_V1, REFLECTION_V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),)
    )


def _register_reflection_v1_descriptor() -> None:
    """Put ``grpc.reflection.v1``'s file in the default descriptor pool, which reflection answers from:
    ``v1alpha``'s file under the ``v1`` package and file name (the messages are the same on the wire)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{REFLECTION_V1.rsplit('.', 1)[0]}."
    proto.name, proto.package = _REFLECTION_V1_FILE, new.strip(".")
    for message in proto.message_type:
        for fld in message.field:
            if fld.HasField("type_name"):  # message-typed fields only: a scalar must not get one
                fld.type_name = fld.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())
