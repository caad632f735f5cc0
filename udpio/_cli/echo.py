"""``udpio echo``: run the echo server until Ctrl-C / SIGTERM, then print its counters."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .._addr import format_address
from .._echo import DEFAULT_ECHO_PORT, start_echo
from . import add_endpoint_arguments, err


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "echo", help="run an echo server", description="Echo every datagram back to its sender."
    )
    add_endpoint_arguments(parser, default_port=DEFAULT_ECHO_PORT)
    parser.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT (share the port)")
    parser.add_argument("--max-size", type=int, default=None, help="drop datagrams larger than this")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    server = await start_echo(
        args.host, args.port, family=args.family, reuse_port=args.reuse_port, max_size=args.max_size
    )
    err(f"udpio echo: listening on {format_address(server.address)}")
    try:
        async with server:
            await server.serve_forever()
    except asyncio.CancelledError:
        raise
    finally:
        c = server.counters
        err(
            f"udpio echo: received {c.datagrams_in} datagrams ({c.bytes_in} bytes), "
            f"sent {c.datagrams_out}, dropped {c.dropped}, errors {c.errors_received + c.send_errors}"
        )
    return 0
