"""``udpio compare``: the Twisted tutorial's scenarios on every stack, traces side by side.

Needs the Twisted extra: ``udpio.compat`` is imported only when this command runs (``import udpio`` never
imports Twisted), and its absence is a usage error (exit 2) that names the extra to install.
Exit codes: 0 when every difference is on the documented list, 1 otherwise (or a stack failed).
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from . import err, positive, seconds

# The names are repeated here (not imported from udpio.compat) so that --help works without Twisted.
_STACKS = (
    "udpio-asyncio",
    "udpio-uvloop",
    "twisted-epoll",
    "twisted-asyncio",
    "twisted-asyncio-uvloop",
    "udpio-reactor",
    "udpio-twisted-api",
)
_SCENARIOS = ("echo", "adopt", "connected", "multicast")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help="run the same handlers on udpio and Twisted and compare what they see",
        description=(
            "Run the Twisted tutorial's four UDP scenarios (echo, adopt, connected, multicast) once per stack, "
            "each stack in its own process, and print every role's callbacks side by side. Exits 1 on a "
            "difference that is not on the documented list (docs/twisted.md, 'Side by side')."
        ),
    )
    parser.add_argument(
        "--stack", action="append", choices=_STACKS, help="a stack to run (repeatable; default: all)"
    )
    parser.add_argument(
        "--scenario", action="append", choices=_SCENARIOS, help="a scenario to run (repeatable; default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print the traces and findings as JSON")
    parser.add_argument(
        "--timeout", type=seconds(zero=False), default=90.0, help="seconds allowed per stack (default 90)"
    )
    parser.add_argument("--jobs", type=positive, default=2, help="stacks run at the same time (default 2)")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: udpio.compat imports Twisted (ImportError naming the extra without it).
    compare = importlib.import_module("udpio.compat._compare")
    stacks = tuple(dict.fromkeys(args.stack or _STACKS))
    scenarios = tuple(dict.fromkeys(args.scenario or _SCENARIOS))
    err(f"udpio compare: {len(scenarios)} scenario(s) on {len(stacks)} stack(s), one process per stack ...")
    results = await compare.collect(stacks, scenarios, timeout=args.timeout, jobs=args.jobs)
    comparison = compare.compare(results, scenarios)
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print(compare.format_table(comparison))
        print(compare.format_findings(comparison))
    return 0 if comparison.ok else 1
