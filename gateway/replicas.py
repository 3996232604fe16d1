"""Several Triton replicas behind one client: which endpoints exist, which are healthy, which gets a call.

An endpoint spec is what ``--triton-url`` takes: one ``host:port``, a comma-separated list of them, or
``dns:///name:port``, a name whose every address is a replica (what a Kubernetes headless Service gives),
resolved again every ``resolve_interval_s``. A plain ``host:port`` is one replica even if its name has
several addresses: only the ``dns:///`` scheme (gRPC's own) asks for one replica per address.

A call goes to the healthy replica with the fewest calls outstanding, ties broken in turn (round robin
when the load is even). A replica is marked down when it fails its readiness probe or answers
UNAVAILABLE, and comes back when the probe finds it ready. When every replica is down a call still goes
to one of them in turn: the caller gets the dependency's own error, and a replica that came back before
the next probe serves at once.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

DNS_SCHEME = "dns:///"
RESOLVE_INTERVAL_S = 10.0

C = TypeVar("C")

Resolver = Callable[[str, int], list[str]]


class EndpointError(ValueError):
    """An endpoint spec that names no replica (empty, no port)."""


@dataclass(frozen=True)
class EndpointSpec:
    """Parsed ``--triton-url``: fixed ``addresses``, or a ``dns_name`` and ``port`` to resolve."""

    addresses: tuple[str, ...] = ()
    dns_name: str = ""
    port: int = 0

    @classmethod
    def parse(cls, spec: str) -> EndpointSpec:
        spec = spec.strip()
        if spec.startswith(DNS_SCHEME):
            host, sep, port = spec[len(DNS_SCHEME) :].rpartition(":")
            if not sep or not host or not port.isdigit():
                raise EndpointError(f"{spec!r}: expected dns:///name:port")
            return cls(dns_name=host, port=int(port))
        addresses = tuple(part.strip() for part in spec.split(",") if part.strip())
        if not addresses:
            raise EndpointError("no Triton endpoint given")
        for address in addresses:
            if not address.rpartition(":")[2].isdigit():
                raise EndpointError(f"Triton endpoint {address!r} has no port")
        return cls(addresses=addresses)

    def resolve(self, resolver: Resolver | None = None) -> list[str]:
        """The replicas' addresses now (a DNS name: every address it resolves to, sorted)."""
        if not self.dns_name:
            return list(self.addresses)
        return (resolver or resolve_name)(self.dns_name, self.port)


def resolve_name(name: str, port: int) -> list[str]:
    """``host:port`` for every address ``name`` resolves to (IPv6 in brackets); blocking."""
    found = set()
    for family, _, _, _, sockaddr in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM):
        host = str(sockaddr[0])
        found.add(f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")
    return sorted(found)


@dataclass
class Replica(Generic[C]):
    """One endpoint and its client; ``up`` is what the last probe or call said."""

    address: str
    client: C
    up: bool = True
    outstanding: int = 0
    since: float = field(default_factory=time.monotonic)


class ReplicaSet(Generic[C]):
    """The replicas of one spec, each with a client made by ``connect(address)``.

    ``on_state(address, up)`` is told every state change (metrics, logs); ``pick`` chooses a replica.
    """

    def __init__(
        self,
        spec: str,
        connect: Callable[[str], C],
        *,
        on_state: Callable[[str, bool], None] | None = None,
        resolver: Resolver | None = None,
        resolve_interval_s: float = RESOLVE_INTERVAL_S,
    ) -> None:
        self.spec = EndpointSpec.parse(spec)
        self.connect = connect
        self.on_state = on_state or (lambda address, up: None)
        self.resolver = resolver
        self.resolve_interval_s = resolve_interval_s
        self.replicas: list[Replica[C]] = []
        self.retired: list[Replica[C]] = []
        """Replicas a new resolution dropped: their clients are closed by the owner (``take_retired``)."""
        self._turn = 0
        self._resolved_at = -float("inf")
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Resolve a DNS spec again if its interval has passed; True when the replica list changed.
        A failed resolution keeps the replicas known so far (a DNS hiccup is not an outage)."""
        now = time.monotonic()
        if not force and (not self.spec.dns_name or now - self._resolved_at < self.resolve_interval_s):
            return False
        self._resolved_at = now
        try:
            addresses = self.spec.resolve(self.resolver)
        except OSError as exc:
            log.warning("triton name unresolved", extra={"dns_name": self.spec.dns_name, "error": str(exc)})
            return False
        known = {r.address: r for r in self.replicas}
        if not addresses or set(addresses) == set(known):
            return False
        self.retired.extend(r for a, r in known.items() if a not in addresses)
        self.replicas = [known.get(a) or Replica(a, self.connect(a)) for a in addresses]
        log.warning("triton replicas", extra={"replicas": addresses})
        for replica in self.replicas:
            self.on_state(replica.address, replica.up)
        return True

    def take_retired(self) -> list[Replica[C]]:
        retired, self.retired = self.retired, []
        return retired

    def set_up(self, replica: Replica[C], up: bool) -> None:
        if replica.up == up:
            return
        replica.up, replica.since = up, time.monotonic()
        log.warning("triton replica " + ("up" if up else "down"), extra={"replica": replica.address})
        self.on_state(replica.address, up)

    def pick(self, exclude: Replica[C] | None = None) -> Replica[C] | None:
        """The healthy replica with the fewest calls outstanding (ties in turn); when none is healthy,
        the next one in turn. ``None`` only when nothing but ``exclude`` exists."""
        replicas = self.replicas
        n = len(replicas)
        if n == 1:  # the common case costs one comparison
            only = replicas[0]
            return None if only is exclude else only
        self._turn = (self._turn + 1) % max(n, 1)
        best: Replica[C] | None = None
        fallback: Replica[C] | None = None
        for i in range(n):
            replica = replicas[(self._turn + i) % n]
            if replica is exclude:
                continue
            if fallback is None:
                fallback = replica
            if replica.up and (best is None or replica.outstanding < best.outstanding):
                best = replica
        return best or fallback

    @contextmanager
    def using(self, replica: Replica[C]) -> Iterator[Replica[C]]:
        replica.outstanding += 1
        try:
            yield replica
        finally:
            replica.outstanding -= 1

    @property
    def addresses(self) -> Sequence[str]:
        return [r.address for r in self.replicas]
