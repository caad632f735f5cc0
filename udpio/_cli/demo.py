"""``udpio demo``: start an echo server on a free loopback port, talk to it, print what happened."""

from __future__ import annotations

import argparse
from typing import Any

from .._addr import format_address
from .._awaitable import open_endpoint
from .._echo import start_echo
from .._io_core import IO_CORE
from .._loop import loop_kind, wait_within
from . import count, err


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="start an echo server and talk to it",
        description="Start an echo server on 127.0.0.1 (free port), send a few datagrams, print the replies.",
    )
    parser.add_argument("-n", "--count", type=count, default=3, help="datagrams to send (default 3)")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    async with await start_echo(port=0) as server:
        print(f"echo server on {format_address(server.address)} ({loop_kind()} loop, {IO_CORE} I/O core)")
        async with await open_endpoint(remote=server.address) as ep:
            for i in range(args.count):
                message = f"hello #{i} from udpio".encode()
                await ep.send(message)
                data, addr = await wait_within(ep.recv(), 5)
                print(f"sent {message!r}, got {data!r} back from {format_address(addr)}")
        counters = server.counters
        print(f"server counters: {counters.datagrams_in} in, {counters.datagrams_out} out, {counters.dropped} dropped")
    err("udpio demo: done")
    return 0
