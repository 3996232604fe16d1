"""The balancing layer without servers: endpoint specs, the choice of a replica, the client targets."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import Unavailable
from gateway.metrics import GatewayMetrics
from gateway.replicas import EndpointError, EndpointSpec, ReplicaSet
from gateway.triton_client import TritonModels
from vitrine.targets import client_target, round_robin_target


def test_specs_name_fixed_replicas_or_a_dns_name() -> None:
    assert EndpointSpec.parse("10.0.0.1:8001").addresses == ("10.0.0.1:8001",)
    assert EndpointSpec.parse(" a:1, b:2 ").addresses == ("a:1", "b:2")
    spec = EndpointSpec.parse("dns:///triton.ns.svc:8001")
    assert (spec.dns_name, spec.port, spec.addresses) == ("triton.ns.svc", 8001, ())
    for bad in ("", " , ", "host", "dns:///nameonly", "a:1,b"):
        with pytest.raises(EndpointError):
            EndpointSpec.parse(bad)


def _set(spec: str, **kw: object) -> ReplicaSet[str]:
    return ReplicaSet(spec, lambda address: f"client {address}", **kw)  # type: ignore[arg-type]


def test_calls_go_to_the_least_busy_healthy_replica_in_turn() -> None:
    replicas = _set("a:1,b:2,c:3")
    a, b, c = replicas.replicas
    assert {replicas.pick().address for _ in range(6)} == {"a:1", "b:2", "c:3"}  # type: ignore[union-attr]
    with replicas.using(a), replicas.using(b):
        assert [replicas.pick() for _ in range(3)] == [c, c, c]
    replicas.set_up(c, False)
    with replicas.using(a):
        assert [replicas.pick() for _ in range(3)] == [b, b, b]
    assert replicas.pick(exclude=b) is a
    for r in (a, b):
        replicas.set_up(r, False)
    assert replicas.pick() is not None  # all down: still one in turn, whose own error the caller gets
    one = _set("x:1")
    assert one.pick() is one.replicas[0] and one.pick(exclude=one.replicas[0]) is None


def test_a_dns_name_is_resolved_again_and_keeps_what_it_had_on_failure() -> None:
    answers: list[list[str] | OSError] = [
        ["10.0.0.1:8001", "10.0.0.2:8001"],
        ["10.0.0.2:8001", "10.0.0.3:8001"],
        OSError("no such name"),
    ]
    states: list[tuple[str, bool]] = []

    def resolver(name: str, port: int) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    replicas = _set("dns:///triton:8001", resolver=resolver, resolve_interval_s=0.0,
                    on_state=lambda a, up: states.append((a, up)))  # fmt: skip
    assert replicas.addresses == ["10.0.0.1:8001", "10.0.0.2:8001"]
    kept = replicas.replicas[1]
    assert replicas.refresh()
    assert replicas.addresses == ["10.0.0.2:8001", "10.0.0.3:8001"] and replicas.replicas[0] is kept
    assert [r.address for r in replicas.take_retired()] == ["10.0.0.1:8001"]
    assert not replicas.refresh()  # resolution failed: the replicas stay
    assert replicas.addresses == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert ("10.0.0.3:8001", True) in states


async def test_an_unreachable_replica_is_marked_down_and_the_inference_retried_once() -> None:
    """Two endpoints where nothing listens: the call is tried on both (one retry, not more), both are
    marked down, each counted as a failure, and the caller gets UNAVAILABLE naming Triton."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    metrics = GatewayMetrics()
    models = TritonModels(",".join(f"127.0.0.1:{p}" for p in ports), metrics)
    try:
        with pytest.raises(Unavailable) as err:
            await models.embed_text("red boots", timeout=5.0)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "triton" in str(err.value)
        assert not any(r.up for r in models.replicas.replicas)
        sample = metrics.registry.get_sample_value
        for p in ports:
            labels = {"replica": f"127.0.0.1:{p}"}
            assert sample("vitrine_gateway_triton_requests_total", labels) == 1.0
            assert sample("vitrine_gateway_triton_failures_total", labels) == 1.0
            assert sample("vitrine_gateway_triton_replica_up", labels) == 0.0
        assert sample("vitrine_gateway_triton_retries_total") == 1.0
        assert await models.user_tower_version(timeout=2.0) == 0  # no recommender reachable: cold start
    finally:
        await models.close()


def test_several_gateway_addresses_become_one_round_robin_target() -> None:
    assert client_target("127.0.0.1:50050") == "127.0.0.1:50050"
    assert client_target("127.0.0.1:50050, localhost:50060") == "ipv4:127.0.0.1:50050,127.0.0.1:50060"
    assert client_target("dns:///gateway.shop:50050") == "dns:///gateway.shop:50050"
    assert round_robin_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError):
        round_robin_target(["127.0.0.1:1", "[::1]:2"])
