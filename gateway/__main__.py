"""``python -m gateway``: serve the public API until SIGINT/SIGTERM, then drain and stop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gateway.config import ENV_PREFIX, GatewayConfig
from gateway.server import create_server
from vitrine import config as vconfig
from vitrine import logs


async def serve(config: GatewayConfig) -> None:
    gateway, port = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"gateway listening on {config.host}:{port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    vconfig.add_arguments(parser, GatewayConfig, ENV_PREFIX)
    config = vconfig.from_namespace(GatewayConfig, parser.parse_args(argv))
    logs.setup(config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
