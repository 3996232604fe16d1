"""Free loopback ports for servers that cannot bind port 0 themselves."""

from __future__ import annotations

import socket

from vitrine.net import free_ports


def test_ports_chosen_together_are_distinct_and_bindable() -> None:
    for _ in range(20):  # chosen one after another, a just-released port could come back twice
        ports = free_ports(8)
        assert len(set(ports)) == 8
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[0]))
