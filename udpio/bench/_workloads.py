"""What is measured: the backends (one server script each) and the workloads, and how raw events become
figures. No processes here (that is ``_harness``) and no formatting (that is ``_report``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

#: A server whose CPU use (on-CPU plus waiting for a CPU) stays below this fraction of the window was not
#: the bottleneck: its figure is a lower bound of what it can do, and the report says so.
SATURATED = 0.8

#: A flood that loses at least this share of what was offered overflowed the server's queue: the server
#: could not keep up, so its received rate is its capacity (under the machine's conditions at the time).
LOSSY = 0.01
#: Echo throughput window when ``--window`` is not given: up to 128 datagrams and 64 KiB of payload in
#: flight, so the server is kept busy without overflowing a default 208 KiB receive buffer (each datagram
#: costs its payload plus ~700 bytes of kernel overhead there) at 8192-byte payloads.
AUTO_WINDOW_DATAGRAMS = 128
AUTO_WINDOW_BYTES = 64 * 1024
#: Many-peer echo defaults (issue 11): client sockets on distinct ports, and requests in flight on each.
#: 256 x 4 keeps about a thousand datagrams in flight from peers the kernel will never coalesce.
PEERS = 256
PEER_WINDOW = 4
#: Many-peer echo: SO_RCVBUF every server asks for, the same for all (like for like). A default 208 KiB
#: buffer holds about 256 datagrams of 64 bytes (each costs its payload plus ~700 bytes of kernel overhead),
#: fewer than the 1024 in flight: 17-27 % were lost at every server, c-ref included, and a socket whose
#: request was lost ran one short until it fell silent and was refilled, so each row ran at its own, lower,
#: load (194-374 really in flight). 2 MiB (Linux doubles it, capped at net.core.rmem_max) holds them all.
PEER_RCVBUF = 2 * 1024 * 1024

Figures = dict[str, Any]


def auto_window(size: int) -> int:
    """The echo window used for ``size``-byte payloads when none is given."""
    return max(1, min(AUTO_WINDOW_DATAGRAMS, AUTO_WINDOW_BYTES // max(size, 1)))


@dataclasses.dataclass(frozen=True)
class Backend:
    """One row of the table: a server script in ``udpio/bench/servers/`` and its arguments, or (``native``)
    one of the C programs of ``udpio/bench/native/``, compiled at first use."""

    name: str
    script: str
    args: tuple[str, ...]
    description: str
    #: Modules the server needs, checked with ``importlib.util.find_spec`` (never imported here: the harness
    #: must not import Twisted).
    requires: tuple[str, ...] = ()
    #: The server receives with UDP GRO; the echo client then does the same, so GSO replies stay whole.
    gro: bool = False
    #: ``script`` names a C program (a key of ``_native.PROGRAMS``), not a Python script.
    native: bool = False


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "udpio-asyncio", "udpio_server.py", ("--loop", "asyncio", "--gro"),
        "udpio on the standard loop, fastest path: batch hook, GRO, echo replies in GSO runs", gro=True,
    ),
    Backend(
        "udpio-uvloop", "udpio_server.py", ("--loop", "uvloop", "--gro"),
        "udpio on uvloop, fastest path: batch hook, GRO, echo replies in GSO runs", ("uvloop",), gro=True,
    ),
    Backend(
        "udpio-asyncio-nogro", "udpio_server.py", ("--loop", "asyncio"),
        "udpio on the standard loop, no GRO, batch hook, replies with send_batch (sendmmsg with the compiled core)",
    ),
    Backend(
        "udpio-uvloop-nogro", "udpio_server.py", ("--loop", "uvloop"),
        "udpio on uvloop, no GRO, batch hook, replies with send_batch (sendmmsg with the compiled core)", ("uvloop",),
    ),
    Backend(
        "udpio-asyncio-perdgram", "udpio_server.py", ("--loop", "asyncio", "--per-datagram"),
        "udpio on the standard loop, one datagram_received call and one sendto per datagram (the peers' code)",
    ),
    Backend(
        "udpio-uvloop-perdgram", "udpio_server.py", ("--loop", "uvloop", "--per-datagram"),
        "udpio on uvloop, one datagram_received call and one sendto per datagram (the peers' code)", ("uvloop",),
    ),
    Backend(
        "asyncio", "asyncio_server.py", ("--loop", "asyncio"),
        "plain asyncio create_datagram_endpoint + minimal protocol, standard loop (reference row)",
    ),
    Backend(
        "uvloop", "asyncio_server.py", ("--loop", "uvloop"),
        "plain create_datagram_endpoint + minimal protocol on uvloop's native UDP transport", ("uvloop",),
    ),
    Backend(
        "rloop", "asyncio_server.py", ("--loop", "rloop"),
        "plain create_datagram_endpoint + minimal protocol on rloop's own UDP transport (Rust event loop)",
        ("rloop",),
    ),
    Backend(
        "udpio-rloop", "udpio_server.py", ("--loop", "rloop", "--gro"),
        "udpio on rloop (its transport uses add_reader), fastest path: batch hook, GRO, echo replies in GSO runs",
        ("rloop",), gro=True,
    ),
    Backend(
        "udpio-rloop-nogro", "udpio_server.py", ("--loop", "rloop"),
        "udpio on rloop, no GRO, batch hook, replies with send_batch (sendmmsg with the compiled core)", ("rloop",),
    ),
    Backend(
        "twisted-epoll", "twisted_server.py", ("--reactor", "epoll"),
        "Twisted DatagramProtocol on the default epoll reactor (reference row)", ("twisted",),
    ),
    Backend(
        "twisted-asyncio", "twisted_server.py", ("--reactor", "asyncio"),
        "Twisted DatagramProtocol on asyncioreactor (standard loop)", ("twisted",),
    ),
    Backend(
        "twisted-udpio", "twisted_server.py", ("--reactor", "udpio"),
        "the same Twisted code on udpio's drop-in reactor (udpio.compat.install(): uvloop by default)", ("twisted",),
    ),
    Backend("raw", "raw_server.py", (), "a blocking-socket loop in plain Python: the no-framework floor"),
    Backend(
        "c-ref", "refserver", (),
        "C reference server: blocking recvmmsg + sendmmsg, 64 per call, no interpreter (the limit; echo and "
        "sink only; compiled with cc at first use)", native=True,
    ),
)
BACKEND_NAMES = tuple(b.name for b in BACKENDS)
#: The rows every ratio is taken against: the plain-asyncio floor, Twisted (what users move from), and the
#: C reference server (the limit: a ratio below 1 there is the share of C's rate a row reaches).
REFERENCES = ("asyncio", "twisted-epoll", "c-ref")


def backend(name: str) -> Backend:
    """The backend called ``name`` (names are checked by the CLI first)."""
    for candidate in BACKENDS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One kind of load: which server mode and generator job it needs, and its headline figure."""

    name: str
    description: str
    server: str  # the server's --workload
    job: str  # the generator's job kind
    headline: str  # the figure the summary table and the ratios use
    unit: str
    higher_is_better: bool
    figures: Callable[[Figures, Sequence[Figures], int], Figures]
    #: The C load generator (``native/loadgen.c``) runs the job, not the Python one: a workload that
    #: needs it is skipped, with the reason, where it cannot be compiled...
    native_client: bool = False
    #: ... unless the Python generator can run the job too (less load offered: the report says which ran).
    python_fallback: bool = False
    #: SO_RCVBUF every server asks for (``--rcvbuf``), or ``None`` for the system's default.
    rcvbuf: int | None = None


def _rate(snaps: Sequence[Figures], index: int = 0) -> float:
    """Datagrams per second a server socket received between the two snapshots."""
    first, last = snaps[0], snaps[-1]
    elapsed = last["t"] - first["t"]
    return (last["received"][index] - first["received"][index]) / elapsed if elapsed > 0 else 0.0


def _load(snaps: Sequence[Figures]) -> Figures:
    """How busy the server was in the window: on a CPU, and runnable but waiting for one (other processes
    on a shared machine take that share; it is reported so noisy runs can be told apart)."""
    first, last = snaps[0], snaps[-1]
    elapsed = last["t"] - first["t"]
    if elapsed <= 0:
        return {"server_cpu": 0.0, "server_wait": 0.0}
    wait = None
    if first.get("runq_wait") is not None and last.get("runq_wait") is not None:
        wait = (last["runq_wait"] - first["runq_wait"]) / elapsed
    return {"server_cpu": (last["cpu"] - first["cpu"]) / elapsed, "server_wait": wait}


def _per_cpu(rate: float, load: Figures) -> float:
    """Datagrams per second of the server's own CPU time: what it would do with a whole core to itself.
    Much steadier than the rate on a shared machine, where neighbours take a varying share of the core."""
    return rate / load["server_cpu"] if load["server_cpu"] > 0 else 0.0


def _server_bound(load: Figures, loss: float | None = None) -> bool:
    """Whether the server was the bottleneck: it lost datagrams (its queue overflowed: it could not keep up,
    as scheduled), or it was busy (on a CPU or waiting for one) nearly all the window."""
    if loss is not None and loss >= LOSSY:
        return True
    return bool(load["server_cpu"] + (load["server_wait"] or 0.0) >= SATURATED)


def _latency(result: Figures, snaps: Sequence[Figures], members: int) -> Figures:
    keys = ("rtt_min_us", "rtt_p50_us", "rtt_p99_us", "rtt_max_us", "replies", "lost", "generator_cpu")
    out = {k: result[k] for k in keys if k in result}
    if "rtt_p50_us" not in out:
        raise ValueError(f"no reply in the window ({result.get('lost', 0)} lost)")
    return out


def _throughput(result: Figures, snaps: Sequence[Figures], members: int) -> Figures:
    load = _load(snaps)
    out: Figures = {
        "echoed_per_s": result["replies_per_s"],
        "server_received_per_s": _rate(snaps),
        "echoed_per_cpu_s": _per_cpu(result["replies_per_s"], load),
        "window": result["window"],
        "refills": result["refills"],
        "generator_cpu": result["generator_cpu"],
        "generator_wait": result.get("generator_wait"),
        **load,
    }
    if _server_bound(load):
        out["limited_by"] = "server"
    elif result["generator_cpu"] + result.get("generator_wait", 0.0) >= SATURATED:
        out["limited_by"] = "generator"
    else:
        out["limited_by"] = "window (round trips, not CPU)"
    return out


def _sink(result: Figures, snaps: Sequence[Figures], members: int) -> Figures:
    load = _load(snaps)
    offered = result["sent_per_s"]
    received = _rate(snaps)
    loss = max(0.0, 1.0 - received / offered) if offered else 0.0
    return {
        "received_per_s": received,
        "received_per_cpu_s": _per_cpu(received, load),
        "offered_per_s": offered,
        "loss": loss,
        "generator_cpu": result["generator_cpu"],
        "generator_wait": result.get("generator_wait"),
        "gso": result.get("gso"),
        **load,
        "limited_by": "server" if _server_bound(load, loss) else "generator (offered load below server capacity)",
    }


def _multicast(result: Figures, snaps: Sequence[Figures], members: int) -> Figures:
    load = _load(snaps)
    offered = result["sent_per_s"]
    per_member = [_rate(snaps, i) for i in range(len(snaps[0]["received"]))]
    mean = sum(per_member) / len(per_member)
    loss = max(0.0, 1.0 - mean / offered) if offered else 0.0
    return {
        "per_member_per_s": mean,
        "per_member_min_per_s": min(per_member),
        "members": len(per_member),
        "delivered_per_s": sum(per_member),
        "delivered_per_cpu_s": _per_cpu(sum(per_member), load),
        "offered_per_s": offered,
        "loss": loss,
        "generator_cpu": result["generator_cpu"],
        "generator_wait": result.get("generator_wait"),
        **load,
        "limited_by": "server" if _server_bound(load, loss) else "generator (offered load below server capacity)",
    }


def _closed_loop(result: Figures, snaps: Sequence[Figures], members: int) -> Figures:
    """Echo from the C client (many-peer, request/response): rate, round-trip percentiles, losses, and what
    bound the rate."""
    load = _load(snaps)
    sent = result["sent"]
    out: Figures = {
        "replies_per_s": result["replies_per_s"],
        "server_received_per_s": _rate(snaps),
        "replies_per_cpu_s": _per_cpu(result["replies_per_s"], load),
        "sockets": result["sockets"],
        "in_flight": result["inflight"],
        "lost": result["lost"],
        "late": result["late"],
        "loss": result["lost"] / sent if sent else 0.0,
        "generator_cpu": result["generator_cpu"],
        "generator_wait": result.get("generator_wait"),
        **load,
    }
    if not result["replies"]:
        raise ValueError(f"no reply in the window ({result['lost']} lost)")
    # Payloads under 16 bytes carry no timestamp (loadgen.c): a rate, but no round-trip times.
    if "rtt_p50_us" in result:
        keys = ("rtt_min_us", "rtt_p50_us", "rtt_p90_us", "rtt_p99_us", "rtt_max_us")
        out.update({k: result[k] for k in keys})
        # Little's law: what was really in flight on average. Below sockets x in_flight when requests were
        # lost at the server's full queue (a socket runs one short until it falls silent and is refilled).
        out["in_flight_mean"] = result["replies_per_s"] * result["rtt_mean_us"] / 1e6
    if _server_bound(load):
        out["limited_by"] = "server"
    elif result["generator_cpu"] + (result.get("generator_wait") or 0.0) >= SATURATED:
        out["limited_by"] = "generator"
    else:
        out["limited_by"] = "round trips (requests in flight, not CPU)"
    return out


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "latency", "echo latency: one datagram in flight, RTT min/p50/p99/max",
        "echo", "latency", "rtt_p50_us", "us", False, _latency,
    ),
    Workload(
        "throughput", "echo throughput: a window of datagrams in flight, replies per second",
        "echo", "throughput", "echoed_per_s", "dgram/s", True, _throughput,
    ),
    Workload(
        "sink", "flood sink: the server only counts; offered and received rates (loss is the gap)",
        "sink", "flood", "received_per_s", "dgram/s", True, _sink, native_client=True, python_fallback=True,
    ),
    Workload(
        "multicast", "multicast fan-out: one sender, N members on loopback, datagrams per second per member",
        "multicast", "multicast", "per_member_per_s", "dgram/s", True, _multicast,
    ),
    Workload(
        "many-peer", "many-peer echo: client sockets on distinct ports (default 256, 4 in flight each; C "
        "client), replies per second and RTT p50/p90/p99: datagrams from unrelated peers never coalesce",
        "echo", "peers", "replies_per_s", "dgram/s", True, _closed_loop, native_client=True, rcvbuf=PEER_RCVBUF,
    ),
    Workload(
        "request-response", "request/response: one client socket, one request in flight (C client), round "
        "trips per second and RTT p50/p90/p99 (issue 14: what held writes cost when nothing else is in flight)",
        "echo", "rr", "replies_per_s", "round trips/s", True, _closed_loop, native_client=True,
    ),
)
WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS)


def workload(name: str) -> Workload:
    """The workload called ``name``."""
    for candidate in WORKLOADS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def generator_job(
    load: Workload, back: Backend, *, port: int, size: int, warmup: float, duration: float, window: int,
    group: str | None, peers: int = PEERS, peer_window: int = PEER_WINDOW,
) -> Figures:
    """The job line the generator runs against one server (``window`` 0: :func:`auto_window`)."""
    job: Figures = {
        "kind": load.job, "host": "127.0.0.1", "port": port, "size": size,
        "warmup": warmup, "duration": duration, "window": window or auto_window(size), "gro": back.gro,
    }
    if group is not None:
        job["group"] = group
    if load.job == "peers":
        job.update(sockets=peers, inflight=peer_window)
    elif load.job == "rr":
        job.update(sockets=1, inflight=1)
    return job


#: The generator jobs that are closed-loop echo from the C client (many-peer, request/response): they share
#: one figures function and one details table.
CLOSED_LOOP_JOBS = ("peers", "rr")


def loadgen_args(job: Figures) -> list[str]:
    """The C load generator's command line (after the program's path) for a job of :func:`generator_job`."""
    common = [
        "--host", str(job["host"]), "--port", str(job["port"]), "--size", str(job["size"]),
        "--warmup", repr(float(job["warmup"])), "--duration", repr(float(job["duration"])),
        # Exit at end-of-file on stdin, as every child of the harness does: a harness killed outright
        # leaves no flood behind.
        "--parent-stdin", "1",
    ]
    if job["kind"] in CLOSED_LOOP_JOBS:
        return ["echo", *common, "--sockets", str(job["sockets"]), "--inflight", str(job["inflight"])]
    if job["kind"] == "flood":
        return ["flood", *common]
    raise ValueError(f"the C load generator has no {job['kind']!r} job")
