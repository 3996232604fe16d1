"""The server kit (``vitrine.grpc_server``): what every Vitrine gRPC server answers alike.

The kit on a small generic service, then both real services: API keys (one interceptor, one refusal),
reflection under ``grpc.reflection.v1`` and ``v1alpha``, health, TLS. The gateway runs here without its
dependencies (nothing listens at its Triton and index addresses): keys and reflection answer before
any dependency is asked, so no Triton is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.server import Gateway, create_server
from index_service.errors import IndexServiceError
from tests.fixtures.index import IndexFactory
from vitrine.api_keys import UNAUTHENTICATED_MESSAGE, ApiKeys, Scope
from vitrine.errors import MAX_MESSAGE_CHARS, ServiceError, bounded
from vitrine.gateway.v1 import gateway_pb2 as gpb
from vitrine.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from vitrine.grpc_server import REFLECTION_V1, REFLECTION_V1ALPHA, GrpcServer, ServerSpec, build_server
from vitrine.index.v2 import index_pb2 as ipb
from vitrine.index.v2 import index_pb2_grpc as ipb_grpc
from vitrine.net import free_ports

HEALTH = "grpc.health.v1.Health"
INDEX = "vitrine.index.v2.IndexService"
GATEWAY = "vitrine.gateway.v1.ProductSearch"
KEYS = ("read:reader", "write:writer", "read+write:admin")
Code = grpc.StatusCode


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


# ---- the kit on a generic service: one method of each of gRPC's four kinds --------------------------------

SERVICE = "test.Kit"
KINDS = {  # method -> (request streaming, response streaming)
    "Read": (False, False),
    "ReadMany": (False, True),
    "Write": (True, False),
    "WriteMany": (True, True),
}
REQUEST = health_pb2.HealthCheckRequest  # any message: it gives the methods a deserializer that can fail
REPLY = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _kit_handlers(server: grpc.aio.Server) -> None:
    async def one(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return REPLY

    async def many(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        yield REPLY

    async def drain_one(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for _ in requests:
            pass
        return REPLY

    async def drain_many(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for _ in requests:
            yield REPLY

    kw = {
        "request_deserializer": REQUEST.FromString,
        "response_serializer": REPLY.__class__.SerializeToString,
    }
    handlers = {
        "Read": grpc.unary_unary_rpc_method_handler(one, **kw),
        "ReadMany": grpc.unary_stream_rpc_method_handler(many, **kw),
        "Write": grpc.stream_unary_rpc_method_handler(drain_one, **kw),
        "WriteMany": grpc.stream_stream_rpc_method_handler(drain_many, **kw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _kit_scope(method: str) -> Scope:
    return Scope.READ if method.startswith("Read") else Scope.WRITE


async def _start_kit(keys: ApiKeys, **spec: Any) -> GrpcServer:
    served = build_server(
        ServerSpec(SERVICE, "127.0.0.1", 0, 4 * 1024 * 1024, keys, _kit_scope, **spec), _kit_handlers
    )
    await served.server.start()
    await served.set_serving(True)
    return served


@pytest.fixture
async def kit() -> AsyncIterator[GrpcServer]:
    served = await _start_kit(ApiKeys.from_config(KEYS))
    yield served
    await served.server.stop(None)


async def _call(channel: grpc.aio.Channel, method: str, key: str | None, body: bytes = b"") -> Code:
    """Call ``method`` with ``body`` as the raw request bytes; the status it ends with."""
    request_streaming, response_streaming = KINDS[method]
    path, md = f"/{SERVICE}/{method}", bearer(key)
    try:
        if request_streaming and response_streaming:
            async for _ in channel.stream_stream(path)(iter([body]), metadata=md, timeout=5):
                pass
        elif request_streaming:
            await channel.stream_unary(path)(iter([body]), metadata=md, timeout=5)
        elif response_streaming:
            async for _ in channel.unary_stream(path)(body, metadata=md, timeout=5):
                pass
        else:
            await channel.unary_unary(path)(body, metadata=md, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return Code.OK


@pytest.mark.parametrize("method", list(KINDS))
async def test_keys_guard_every_kind_of_method_with_one_refusal(kit: GrpcServer, method: str) -> None:
    reads = method.startswith("Read")
    expected = {
        None: Code.UNAUTHENTICATED,
        "unknown": Code.UNAUTHENTICATED,
        "reader": Code.OK if reads else Code.PERMISSION_DENIED,
        "writer": Code.PERMISSION_DENIED if reads else Code.OK,
        "admin": Code.OK,
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{kit.port}") as channel:
        got = {key: await _call(channel, method, key) for key in expected}
        assert got == expected
        # Refused before decoding: garbage without a key is UNAUTHENTICATED, with one INVALID_ARGUMENT.
        assert await _call(channel, method, None, b"\xff\xff") == Code.UNAUTHENTICATED
        assert await _call(channel, method, "admin", b"\xff\xff") == Code.INVALID_ARGUMENT


async def test_refusal_messages_name_the_method_and_scope_never_the_key(kit: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{kit.port}") as channel:
        write = channel.stream_unary(f"/{SERVICE}/Write")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await write(iter([b""]), metadata=bearer("reader"), timeout=5)
        assert denied.value.details() == "this API key may not call Write: it needs the write scope"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary(f"/{SERVICE}/Read")(b"", metadata=bearer("not-a-key"), timeout=5)
        assert unknown.value.details() == UNAUTHENTICATED_MESSAGE


async def test_health_and_reflection_stay_open_when_keys_are_on(kit: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{kit.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await _list_services(channel, REFLECTION_V1) == sorted(
            [SERVICE, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]
        )


async def test_without_keys_every_method_is_open() -> None:
    served = await _start_kit(ApiKeys())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            assert [await _call(channel, method, None) for method in KINDS] == [Code.OK] * len(KINDS)
    finally:
        await served.server.stop(None)


async def test_tls_when_a_certificate_is_configured(tls_pair: tuple[Path, Path]) -> None:
    cert, key = tls_pair
    served = await _start_kit(ApiKeys(), tls_cert=str(cert), tls_key=str(key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{served.port}", credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert err.value.code() == Code.UNAVAILABLE  # a plaintext client gets no answer
    finally:
        await served.server.stop(None)


def test_both_services_errors_share_one_base_and_one_bound() -> None:
    assert issubclass(GatewayError, ServiceError) and issubclass(IndexServiceError, ServiceError)
    assert bounded("x" * 10, 10) == "x" * 10
    assert bounded("x" * 2000) == "x" * (MAX_MESSAGE_CHARS - 3) + "..."


# ---- reflection, both protocol versions ------------------------------------------------------------------


async def _reflect(
    channel: grpc.aio.Channel, protocol: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One reflection exchange over ``protocol`` (``grpc.reflection.v1.ServerReflection`` or v1alpha).
    The v1 and v1alpha messages are the same on the wire, so v1alpha's classes encode a v1 client's bytes."""
    call = channel.stream_stream(
        f"/{protocol}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = [reply async for reply in call(iter([request]), timeout=5)]
    assert len(replies) == 1
    return replies[0]


async def _list_services(channel: grpc.aio.Channel, protocol: str) -> list[str]:
    reply = await _reflect(channel, protocol, reflection_pb2.ServerReflectionRequest(list_services=""))
    return sorted(service.name for service in reply.list_services_response.service)


def _descriptor_client_services(address: str) -> list[str]:
    """What grpcio-reflection's own client (v1alpha) finds, and that it can describe each service."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        for service in services:
            assert database.FindFileContainingSymbol(service).name
        return services


async def _assert_reflection(address: str, service: str) -> None:
    expected = sorted([service, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
    async with grpc.aio.insecure_channel(address) as channel:
        for protocol in (REFLECTION_V1, REFLECTION_V1ALPHA):
            assert await _list_services(channel, protocol) == expected, protocol
        # v1 describes its own service under the v1 package, with v1alpha's fields
        reply = await _reflect(
            channel,
            REFLECTION_V1,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=REFLECTION_V1),
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]
        assert [f.package for f in files] == ["grpc.reflection.v1"]
        assert [m.name for m in files[0].message_type] == [
            m.name for m in reflection_pb2.DESCRIPTOR.message_types_by_name.values()
        ]
    assert await asyncio.to_thread(_descriptor_client_services, address) == expected


async def test_the_index_service_serves_reflection_v1_and_v1alpha(index_factory: IndexFactory) -> None:
    server, _ = await index_factory()
    await _assert_reflection(f"127.0.0.1:{server.port}", INDEX)


# ---- the gateway and the index service through the kit --------------------------------------------------


@pytest.fixture
async def keyed_gateway() -> AsyncIterator[Gateway]:
    """A gateway with keys whose dependencies are absent: its gRPC server still answers keys and
    reflection, which come before any dependency is asked."""
    triton_port, index_port = free_ports(2)
    config = GatewayConfig(
        port=0,
        triton_url=f"127.0.0.1:{triton_port}",
        index_address=f"127.0.0.1:{index_port}",
        api_key="legacy",
        api_keys=KEYS,
        health_interval_s=60.0,
    )
    gateway, _ = await create_server(config)
    yield gateway
    await gateway.stop(grace=0)


async def test_the_gateway_serves_reflection_v1_and_v1alpha(keyed_gateway: Gateway) -> None:
    await _assert_reflection(f"127.0.0.1:{keyed_gateway.port}", GATEWAY)


async def test_gateway_keys_refuse_through_the_kit(keyed_gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed_gateway.port}") as channel:
        stub = gpb_grpc.ProductSearchStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Search(gpb.SearchRequest(text="boots"), timeout=5)
        assert (missing.value.code(), missing.value.details()) == (
            Code.UNAUTHENTICATED,
            UNAUTHENTICATED_MESSAGE,
        )
        upsert = gpb.UpsertProductsRequest(product=gpb.Product(id="p", title="t"))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.UpsertProducts(iter([upsert]), metadata=bearer("reader"), timeout=5)
        assert (denied.value.code(), denied.value.details()) == (
            Code.PERMISSION_DENIED,
            "this API key may not call UpsertProducts: it needs the write scope",
        )
        with pytest.raises(grpc.aio.AioRpcError) as events:
            await stub.RecordEvents(iter([gpb.RecordEventsRequest()]), metadata=bearer("reader"), timeout=5)
        assert events.value.code() == Code.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as legacy:  # the single legacy key may write: it passes
            await stub.DeleteProducts(
                gpb.DeleteProductsRequest(ids=["p"]), metadata=bearer("legacy"), timeout=5
            )
        assert legacy.value.code() not in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)


async def test_index_keys_refuse_through_the_kit(index_factory: IndexFactory) -> None:
    server, _ = await index_factory(api_keys=KEYS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ListCollections(ipb.ListCollectionsRequest(), timeout=5)
        assert (missing.value.code(), missing.value.details()) == (
            Code.UNAUTHENTICATED,
            UNAUTHENTICATED_MESSAGE,
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.DropCollection(
                ipb.DropCollectionRequest(name="c"), metadata=bearer("reader"), timeout=5
            )
        assert (denied.value.code(), denied.value.details()) == (
            Code.PERMISSION_DENIED,
            "this API key may not call DropCollection: it needs the write scope",
        )
        listed = await stub.ListCollections(
            ipb.ListCollectionsRequest(), metadata=bearer("reader"), timeout=5
        )
        assert not listed.collections
