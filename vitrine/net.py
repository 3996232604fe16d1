"""Loopback helpers shared by launchers and tests."""

from __future__ import annotations

import contextlib
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; for servers that cannot bind port 0 themselves (tritonserver)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago. They are held open together while chosen: one
    after another, the system may hand the same just-released port out twice (seen: a Triton refusing to
    start with its gRPC and metrics endpoints on one port)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
