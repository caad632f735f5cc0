"""``python -m udpio.bench``: parse the command line, run the suite with a progress bar, print the tables.

Exit codes: 0 when every run completed (rows that are not available here, with the reason, included);
1 when a run failed (its cell says why; the other runs still ran); 2 for a usage error or a missing
dependency; 130 when interrupted (the runs done so far are still reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ._harness import BenchError, Run, Settings, Suite
from ._report import machine_info, plot, render, summarise
from ._workloads import (
    BACKEND_NAMES,
    BACKENDS,
    PEER_WINDOW,
    PEERS,
    WORKLOAD_NAMES,
    WORKLOADS,
    backend,
    workload,
)

#: Largest payload a size may ask for (the IPv4 UDP maximum).
MAX_SIZE = 65507
#: The C load generator's limits (``native/loadgen.c`` checks them too): client sockets (file descriptors)
#: and requests in flight per socket.
MAX_PEERS = 4096
MAX_PEER_WINDOW = 1024

#: The three suites. The default one takes about a minute on a 2-core machine; ``--quick`` a few seconds
#: per backend (the tests run it); ``--full`` is what ``benchmarks/RESULTS.md`` records. Options given on
#: the command line override the preset's values.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "duration": 1.0, "warmup": 0.25, "size": (64,), "repeat": 1, "window": 0, "members": 4,
        "peers": PEERS, "peer_window": PEER_WINDOW,
    },
    "quick": {
        "duration": 0.1, "warmup": 0.05, "size": (64,), "repeat": 1, "window": 0, "members": 2,
        "peers": PEERS, "peer_window": PEER_WINDOW,
    },
    "full": {
        "duration": 1.0, "warmup": 0.3, "size": (64, 1200, 8192), "repeat": 3, "window": 0, "members": 4,
        "peers": PEERS, "peer_window": PEER_WINDOW,
    },
}


def _names(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)} (choose from {', '.join(choices)})"
            )
        return names

    return parse


def _number(kind: Callable[[str], float], low: float, what: str, high: float | None = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in {low:g}..{high:g}, got {text!r}")
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low:g}, got {text!r}")
        return value

    return parse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers like 64,1200,8192, got {text!r}") from None
    bad = [s for s in sizes if not 0 <= s <= MAX_SIZE]
    if bad or not sizes:
        raise argparse.ArgumentTypeError(f"payload sizes must be in 0..{MAX_SIZE} bytes, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m udpio.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m udpio.bench",
        description="Side-by-side UDP benchmark: udpio against plain asyncio, uvloop, rloop, Twisted, a blocking "
        "loop and a C reference server, each server in its own process, driven by a load generator in another "
        "(Python with GSO, or C for the many-peer, request/response and flood workloads).",
        epilog="Backends: " + ", ".join(BACKEND_NAMES) + ". Workloads: " + ", ".join(WORKLOAD_NAMES) + ".",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true",
        help="a few seconds per backend, a backend's workloads sharing its server (what the tests run)",
    )
    preset.add_argument("--full", action="store_true", help="sizes 64,1200,8192 and 3 repeats (RESULTS.md)")
    parser.add_argument("--backends", type=_names(BACKEND_NAMES, "backend"), help="comma-separated (default all)")
    parser.add_argument("--workloads", type=_names(WORKLOAD_NAMES, "workload"), help="comma-separated (default all)")
    parser.add_argument("--duration", type=_number(float, 0.01, "--duration"), help="seconds measured per run")
    parser.add_argument("--warmup", type=_number(float, 0.0, "--warmup"), help="seconds of load before measuring")
    parser.add_argument("--size", type=_sizes, help="payload bytes, comma-separated (default 64)")
    parser.add_argument(
        "--window", type=_number(int, 1, "--window"),
        help="echo throughput: datagrams in flight (default: up to 128 and 64 KiB of payload)",
    )
    parser.add_argument("--repeat", type=_number(int, 1, "--repeat"), help="runs per cell: median and spread")
    parser.add_argument("--members", type=_number(int, 1, "--members"), help="multicast: member sockets")
    parser.add_argument(
        "--peers", type=_number(int, 1, "--peers", MAX_PEERS), help=f"many-peer: client sockets (default {PEERS})"
    )
    parser.add_argument(
        "--peer-window", type=_number(int, 1, "--peer-window", MAX_PEER_WINDOW),
        help=f"many-peer: requests in flight per client socket (default {PEER_WINDOW})",
    )
    parser.add_argument("--json", metavar="PATH", help="write every raw figure and the machine description")
    parser.add_argument("--plot", metavar="PATH.png", help="bar chart per workload (needs matplotlib)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator to cores")
    parser.add_argument("--list", action="store_true", help="describe the backends and workloads, then exit")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    return Settings(
        backends=tuple(backend(n) for n in (args.backends or BACKEND_NAMES)),
        workloads=tuple(workload(n) for n in (args.workloads or WORKLOAD_NAMES)),
        sizes=tuple(pick("size")),
        duration=float(pick("duration")),
        warmup=float(pick("warmup")),
        window=int(pick("window")),
        repeat=int(pick("repeat")),
        members=int(pick("members")),
        pin=not args.no_pin,
        peers=int(pick("peers")),
        peer_window=int(pick("peer_window")),
        reuse_servers=bool(args.quick),
    )


def _describe() -> str:
    lines = ["Backends:"]
    lines += [f"  {b.name:<22} {b.description}" for b in BACKENDS]
    lines.append("Workloads:")
    lines += [f"  {w.name:<22} {w.description}" for w in WORKLOADS]
    return "\n".join(lines)


def _missing_dependencies(want_plot: bool) -> str | None:
    missing = [m for m in ("tqdm", "psutil") if importlib.util.find_spec(m) is None]
    if missing:
        return f"udpio.bench needs {' and '.join(missing)}: pip install 'udpio[bench]'"
    if want_plot and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'udpio[plot]' (or run without --plot)"
    return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        print(_describe())
        return 0
    problem = _missing_dependencies(bool(args.plot))
    if problem is not None:
        print(f"udpio.bench: error: {problem}", file=sys.stderr)
        return 2
    # Optional extra, checked just above; tqdm ships no type information.
    from tqdm import tqdm  # type: ignore[import-untyped]  # noqa: PLC0415

    settings = _settings(args)
    machine = machine_info()
    runs: list[Run] = []
    pinning: dict[str, Any] = {"note": "not started"}
    interrupted = False
    # SIGTERM unwinds like Ctrl-C, through every cleanup path.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with Suite(settings) as suite:
            pinning = suite.pinning.as_dict()
            plan = suite.plan()
            with tqdm(
                total=len(plan), file=sys.stderr, unit="run", leave=False, dynamic_ncols=True, disable=None
            ) as bar:
                for run in suite.run_all(progress=bar.set_description_str):
                    runs.append(run)
                    bar.update()
    except KeyboardInterrupt:
        interrupted = True
        print("udpio.bench: interrupted; reporting the runs completed so far", file=sys.stderr)
    except BenchError as exc:
        print(f"udpio.bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())  # how busy the shared machine was, start and end
    cells = summarise(runs)
    settings_dict = {
        "backends": [b.name for b in settings.backends],
        "workloads": [w.name for w in settings.workloads],
        "sizes": list(settings.sizes),
        "duration": settings.duration,
        "warmup": settings.warmup,
        "window": settings.window,
        "repeat": settings.repeat,
        "members": settings.members,
        "reuse_servers": settings.reuse_servers,
        "peers": settings.peers,
        "peer_window": settings.peer_window,
    }
    print(render(cells, machine, settings_dict, pinning), end="")
    command = "python -m udpio.bench" + "".join(" " + shlex.quote(a) for a in argv)
    if args.json:
        document = {
            "format": "udpio.bench/1",
            "command": command,
            "interrupted": interrupted,
            "machine": machine,
            "settings": settings_dict,
            "pinning": pinning,
            "summary": [c.as_dict() for c in cells],
            "runs": [dataclasses.asdict(r) for r in runs],
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
            out.write("\n")
    if args.plot:
        plot(cells, args.plot, f"{command}\n{machine['cpu_model']}, {machine['kernel']}")
    if interrupted:
        return 130
    return 1 if any(c.status == "failed" for c in cells) else 0
