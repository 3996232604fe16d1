"""The HTTP/JSON server: uvicorn on the gateway's own event loop, beside gRPC.

FastAPI on uvicorn, run as a task on the gateway's loop (``uvicorn.Server.serve``): the call layer's
gRPC and Triton channels belong to that loop, so a second loop or thread would need a second set of
clients; FastAPI derives the OpenAPI document and request validation from the same pydantic models, so
the schema cannot drift from the code. uvicorn's signal capture is switched off: the process's signals
belong to ``gateway.__main__``, which stops both servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gateway.auth import ApiKeys
from gateway.calls import Calls
from gateway.config import GatewayConfig
from gateway.http.app import create_app


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so port 0 resolves before the server starts."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _InLoopServer:
    """uvicorn's server minus its signal handlers (the gateway's process owns SIGINT/SIGTERM)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


class HttpServer:
    """The HTTP/JSON API and page on ``config.http_port`` (0 = a free one), HTTPS with the gRPC
    server's certificate and key when those are configured."""

    def __init__(
        self, config: GatewayConfig, calls: Calls, keys: ApiKeys, health: Callable[[], Mapping[str, bool]]
    ) -> None:
        self.config = config
        self.app = create_app(calls, config.default_timeout_s, keys, health)
        self.port: int | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ready_timeout_s: float = 30.0) -> int:
        import uvicorn

        cfg = self.config
        tls = bool(cfg.tls_cert and cfg.tls_key)
        sock = _bind(cfg.host, cfg.http_port)
        self.port = int(sock.getsockname()[1])
        server_config = uvicorn.Config(
            self.app,
            host=cfg.host,
            port=self.port,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(max(1, cfg.grace_s)),
            ssl_certfile=cfg.tls_cert if tls else None,
            ssl_keyfile=cfg.tls_key if tls else None,
        )
        self._server = _InLoopServer(server_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout_s
        # uvicorn exposes readiness only as a flag; wait on it, bounded, and fail with the server's error.
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()
                raise RuntimeError("HTTP server stopped while starting")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"HTTP server not listening after {ready_timeout_s} s")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in progress finish (up to ``grace``), then close; safe twice."""
        if self._task is None:
            return
        self._server.should_exit = True
        wait = (self.config.grace_s if grace is None else grace) + 2.0
        try:
            await asyncio.wait_for(asyncio.shield(self._task), wait)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._task = None
