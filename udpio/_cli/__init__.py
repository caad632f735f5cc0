"""The ``udpio`` command line: ``udpio echo|send|listen|ping ...`` (also ``python -m udpio``).

Exit codes: 0 ok (Ctrl-C and SIGTERM included: they stop cleanly with a summary), 2 usage error or bad
argument, 1 runtime error (OS failure, no reply).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import EndpointBrokenError, EndpointClosedError, InvalidArgumentError
from .._loop import LOOP_KINDS, run

#: Subcommand modules in this package; each has ``register(subparsers)`` setting ``func`` (async, -> int).
COMMANDS = ("demo", "echo", "send", "listen", "ping", "compare", "multicast")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands registered from their modules)."""
    parser = argparse.ArgumentParser(prog="udpio", description="Fast, safe UDP for asyncio.")
    parser.add_argument(
        "--loop", choices=LOOP_KINDS, default=None,
        help="event loop: auto (uvloop when installed; default, or $UDPIO_LOOP), uvloop, asyncio",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


async def _run_until_signal(args: argparse.Namespace) -> int:
    """Run the subcommand; SIGINT/SIGTERM cancel it, which each command turns into a summary and exit 0."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # we are inside run()
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        task.cancel()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, or not main thread
            pass
    try:
        result: int = await args.func(args)
        return result
    except asyncio.CancelledError:
        if stopped:
            return 0
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        import logging  # noqa: PLC0415  # only when asked

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return run(_run_until_signal(args), loop=args.loop)
    except (InvalidArgumentError, ImportError) as exc:
        print(f"udpio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, EndpointClosedError, EndpointBrokenError) as exc:
        print(f"udpio {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C that arrived before the loop's handler was installed
        return 0


def console_main() -> None:
    """Entry point of the ``udpio`` console script."""
    sys.exit(main())


def add_endpoint_arguments(parser: argparse.ArgumentParser, *, default_port: int | None) -> None:
    """The host/port/family arguments shared by subcommands."""
    parser.add_argument("host", nargs="?", default="127.0.0.1", help="IP address or name (default 127.0.0.1)")
    if default_port is None:
        parser.add_argument("port", type=int, help="UDP port")
    else:
        parser.add_argument(
            "port", type=int, nargs="?", default=default_port, help=f"UDP port (default {default_port})"
        )
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET, default=0, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6, help="IPv6 only")


def err(*parts: Any) -> None:
    """Print a status line to stderr (stdout is for data)."""
    print(*parts, file=sys.stderr, flush=True)
