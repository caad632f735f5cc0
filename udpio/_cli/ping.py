"""``udpio ping``: round trips against an echo server, with min/p50/p99/max RTT and loss."""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from typing import Any

from .._addr import format_address
from .._awaitable import open_endpoint
from .._echo import DEFAULT_ECHO_PORT
from .._errors import InvalidArgumentError
from .._loop import wait_within
from . import add_endpoint_arguments, err, seconds

_HEADER = struct.Struct("!4sQ")
_MAGIC = b"udpP"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "ping", help="measure round trips to an echo server",
        description="Send numbered probes to an echo server and report RTT and loss.",
    )
    add_endpoint_arguments(parser, default_port=DEFAULT_ECHO_PORT)
    parser.add_argument("-c", "--count", type=int, default=10, help="probes to send (default 10)")
    parser.add_argument("-i", "--interval", type=seconds(zero=True), default=0.2, help="seconds between probes")
    parser.add_argument(
        "-W", "--timeout", type=seconds(zero=False), default=1.0, help="seconds to wait for each reply"
    )
    parser.add_argument("-s", "--size", type=int, default=64, help="probe size in bytes (>= 12)")
    parser.set_defaults(func=run)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summarise(rtts: list[float], sent: int) -> str:
    """``sent/received/loss`` and ``min/p50/p99/max`` in milliseconds."""
    lost = sent - len(rtts)
    line = f"{sent} sent, {len(rtts)} received, {100.0 * lost / sent if sent else 0.0:.1f}% loss"
    if rtts:
        ordered = sorted(rtts)
        stats = [ordered[0], percentile(ordered, 50), percentile(ordered, 99), ordered[-1]]
        line += "; rtt min/p50/p99/max = " + "/".join(f"{v * 1000:.3f}" for v in stats) + " ms"
    return line


async def run(args: argparse.Namespace) -> int:
    # Bad values are usage errors (exit 2, through main()), like every other argument.
    if args.size < _HEADER.size:
        raise InvalidArgumentError("--size", f"an int >= {_HEADER.size}", args.size)
    if args.count < 1:
        raise InvalidArgumentError("--count", "an int >= 1", args.count)
    rtts: list[float] = []
    sent = 0
    padding = b"\0" * (args.size - _HEADER.size)
    async with await open_endpoint(remote=(args.host, args.port), family=args.family) as ep:
        peer = format_address(ep.remote_address)
        err(f"udpio ping: {peer}, {args.size} bytes")
        try:
            for seq in range(args.count):
                if seq:
                    await asyncio.sleep(args.interval)  # pacing between probes, by design
                start = time.perf_counter()
                await ep.send(_HEADER.pack(_MAGIC, seq) + padding)
                sent += 1
                deadline = start + args.timeout
                while True:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        print(f"seq={seq} timeout", flush=True)
                        break
                    try:
                        data, _ = await wait_within(ep.recv(), remaining)
                    except (TimeoutError, asyncio.TimeoutError):
                        print(f"seq={seq} timeout", flush=True)
                        break
                    except ConnectionRefusedError:
                        print(f"seq={seq} refused", flush=True)
                        break
                    if len(data) >= _HEADER.size and _HEADER.unpack_from(data) == (_MAGIC, seq):
                        rtt = time.perf_counter() - start
                        rtts.append(rtt)
                        print(f"seq={seq} {len(data)} bytes rtt={rtt * 1000:.3f} ms", flush=True)
                        break
                    # A late reply to an earlier probe: ignore it and keep waiting for this one.
        finally:
            err(f"udpio ping: {peer}: {summarise(rtts, sent)}")
    return 0 if rtts else 1
