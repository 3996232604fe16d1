"""``python -m gateway``: serve the public API until SIGINT/SIGTERM, then drain and stop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway.config import ENV_PREFIX, GatewayConfig
from gateway.server import create_server
from vitrine import config as vconfig
from vitrine import logs


async def serve(config: GatewayConfig, ready_file: str = "") -> None:
    gateway, port = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"gateway listening on {config.host}:{port}", file=sys.stderr, flush=True)
    if ready_file:
        Path(ready_file).write_text(str(port), encoding="utf-8")  # noqa: ASYNC240
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    vconfig.add_arguments(parser, GatewayConfig, ENV_PREFIX)
    parser.add_argument("--ready-file", default="", help="write the bound port here once serving")
    args = parser.parse_args(argv)
    config = vconfig.from_namespace(GatewayConfig, args)
    logs.setup(config.log_level)
    asyncio.run(serve(config, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
