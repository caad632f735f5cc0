"""From runs to what a reader sees: medians and spread, ratios against the reference rows, the tables
(GitHub Markdown, readable in a terminal too), the JSON file, the plot, and the machine description."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import socket
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from .. import __version__, _sockopts
from .._io_core import IO_CORE
from ._harness import Run
from ._native import compiler
from ._workloads import (
    CLOSED_LOOP_JOBS,
    PEER_WINDOW,
    PEERS,
    REFERENCES,
    WORKLOADS,
    Workload,
    auto_window,
    workload,
)

#: Figures whose spread across repeats is shown next to the median.
_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class Stat:
    """One figure over the repeats: the median, the range, and the spread (half the range over the median)."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @property
    def spread(self) -> float:
        return (self.high - self.low) / 2 / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median, "min": self.low, "max": self.high, "spread": self.spread,
            "values": list(self.values),
        }


@dataclasses.dataclass
class Cell:
    """One backend under one workload at one size, all repeats together."""

    backend: str
    workload: str
    size: int
    status: str  # ok, failed, unavailable
    reason: str = ""
    stats: dict[str, Stat] = dataclasses.field(default_factory=dict)
    limited_by: str = ""
    generator: str = ""  # which load generator ran it: "C" or "Python"
    runs: int = 0

    def headline(self) -> Stat | None:
        return self.stats.get(workload(self.workload).headline) if self.status == "ok" else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "workload": self.workload, "size": self.size, "status": self.status,
            "reason": self.reason, "runs": self.runs, "limited_by": self.limited_by, "generator": self.generator,
            "figures": {k: v.as_dict() for k, v in self.stats.items()},
        }


def summarise(runs: Iterable[Run]) -> list[Cell]:
    """Group runs by (size, workload, backend), in the order they were planned."""
    groups: dict[tuple[int, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.size, run.workload, run.backend), []).append(run)
    cells = []
    for (size, load, back), group in groups.items():
        failed = [r for r in group if r.status == "failed"]
        unavailable = [r for r in group if r.status == "unavailable"]
        ok = [r for r in group if r.status == "ok"]
        cell = Cell(back, load, size, "ok", runs=len(group))
        if failed:
            cell.status = "failed"
            cell.reason = failed[0].reason + (f" ({len(failed)} of {len(group)} runs failed)" if len(group) > 1 else "")
        elif unavailable:
            cell.status, cell.reason = "unavailable", unavailable[0].reason
        values: dict[str, list[float]] = collections.defaultdict(list)
        bounds: collections.Counter[str] = collections.Counter()
        for r in ok:
            for key, value in r.figures.items():
                if isinstance(value, _NUMBER) and not isinstance(value, bool):
                    values[key].append(float(value))
            if "limited_by" in r.figures:
                bounds[str(r.figures["limited_by"])] += 1
            if "generator" in r.figures:
                cell.generator = str(r.figures["generator"])
        cell.stats = {k: Stat(statistics.median(v), min(v), max(v), tuple(v)) for k, v in values.items()}
        if bounds:
            cell.limited_by = bounds.most_common(1)[0][0]
        cells.append(cell)
    return cells


def ratio(cell: Cell, reference: Cell | None) -> float | None:
    """How many times better ``cell`` is than ``reference`` on the headline (>1: better, latency included)."""
    if reference is None or cell is reference:
        return None
    mine, theirs = cell.headline(), reference.headline()
    if mine is None or theirs is None or not mine.median or not theirs.median:
        return None
    if workload(cell.workload).higher_is_better:
        return mine.median / theirs.median
    return theirs.median / mine.median


# -- formatting ---------------------------------------------------------------------------------------


def rate(value: float) -> str:
    """Datagrams per second, short: 45.2k, 1.23M."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _spread(stat: Stat) -> str:
    return f" ±{stat.spread * 100:.0f}%" if len(stat.values) > 1 else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table with padded columns (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


class _Notes:
    """Footnotes for cells that could not be filled: the same reason gets the same number."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, cell: Cell) -> str:
        text = ("not available: " if cell.status == "unavailable" else "FAILED: ") + cell.reason
        if text not in self.reasons:
            self.reasons.append(text)
        number = self.reasons.index(text) + 1
        return f"n/a [{number}]" if cell.status == "unavailable" else f"FAILED [{number}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {text}" for i, text in enumerate(self.reasons, 1)]


def _headline(cell: Cell | None, notes: _Notes) -> str:
    if cell is None:
        return ""
    if cell.status != "ok":
        return notes.mark(cell)
    stat = cell.headline()
    if stat is None:
        return "?"
    load = workload(cell.workload)
    # "≥": the server had CPU to spare, so the figure is what was offered, not what it can take.
    bound = "≥" if cell.limited_by and cell.limited_by != "server" else ""
    text = f"{stat.median:.1f}" if load.unit == "us" else bound + rate(stat.median)
    return text + _spread(stat)


def _ratios(cell: Cell | None, refs: dict[str, Cell]) -> str:
    if cell is None or cell.status != "ok":
        return ""
    parts = []
    for name in REFERENCES:
        value = ratio(cell, refs.get(name))
        if cell.backend == name:
            parts.append("—")  # the reference itself
        elif value is None:
            parts.append("-" if name not in refs else "n/a")  # reference not run, or it has no figure
        else:
            parts.append(f"{value:.2f}x")
    return " / ".join(parts)


def render(cells: Sequence[Cell], machine: dict[str, Any], settings: dict[str, Any], pinning: dict[str, Any]) -> str:
    """The whole text report: a summary table per payload size, detail tables per workload, notes."""
    notes = _Notes()
    out: list[str] = []
    sizes = list(dict.fromkeys(c.size for c in cells))
    loads = [w for w in WORKLOADS if any(c.workload == w.name for c in cells)]
    backends = list(dict.fromkeys(c.backend for c in cells))
    index = {(c.size, c.workload, c.backend): c for c in cells}
    for size in sizes:
        out.append(f"### {size}-byte datagrams")
        out.append("")
        header = ["backend"]
        for load in loads:
            header += [_column_title(load), " / ".join(f"x {r}" for r in REFERENCES)]
        header.append("server RSS MB idle→peak")
        rows = []
        for back in backends:
            row = [back]
            for load in loads:
                refs = {r: index[(size, load.name, r)] for r in REFERENCES if (size, load.name, r) in index}
                cell = index.get((size, load.name, back))
                row += [_headline(cell, notes), _ratios(cell, refs)]
            row.append(_rss(index, size, back, loads))
            rows.append(row)
        out += _table(header, rows)
        out.append("")
    out.append(
        "Ratios: times better than the plain-asyncio, Twisted-epoll and C reference (c-ref) rows of this run (>1 "
        "is better; for latency, their p50 RTT over this row's; against c-ref, the share of C's figure). ±: half "
        "the range over the repeats. ≥: the server had CPU to spare, so the "
        "figure is a lower bound set by the offered load. \"Per server CPU-s\": the rate divided by the CPU "
        "share the server got; \"server waited\": the share it spent runnable but waiting for a CPU (taken by "
        "other processes on a shared machine)."
    )
    out.append("")
    for size in sizes:
        for load in loads:
            row_cells = [index[(size, load.name, b)] for b in backends if (size, load.name, b) in index]
            out += _details(load, size, row_cells, notes)
    out.append("### Notes")
    out.append("")
    for line in notes.lines():
        out.append(f"- {line}")
    generators: dict[str, list[str]] = {}
    for load in loads:
        used = sorted({c.generator for c in cells if c.workload == load.name and c.generator})
        if used:
            generators.setdefault(" and ".join(used), []).append(load.name)
    if generators:
        named = {"C": "C (udpio/bench/native/loadgen.c)", "Python": "Python (udpio.bench._generator)"}
        out.append(
            "- Load generators: "
            + "; ".join(f"{', '.join(names)}: {named.get(kind, kind)}" for kind, names in generators.items())
            + "."
        )
    for load in loads:
        if load.rcvbuf is not None:
            out.append(
                f"- {load.name}: every server asks for SO_RCVBUF {load.rcvbuf // 1024} KiB (--rcvbuf; Linux doubles "
                "it, capped at net.core.rmem_max), the same for all, so that no row loses requests at its queue."
            )
    out.append(f"- Pinning: {pinning['note']}.")
    out.append(f"- Machine: {describe_machine(machine)}.")
    out.append(
        f"- Settings: duration {settings['duration']:g} s after {settings['warmup']:g} s warm-up, echo window "
        f"{settings['window'] or 'auto (' + ', '.join(f'{auto_window(z)} at {z} B' for z in settings['sizes']) + ')'}, "
        f"{settings['members']} multicast members, many-peer {settings.get('peers', PEERS)} client sockets x "
        f"{settings.get('peer_window', PEER_WINDOW)} in flight, {settings['repeat']} repeat(s)"
        + (", one server process per backend and server mode (--quick)" if settings.get("reuse_servers") else "")
        + "."
    )
    return "\n".join(out) + "\n"


def _column_title(load: Workload) -> str:
    return {
        "latency": "echo RTT p50 µs",
        "throughput": "echo dgram/s",
        "sink": "flood received dgram/s",
        "multicast": "multicast dgram/s per member",
        "many-peer": "many-peer echo dgram/s",
        "request-response": "req/resp (1 in flight) /s",
    }.get(load.name, load.name)


def _rss(index: dict[tuple[int, str, str], Cell], size: int, back: str, loads: Sequence[Workload]) -> str:
    """The server's smallest idle RSS and largest peak over the workloads, in MiB."""
    cells = [c for w in loads if (c := index.get((size, w.name, back))) and "rss_idle_mb" in c.stats]
    idle = [c.stats["rss_idle_mb"].low for c in cells]
    peak = [c.stats["rss_peak_mb"].high for c in cells if "rss_peak_mb" in c.stats]
    return f"{min(idle):.0f}→{max(peak):.0f}" if idle and peak else ""


def _fixed(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def _details(load: Workload, size: int, cells: Sequence[Cell], notes: _Notes) -> list[str]:
    def med(cell: Cell, key: str) -> float | None:
        stat = cell.stats.get(key)
        return stat.median if stat else None

    def fmt_rate(cell: Cell, key: str) -> str:
        stat = cell.stats.get(key)
        return rate(stat.median) + _spread(stat) if stat else ""

    rows = []
    if load.job in CLOSED_LOOP_JOBS:
        header = ["backend", "replies/s", "per server CPU-s", "p50 µs", "p90 µs", "p99 µs", "in flight", "lost",
                  "server CPU", "server waited", "client CPU", "bound by"]
        for c in cells:
            if c.status != "ok":
                rows.append([c.backend, notes.mark(c)] + [""] * (len(header) - 2))
                continue
            # No round-trip times below 16-byte payloads (no room for the timestamp): blank, not zero.
            rtts = [_fixed(med(c, k), 1) for k in ("rtt_p50_us", "rtt_p90_us", "rtt_p99_us")]
            rows.append([
                c.backend, fmt_rate(c, "replies_per_s"), fmt_rate(c, "replies_per_cpu_s"), *rtts,
                _fixed(med(c, "in_flight_mean"), 0), _pct(med(c, "loss")), _pct(med(c, "server_cpu")),
                _pct(med(c, "server_wait")), _pct(med(c, "generator_cpu")), c.limited_by,
            ])
    elif load.name == "latency":
        header = ["backend", "min µs", "p50 µs", "p99 µs", "max µs", "round trips", "lost"]
        for c in cells:
            if c.status != "ok":
                rows.append([c.backend, notes.mark(c), "", "", "", "", ""])
                continue
            rtts = [f"{med(c, k) or 0:.1f}" for k in ("rtt_min_us", "rtt_p50_us", "rtt_p99_us", "rtt_max_us")]
            rows.append([c.backend, *rtts, f"{med(c, 'replies') or 0:.0f}", f"{med(c, 'lost') or 0:.0f}"])
    else:
        if load.name == "throughput":
            header = ["backend", "echoed dgram/s", "per server CPU-s", "server CPU", "server waited", "client CPU",
                      "refills", "bound by"]
            keys = ["echoed_per_s", "echoed_per_cpu_s"]
        elif load.name == "sink":
            header = ["backend", "received dgram/s", "per server CPU-s", "offered dgram/s", "loss", "server CPU",
                      "server waited", "generator CPU", "bound by"]
            keys = ["received_per_s", "received_per_cpu_s", "offered_per_s"]
        else:
            header = ["backend", "per member dgram/s", "slowest member", "all members per server CPU-s",
                      "offered dgram/s", "loss", "server CPU", "server waited", "bound by"]
            keys = ["per_member_per_s", "per_member_min_per_s", "delivered_per_cpu_s", "offered_per_s"]
        for c in cells:
            if c.status != "ok":
                rows.append([c.backend, notes.mark(c)] + [""] * (len(header) - 2))
                continue
            row = [c.backend] + [fmt_rate(c, k) for k in keys]
            if load.name != "throughput":
                row.append(_pct(med(c, "loss")))
            row += [_pct(med(c, "server_cpu")), _pct(med(c, "server_wait"))]
            if load.name == "throughput":
                row += [_pct(med(c, "generator_cpu")), f"{med(c, 'refills') or 0:.0f}"]
            elif load.name == "sink":
                row.append(_pct(med(c, "generator_cpu")))
            row.append(c.limited_by)
            rows.append(row)
    title = f"#### {load.description} — {size}-byte datagrams"
    return [title, "", *_table(header, rows), ""]


# -- machine ------------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _udp_offloads() -> dict[str, bool]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return {"gso": _sockopts.gso_supported(sock), "gro": _sockopts.enable_gro(sock)}


def _source_revision() -> str | None:
    """The git commit udpio runs from when it runs from a checkout (``-dirty`` with local changes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a checkout, or no git: an installed release says its version instead
    return head + ("-dirty" if dirty else "") if head else None


def _compiler_version() -> str | None:
    """The first line of ``cc --version`` (what built the C rows), or ``None`` without a compiler."""
    command = compiler()
    if command is None:
        return None
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.splitlines()
    return lines[0].strip() if lines else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, kernel and the versions that matter, for the JSON file and the report (Twisted's version
    is read from its distribution metadata: the harness never imports Twisted)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "udpio": __version__,
        "udpio_revision": _source_revision(),
        "io_core": IO_CORE,  # "compiled" or "python" (UDPIO_NO_EXTENSIONS), inherited by the servers run
        "uvloop": _version("uvloop"),
        "rloop": _version("rloop"),
        "twisted": _version("twisted"),
        "cc": _compiler_version(),
        "psutil": _version("psutil"),
        "udp_offloads": _udp_offloads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "executable": sys.executable,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    load = machine.get("loadavg")
    offloads = machine.get("udp_offloads", {})
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores ({machine['usable_cores']} usable), {machine['kernel']}, "
        f"{machine['python']}, udpio {machine['udpio']}"
        + (f" (git {machine['udpio_revision']})" if machine.get("udpio_revision") else "")
        + (f", {machine['io_core']} I/O core" if machine.get("io_core") else "")
        + f", uvloop {machine['uvloop']}, rloop {machine.get('rloop')}, Twisted {machine['twisted']}, "
        + f"C compiler: {machine.get('cc') or 'none'}, "
        f"UDP GSO {'yes' if offloads.get('gso') else 'no'} / GRO {'yes' if offloads.get('gro') else 'no'}"
        + (f", load average {load[0]:.2f} at start" if load else "")
        + (f", {machine['loadavg_end'][0]:.2f} at end" if machine.get("loadavg_end") else "")
    )


# -- the plot -----------------------------------------------------------------------------------------


#: The plot's panels: (workload, figure, title, unit scale, unit label).
_PANELS: tuple[tuple[str, str, str, float, str], ...] = (
    ("latency", "rtt_p50_us", "echo latency: p50 round trip, one datagram in flight", 1.0, "µs (lower is better)"),
    ("throughput", "echoed_per_s", "echo throughput: replies per second, a window in flight", 1e-3, "k dgram/s"),
    ("sink", "received_per_s", "flood sink: received per second (ticks: offered; ▲: offered, off the scale)", 1e-3,
     "k dgram/s"),
    ("sink", "received_per_cpu_s", "flood sink: received per second of the server's own CPU time", 1e-3,
     "k dgram/CPU-s"),
    ("multicast", "per_member_per_s", "multicast fan-out: delivered per second per member", 1e-3, "k dgram/s"),
    ("many-peer", "replies_per_s", "many-peer echo: replies per second (C client, many sockets)", 1e-3,
     "k dgram/s"),
    ("many-peer", "replies_per_cpu_s", "many-peer echo: replies per second of the server's own CPU time", 1e-3,
     "k dgram/CPU-s"),
    ("many-peer", "rtt_p99_us", "many-peer echo: p99 round trip", 1.0, "µs (lower is better)"),
    ("request-response", "replies_per_s", "request/response, one in flight: round trips per second", 1e-3,
     "k round trips/s"),
)


def plot(cells: Sequence[Cell], path: str, title: str) -> None:
    """Bar charts per workload (backends on the x axis, one bar per payload size, min-max whiskers over the
    repeats, "n/a" where a backend did not run)."""
    import matplotlib  # noqa: PLC0415  # optional extra, checked by the CLI before the suite runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    present = {c.workload for c in cells}
    panels = [p for p in _PANELS if p[0] in present]
    backends = list(dict.fromkeys(c.backend for c in cells))
    sizes = list(dict.fromkeys(c.size for c in cells))
    index = {(c.size, c.workload, c.backend): c for c in cells}
    fig, axes = plt.subplots(
        max(1, len(panels)), 1, figsize=(max(8.0, 0.9 * len(backends) + 2), 3.0 * max(1, len(panels))),
        squeeze=False,
    )
    width = 0.8 / max(1, len(sizes))
    for ax, (load, key, panel_title, scale, unit) in zip(axes[:, 0], panels, strict=False):
        tallest = 0.0  # the highest bar with its whisker: offered-load ticks far above it are clipped
        offered_all: list[tuple[float, float]] = []
        for j, size in enumerate(sizes):
            xs, heights, low, high, offered = [], [], [], [], []
            for i, back in enumerate(backends):
                cell = index.get((size, load, back))
                x = i + (j - (len(sizes) - 1) / 2) * width
                if cell is None:
                    continue
                stat = cell.stats.get(key) if cell.status == "ok" else None
                if stat is None:
                    if j == 0:
                        ax.text(i, 0, "n/a" if cell.status == "unavailable" else "failed", ha="center",
                                va="bottom", fontsize=7, color="grey")
                    continue
                xs.append(x)
                heights.append(stat.median * scale)
                low.append((stat.median - stat.low) * scale)
                high.append((stat.high - stat.median) * scale)
                if key == "received_per_s" and "offered_per_s" in cell.stats:
                    offered.append((x, cell.stats["offered_per_s"].median * scale))
            ax.bar(xs, heights, width, yerr=[low, high], capsize=2, label=f"{size} B", color=f"C{j}")
            tallest = max([tallest, *(h + e for h, e in zip(heights, high, strict=True))])
            offered_all += offered
        if offered_all:
            # The C flooder offers a GRO server several times what the others take: ticks beyond twice the
            # tallest bar are drawn at the top as arrows, so the received bars stay readable.
            top = tallest * 2 if tallest else max(o[1] for o in offered_all)
            inside = [o for o in offered_all if o[1] <= top]
            above = [o for o in offered_all if o[1] > top]
            ax.scatter([o[0] for o in inside], [o[1] for o in inside], marker="_", s=120, color="black", zorder=3)
            if above:
                ax.scatter([o[0] for o in above], [top] * len(above), marker="^", s=30, color="black", zorder=3)
                ax.set_ylim(0, top * 1.05)
        ax.set_title(panel_title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xlim(-0.6, len(backends) - 0.4)
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels(backends, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if len(sizes) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.fill(line, 110) for line in title.splitlines()), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
