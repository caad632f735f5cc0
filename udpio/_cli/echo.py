"""``udpio echo``: run the echo server (safe by default) until Ctrl-C / SIGTERM, then print its counters.

``--workers N`` runs N processes sharing the port (SO_REUSEPORT); ``--stats-interval`` prints the counters
periodically. SIGINT/SIGTERM cancel the command (see ``udpio._cli``): the server stops receiving, sends what
it has buffered (or drops and counts it after a short timeout), closes its sockets, prints a summary; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .._addr import check_port, format_address
from .._counters import Counters
from .._echo import DEFAULT_ECHO_PORT, EchoServer, start_echo
from .._policy import (
    DEFAULT_BLOCKED_PORTS,
    DEFAULT_GLOBAL_RATE,
    DEFAULT_SOURCE_RATE,
    LOOPBACK_NETWORKS,
    MAX_TRACKED_SOURCES,
    SafetyPolicy,
    parse_network,
)
from .._workers import EchoWorkers, start_echo_workers
from . import add_endpoint_arguments, err, seconds


def _port(text: str) -> int:
    try:
        return check_port(int(text), "blocked port")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _network(text: str) -> str:
    try:
        return str(parse_network(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "echo",
        help="run an echo server",
        description=(
            "Echo every datagram back to its sender. Safe by default: no replies to source port 0, to "
            "well-known UDP service ports or to the server's own port, none to a reply of this server that keeps "
            "coming back (a loop with another server, on any port), none to multicast, broadcast or forged "
            "IPv4-mapped sources; per-source and global rate limits (loopback exempt). Counters are printed "
            "on exit."
        ),
    )
    add_endpoint_arguments(parser, default_port=DEFAULT_ECHO_PORT)
    parser.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT (share the port)")
    parser.add_argument("--max-size", type=int, default=None, help="drop datagrams larger than this")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="serve from N processes sharing the port through SO_REUSEPORT (crashed ones are restarted)",
    )
    parser.add_argument(
        "--stats-interval", type=seconds(zero=False), default=None, metavar="SECONDS",
        help="print the counters this often",
    )
    policy = parser.add_argument_group("safety policy")
    policy.add_argument("--no-policy", action="store_true", help="answer every datagram (no guard, no limits)")
    policy.add_argument(
        "--no-reflection-guard", action="store_true",
        help="also answer source port 0, service ports and the server's own port, and replies that come back "
        "(the loop guard)",
    )
    policy.add_argument(
        "--block-port", type=_port, action="append", default=[], metavar="PORT",
        help=f"never answer this source port (repeatable; added to {len(DEFAULT_BLOCKED_PORTS)} service ports: "
        + ",".join(map(str, sorted(DEFAULT_BLOCKED_PORTS))) + ")",
    )
    policy.add_argument(
        "--rate", type=float, default=DEFAULT_SOURCE_RATE, metavar="N",
        help=f"datagrams/s answered per source (default {DEFAULT_SOURCE_RATE:g}; 0: no per-source limit)",
    )
    policy.add_argument("--burst", type=float, default=None, metavar="N", help="per-source burst (default: rate)")
    policy.add_argument(
        "--global-rate", type=float, default=DEFAULT_GLOBAL_RATE, metavar="N",
        help=f"datagrams/s answered in total (default {DEFAULT_GLOBAL_RATE:g}; 0: no global limit)",
    )
    policy.add_argument("--global-burst", type=float, default=None, metavar="N", help="global burst (default: rate)")
    policy.add_argument(
        "--max-sources", type=int, default=MAX_TRACKED_SOURCES, metavar="N",
        help=f"per-source states kept, least recent forgotten first (default {MAX_TRACKED_SOURCES})",
    )
    policy.add_argument("--allow", type=_network, action="append", default=[], metavar="CIDR",
                        help="answer only these networks (repeatable)")
    policy.add_argument("--deny", type=_network, action="append", default=[], metavar="CIDR",
                        help="never answer these networks (repeatable)")
    policy.add_argument(
        "--exempt", type=_network, action="append", default=None, metavar="CIDR",
        help="networks exempt from rate limits (repeatable; default " + ", ".join(LOOPBACK_NETWORKS) + ")",
    )
    policy.add_argument("--no-exempt", action="store_true", help="rate-limit every source, loopback too")
    parser.set_defaults(func=run)


def build_policy(args: argparse.Namespace) -> SafetyPolicy | None:
    """The :class:`SafetyPolicy` the options describe (``None`` with ``--no-policy``)."""
    if args.no_policy:
        return None
    exempt: list[str] | tuple[str, ...] = (
        [] if args.no_exempt else args.exempt if args.exempt is not None else LOOPBACK_NETWORKS
    )
    return SafetyPolicy(
        reflection_guard=not args.no_reflection_guard,
        blocked_ports=DEFAULT_BLOCKED_PORTS | set(args.block_port),
        rate=args.rate or None,
        burst=args.burst,
        global_rate=args.global_rate or None,
        global_burst=args.global_burst,
        allow=args.allow,
        deny=args.deny,
        exempt=exempt,
        max_sources=args.max_sources,
    )


def format_counters(c: Counters, evictions: int = 0) -> str:
    """One line: what came in, what went out, every drop by reason, errors."""
    line = (
        f"received {c.datagrams_in} datagrams ({c.bytes_in} bytes), sent {c.datagrams_out} ({c.bytes_out} bytes), "
        f"dropped {c.dropped}"
    )
    parts = [f"{reason} {n}" for reason, n in sorted(c.policy_drops.items())]
    for name, n in (
        ("send buffer", c.dropped_send_buffer),
        ("oversize", c.dropped_oversize),
        ("on close", c.dropped_on_close),
        ("kernel", c.kernel_drops),
    ):
        if n:
            parts.append(f"{name} {n}")
    if parts:
        line += " (" + ", ".join(parts) + ")"
    line += f", errors {c.errors_received + c.send_errors}, handler errors {c.handler_errors}"
    if evictions:
        line += f", sources forgotten {evictions}"
    return line


async def _print_periodically(interval: float, describe: Callable[[], str]) -> None:
    while True:
        # Pacing on purpose: this is the periodic report.
        await asyncio.sleep(interval)
        err(f"udpio echo: stats: {describe()}")


async def run(args: argparse.Namespace) -> int:
    policy = build_policy(args)
    target: EchoServer | EchoWorkers
    if args.workers is None:
        server = await start_echo(
            args.host, args.port, family=args.family, reuse_port=args.reuse_port, max_size=args.max_size,
            policy=policy,
        )
        target = server
        err(f"udpio echo: listening on {format_address(server.address)}")

        def describe() -> str:
            return format_counters(server.counters, policy.evictions if policy is not None else 0)
    else:
        pool = await start_echo_workers(
            args.workers, args.host, args.port, family=args.family, max_size=args.max_size, policy=policy
        )
        target = pool
        err(f"udpio echo: {pool.workers} workers listening on {format_address(pool.address)}")

        def describe() -> str:
            return format_counters(pool.counters, pool.evictions) + f", workers restarted {pool.restarts}"

    err(f"udpio echo: policy: {policy.describe() if policy is not None else 'none (every datagram answered)'}")
    stats = (
        asyncio.create_task(_print_periodically(args.stats_interval, describe))
        if args.stats_interval is not None
        else None
    )
    try:
        async with target:
            await target.serve_forever()
    finally:
        if stats is not None:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats
        err(f"udpio echo: {describe()}")
    return 0
