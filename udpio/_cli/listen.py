"""``udpio listen``: print every datagram that arrives, as text (undecodable bytes escaped) or hex."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._addr import format_address
from .._awaitable import open_endpoint
from . import add_endpoint_arguments, count, err


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "listen", help="print datagrams as they arrive",
        description="Bind HOST PORT and print each datagram with its sender.",
    )
    add_endpoint_arguments(parser, default_port=None)
    parser.add_argument("--hex", action="store_true", help="print payloads as hex")
    parser.add_argument("-c", "--count", type=count, default=0, help="stop after N datagrams (0: never)")
    parser.set_defaults(func=run)


def render(data: bytes, as_hex: bool) -> str:
    """One printable line for a payload: hex, or UTF-8 with undecodable bytes, controls and backslashes
    escaped, so that every payload has exactly one rendering and back: a backslash the peer sent shows as two,
    a byte that is not UTF-8 as backslash-x and two hex digits, a newline as backslash-n."""
    if as_hex:
        return bytes(data).hex(" ")
    # surrogateescape keeps each undecodable byte as one lone surrogate (U+DC80..U+DCFF), which valid UTF-8
    # never produces; it is shown as \xNN. Printable characters (any script) stay; controls (NUL, newline,
    # escape sequences) are escaped so a peer cannot move the cursor or forge lines in the terminal.
    text = bytes(data).decode("utf-8", errors="surrogateescape")
    return "".join(map(_render_char, text))


def _render_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if "\udc80" <= ch <= "\udcff":
        return f"\\x{ord(ch) - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    return ch.encode("unicode_escape").decode("ascii")


async def run(args: argparse.Namespace) -> int:
    received = 0
    async with await open_endpoint(args.host, args.port, family=args.family) as ep:
        err(f"udpio listen: listening on {format_address(ep.local_address)}")
        try:
            async for data, addr in ep:
                received += 1
                print(f"{format_address(addr)}\t{len(data)}\t{render(data, args.hex)}", flush=True)
                if args.count and received >= args.count:
                    break
        finally:
            err(f"udpio listen: {received} datagrams received, {ep.counters.dropped} dropped")
    sys.stdout.flush()
    return 0
