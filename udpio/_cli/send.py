"""``udpio send``: send datagrams from the arguments or from standard input (one per line)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .._addr import format_address
from .._awaitable import open_endpoint
from . import add_endpoint_arguments, err
from .listen import render


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "send", help="send datagrams",
        description="Send each MESSAGE (or each line of stdin when none is given) as one datagram.",
    )
    add_endpoint_arguments(parser, default_port=None)
    parser.add_argument("message", nargs="*", help="payloads (UTF-8); read lines from stdin when absent")
    parser.add_argument("--hex", action="store_true", help="payloads are hex strings")
    parser.add_argument(
        "--reply", type=float, default=None, metavar="SECONDS",
        help="wait up to SECONDS for a reply to each datagram and print it",
    )
    parser.set_defaults(func=run)


def _payloads(args: argparse.Namespace) -> list[bytes]:
    texts = args.message if args.message else [line.rstrip("\n") for line in sys.stdin]
    if args.hex:
        try:
            return [bytes.fromhex(t) for t in texts]
        except ValueError as exc:
            raise SystemExit(f"udpio send: error: --hex payload is not hex: {exc}") from None
    return [t.encode() for t in texts]


async def run(args: argparse.Namespace) -> int:
    payloads = _payloads(args)
    sent = replies = 0
    async with await open_endpoint(remote=(args.host, args.port), family=args.family) as ep:
        try:
            for payload in payloads:
                await ep.send(payload)
                sent += 1
                if args.reply is not None:
                    try:
                        data, addr = await asyncio.wait_for(ep.recv(), args.reply)
                    except (TimeoutError, asyncio.TimeoutError):
                        err(f"udpio send: no reply within {args.reply} s")
                        continue
                    except ConnectionRefusedError:
                        err(f"udpio send: {format_address(ep.remote_address)} refused (nobody listening)")
                        continue
                    replies += 1
                    print(f"{format_address(addr)}\t{len(data)}\t{render(data, False)}", flush=True)
        finally:
            summary = f"udpio send: {sent} datagrams sent to {format_address(ep.remote_address)}"
            if args.reply is not None:
                summary += f", {replies} replies"
            err(summary)
    if args.reply is not None and sent and not replies:
        return 1
    return 0
