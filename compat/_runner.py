"""``python -m udpio.compat``: run an existing Twisted program unchanged on the udpio reactor.

    python -m udpio.compat [--loop auto|uvloop|asyncio] SCRIPT.py [ARGS...]
    python -m udpio.compat [--loop ...] -m MODULE [ARGS...]

Installs the reactor first, then runs the script (or module) as ``__main__`` with ``sys.argv`` set to
``[SCRIPT.py, ARGS...]`` and its directory first on ``sys.path``, as ``python SCRIPT.py`` would. The script's
own ``from twisted.internet import reactor`` then gets the udpio reactor. ``-m twisted.trial`` and
``-m twisted`` (twistd) work too, with no plugin needed. The exit status is the program's.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from ._reactor import install


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m udpio.compat",
        usage="%(prog)s [--loop auto|uvloop|asyncio] (SCRIPT.py | -m MODULE) [ARGS...]",
        description="Run a Twisted program unchanged on udpio's drop-in reactor.",
        epilog="Everything after SCRIPT.py (or -m MODULE) is the program's own arguments.",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=None,
        help="the event loop under the reactor (default: uvloop when installed, or $UDPIO_LOOP)",
    )
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as `python -m MODULE` would")
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options, then the program and its arguments: as with ``python``, options end at the script or
    at ``-m MODULE``, so the program's own options (``--reactor``, ``--loop``...) are left to it."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in ("--loop", "-m"):
            end = index + 2
            if token == "-m":
                return argv[:end], argv[end:]
            index = end
        elif token.startswith("--loop=") or token in ("-h", "--help"):
            index += 1
        elif token.startswith("-m") and len(token) > 2:  # -mMODULE, as python accepts it
            return argv[: index + 1], argv[index + 1 :]
        else:
            break
    return argv[:index], argv[index:]


def main(argv: list[str]) -> int:
    """Install the reactor, run the program; its ``SystemExit`` passes through. Returns 0 when it ends."""
    parser = _parser()
    ours, program = _split(argv)
    args = parser.parse_args(ours)
    if args.module is None:
        if not program:
            parser.error("a script to run is required (or -m MODULE)")
        if not os.path.isfile(program[0]):
            parser.error(f"no such script: {program[0]!r}")
    install(loop=args.loop)
    if args.module is not None:
        sys.argv = [args.module, *program]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return 0
    script = os.path.abspath(program[0])
    sys.argv = list(program)
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
    return 0
