"""The ``udpio`` command line: ``udpio echo|send|listen|ping ...`` (also ``python -m udpio``).

Exit codes: 0 ok (Ctrl-C and SIGTERM included: they stop cleanly with a summary), 2 usage error or bad
argument, 1 runtime error (OS failure, no reply).

Arguments are text as the OS gave it: bytes that are not UTF-8 arrive as lone surrogates (PEP 383) and are
turned back into the same bytes where a payload is meant (:func:`payload_of`), or refused as a bad argument
where a name is. Numbers of seconds are finite (:func:`seconds`): ``nan`` would make every comparison false.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
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
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # A Ctrl-C outside the loop's own handler: while the parser is built (it imports the subcommands),
        # before run() has installed it, or after it was removed. Nothing ran yet, or it has stopped: exit as
        # a Ctrl-C during the command does, quietly. (Before main() runs, Python itself is importing udpio;
        # a Ctrl-C there is Python's to report.)
        return 0


def _main(argv: Sequence[str] | None) -> int:
    _escape_unencodable_output()
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
    except BrokenPipeError:
        # Whoever read stdout has gone (`udpio listen ... | head -1`): the pipeline is done with us, nothing
        # failed. Stop quietly, and point stdout at /dev/null so the interpreter's last flush cannot fail again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0
    except (OSError, EndpointClosedError, EndpointBrokenError) as exc:
        print(f"udpio {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _escape_unencodable_output() -> None:
    """Peer bytes are printed as text (``listen``, ``multicast``); a character the terminal's encoding cannot
    show (a CJK payload on a Latin-1 terminal) must come out escaped, not end the command with a traceback.
    Backslashes in payloads are escaped themselves (:func:`udpio._cli.listen.render`), so this stays
    unambiguous."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


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


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, >= 0 if ``zero`` else > 0. ``nan`` (every comparison
    with it is false, so a timeout of nan never fires and a loop on it never ends), ``inf`` and negatives are
    usage errors (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            expected = "a finite number of seconds " + (">= 0" if zero else "> 0")
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = "seconds"  # argparse names the type in some messages
    return parse


def count(text: str) -> int:
    """An argparse type: an int >= 0 (a count, 0 meaning no limit where the option says so)."""
    return _int_at_least(text, 0)


def positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
    return value


def payload_of(text: str) -> bytes:
    """The bytes of a payload argument as the user typed them: UTF-8 text, or the original bytes where the
    argument was not UTF-8 (``os.fsencode`` undoes the surrogateescape decoding of ``sys.argv``)."""
    return os.fsencode(text)
