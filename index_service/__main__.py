"""``python -m index_service``: serve until SIGTERM/SIGINT, then drain in-flight calls and stop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from index_service.config import ENV_PREFIX, IndexServiceConfig
from index_service.server import create_server
from vitrine import config as vconfig
from vitrine import logs


async def serve(config: IndexServiceConfig) -> None:
    server, port = await create_server(config)
    print(f"index service listening on {config.host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(config.grace_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m index_service", description=__doc__)
    vconfig.add_arguments(parser, IndexServiceConfig, ENV_PREFIX)
    config = vconfig.from_namespace(IndexServiceConfig, parser.parse_args(argv))
    logs.setup(config.log_level)
    asyncio.run(serve(config))
    sys.exit(0)


if __name__ == "__main__":
    main()
