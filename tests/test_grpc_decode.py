"""Requests grpcio cannot decode get INVALID_ARGUMENT with a plain message (``vitrine.grpc_decode``),
on a real grpc.aio server, for unary and streaming methods, without breaking the ones that decode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from vitrine.grpc_decode import DecodeErrors

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
NOT_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (service, a string) holding invalid UTF-8
GARBAGE = b"\xff\xff\xff\xff\x0f"
DEEP = b"\x7b" * 200 + b"\x7c" * 200  # unknown groups nested 200 deep


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[DecodeErrors()])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((reflection.SERVICE_NAME,), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(NOT_UTF8, "not valid UTF-8"), (GARBAGE, "not protobuf wire format"), (DEEP, "nested")],
)
async def test_undecodable_unary_request_is_invalid_argument(
    channel: grpc.aio.Channel, data: bytes, fragment: str
) -> None:
    call = channel.unary_unary(CHECK)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(data, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "grpc.health.v1.HealthCheckRequest" in details and fragment in details
    assert "class" not in details and "DecodeError" not in details
    ok = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING


async def test_streaming_methods_still_serve_and_refuse_garbage(channel: grpc.aio.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in channel.unary_stream(WATCH)(GARBAGE, timeout=5):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    good = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [r async for r in stub.ServerReflectionInfo(iter([good]), timeout=5)]
    assert replies and replies[0].list_services_response.service
    stream = channel.stream_stream(REFLECT)(iter([good.SerializeToString(), GARBAGE]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stream:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("stream message 1: request is not a valid")
