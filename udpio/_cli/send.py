"""``udpio send``: send datagrams from the arguments or from standard input (one per line, as lines arrive)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from .._addr import format_address
from .._awaitable import open_endpoint
from .._errors import InvalidArgumentError
from .._limits import MAX_PAYLOAD_IPV6
from .._loop import wait_within
from . import add_endpoint_arguments, err, payload_of, seconds
from .listen import render

#: Longest line read from standard input: the largest datagram (65527 bytes) written as spaced hex (three
#: characters a byte) fits. A longer line could never be sent; it is refused once this much of it is held,
#: so a stream without newlines (``cat /dev/zero | udpio send ...``) cannot grow memory.
MAX_LINE = 3 * MAX_PAYLOAD_IPV6
#: Bytes read from standard input per read, and reads held (read, not yet sent) at most: the reader waits
#: beyond that, so a fast producer (``yes | udpio send ...``) costs at most a few hundred KiB.
STDIN_CHUNK = 64 * 1024
STDIN_CHUNKS_HELD = 4


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "send", help="send datagrams",
        description="Send each MESSAGE (or each line of stdin when none is given, as lines arrive) as one "
        "datagram. Payloads are the bytes given (any encoding); a line longer than the largest datagram "
        "is an error.",
    )
    add_endpoint_arguments(parser, default_port=None)
    parser.add_argument("message", nargs="*", help="payloads; read lines from stdin when absent")
    parser.add_argument("--hex", action="store_true", help="payloads are hex strings")
    parser.add_argument(
        "--reply", type=seconds(zero=False), default=None, metavar="SECONDS",
        help="wait up to SECONDS for a reply to each datagram and print it",
    )
    parser.set_defaults(func=run)


class LineTooLongError(InvalidArgumentError):
    """A line of standard input longer than any datagram could be (a usage error: exit 2)."""

    def __init__(self, number: int) -> None:
        super().__init__(f"stdin line {number}", f"at most {MAX_LINE} bytes", f"more than {MAX_LINE} bytes")
        self.args = (f"stdin line {number} is longer than {MAX_LINE} bytes: no datagram can hold it",)


async def stdin_lines(fd: int = 0) -> AsyncGenerator[bytes, None]:
    """Lines of ``fd`` (without their ``\\n``; a last line without one too) as they arrive, with bounded memory.

    A daemon thread reads: a blocking ``os.read`` works on every kind of stdin (pipe, terminal, regular
    file, socket), where the loop's readers refuse regular files and would leave a shared terminal in
    non-blocking mode. ``os.read`` rather than ``sys.stdin.buffer``: a daemon thread still inside the
    buffered reader's lock at exit makes the interpreter abort ("could not acquire lock"). The thread reads
    at most :data:`STDIN_CHUNKS_HELD` chunks ahead of the sender; if the command stops first, it is left
    blocked in ``read`` and ends with the process.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | OSError] = asyncio.Queue()
    room = threading.Semaphore(STDIN_CHUNKS_HELD)

    def pump() -> None:
        while True:
            room.acquire()
            try:
                data: bytes | OSError = os.read(fd, STDIN_CHUNK)
            except OSError as exc:
                data = exc
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not isinstance(data, bytes) or not data:
                return

    threading.Thread(target=pump, name="udpio-send-stdin", daemon=True).start()
    pending = bytearray()
    number = 0
    while True:
        data = await chunks.get()
        room.release()
        if isinstance(data, OSError):
            raise data
        if not data:
            break
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            number += 1
            if end - start > MAX_LINE:
                raise LineTooLongError(number)
            yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_LINE:
            raise LineTooLongError(number + 1)
        # A yield point per chunk: when the reader is ahead, get() returns without suspending, and the
        # loop must still run its signal handlers (Ctrl-C) and the reader's callbacks.
        await asyncio.sleep(0)
    if pending:
        yield bytes(pending)


async def _from_args(messages: Iterable[str]) -> AsyncGenerator[bytes, None]:
    for message in messages:
        yield payload_of(message)


def _decode_hex(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except ValueError:  # UnicodeDecodeError is a ValueError; a usage error (exit 2), like any bad argument
        raise InvalidArgumentError("--hex payload", "hex digits (spaces allowed)", render(text[:60], False)) from None


async def run(args: argparse.Namespace) -> int:
    lines = _from_args(args.message) if args.message else stdin_lines()
    sent = replies = 0
    async with await open_endpoint(remote=(args.host, args.port), family=args.family) as ep:
        try:
            async for line in lines:
                payload = _decode_hex(line) if args.hex else line
                await ep.send(payload)
                sent += 1
                if args.reply is not None:
                    try:
                        data, addr = await wait_within(ep.recv(), args.reply)
                    except (TimeoutError, asyncio.TimeoutError):
                        err(f"udpio send: no reply within {args.reply} s")
                        continue
                    except ConnectionRefusedError:
                        err(f"udpio send: {format_address(ep.remote_address)} refused (nobody listening)")
                        continue
                    replies += 1
                    print(f"{format_address(addr)}\t{len(data)}\t{render(data, False)}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                await lines.aclose()
            summary = f"udpio send: {sent} datagrams sent to {format_address(ep.remote_address)}"
            if args.reply is not None:
                summary += f", {replies} replies"
            err(summary)
    sys.stdout.flush()
    if args.reply is not None and sent and not replies:
        return 1
    return 0
