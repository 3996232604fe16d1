"""Client targets over several gateways: one gRPC channel that spreads calls with ``round_robin``.

A client (``vitrine`` commands, the Locust users, the open-loop generator) takes ``--gateway`` as one
address, a comma-separated list of them (``127.0.0.1:50050,127.0.0.1:50060``), or any gRPC target
(``dns:///gateway.shop:50050``, whose every address is used, ``ipv4:...``). A list becomes gRPC's own
``ipv4:`` (or ``ipv6:``) target, so gRPC itself keeps one subchannel per gateway, sends each call to the
next ready one, and stops choosing one whose connection broke until it reconnects: a gateway that dies
costs only the calls in flight on it. Names in a list are resolved once, here (``ipv4:`` takes literals).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

import grpc

ROUND_ROBIN: tuple[tuple[str, str], ...] = (("grpc.lb_policy_name", "round_robin"),)
"""Channel option: every call to the next ready address (gRPC's default, pick_first, uses one)."""

RECONNECT: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""A restarted gateway is used again within about two seconds, not after gRPC's two-minute backoff."""


def retry_options(service: str, attempts: int = 2) -> tuple[tuple[str, str], ...]:
    """A service config that sends a call refused UNAVAILABLE once more (to the next address under
    ``round_robin``). For callers whose every method is safe to repeat (the gateway's are: upserts and
    deletes by id, events deduplicated by ``event_id``, reads)."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": service}],
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    return (("grpc.service_config", json.dumps(config)),)


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r}: expected host:port")
    return host.strip("[]"), port


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return ipaddress.ip_address(socket.gethostbyname(host))


def addresses_of(spec: str) -> list[str]:
    """The addresses of a comma-separated list (a gRPC target with a scheme stays whole)."""
    if "://" in spec or spec.startswith(("ipv4:", "ipv6:", "unix:")):
        return [spec]
    return [part.strip() for part in spec.split(",") if part.strip()]


def round_robin_target(addresses: Sequence[str]) -> str:
    """One gRPC target for every address: itself when there is one, else ``ipv4:a,b`` (``ipv6:``
    when the addresses are IPv6), names resolved to addresses now."""
    if len(addresses) == 1:
        return addresses[0]
    if not addresses:
        raise ValueError("no address given")
    resolved = []
    for address in addresses:
        host, port = _host_port(address)
        resolved.append((_literal(host), port))
    versions = {ip.version for ip, _ in resolved}
    if versions == {6}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in resolved)
    if versions != {4}:
        raise ValueError(f"mixed IPv4 and IPv6 addresses: {', '.join(addresses)}")
    return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)


def client_target(spec: str) -> str:
    """What a client dials for ``--gateway``: one address, a list, or a gRPC target."""
    return round_robin_target(addresses_of(spec))


def channel_options(extra: Sequence[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    """``round_robin`` and a quick reconnect, plus ``extra`` (a service config in ``extra`` takes
    precedence over the policy name)."""
    return [*ROUND_ROBIN, *RECONNECT, *extra]


def insecure_channel(spec: str, extra: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    return grpc.insecure_channel(client_target(spec), options=channel_options(extra))


def aio_channel(spec: str, extra: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(client_target(spec), options=channel_options(extra))
