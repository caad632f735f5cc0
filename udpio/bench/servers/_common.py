"""Plumbing shared by the benchmark servers: their arguments, the control channel, the JSON lines they print.

Standard library only, so that each server imports exactly the framework it measures and nothing else
(the plain-asyncio and Twisted servers never import udpio). Each server is run as a script
(``python asyncio_server.py --workload sink``), which puts this directory first on ``sys.path``: that is
how ``import _common`` finds this file.

The conversation with the harness (``udpio.bench._harness``), one JSON object per line on stdout:

* at start: ``{"event": "ready", "port": N, ...}`` once every socket is bound (port 0 on 127.0.0.1), or
  ``{"event": "unavailable", "reason": "..."}`` and exit status :data:`EXIT_UNAVAILABLE` when this backend
  cannot run here (uvloop or Twisted missing, udpio API not there yet);
* the line ``snap`` on stdin: ``{"event": "snap", "t": ..., "cpu": ..., "runq_wait": ..., "received": [...]}``
  (monotonic clock, this process's CPU seconds, seconds spent waiting for a CPU, datagrams received per
  socket so far);
* the line ``stop`` (or end of stdin, so a harness killed with SIGKILL still stops its servers): the server
  closes its sockets and prints ``{"event": "final", ...}`` with the same fields.

Counting is one attribute increment per datagram (or per batch), as a real handler would do; the control
thread only reads those ints (atomic under the GIL) and is blocked in ``read`` the rest of the time, so it
costs the measured loop nothing.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

#: Exit status of a server that cannot run here (it printed an ``unavailable`` event with the reason).
EXIT_UNAVAILABLE = 3
#: The servers only ever bind loopback: the benchmark never sends a datagram off the machine.
HOST = "127.0.0.1"
#: Large enough for any IPv4 datagram, so nothing is truncated.
RECV_SIZE = 65536
WORKLOADS = ("echo", "sink", "multicast")


class Counted(Protocol):
    """Anything with a ``received`` count: a protocol object, or a plain :class:`Count`."""

    received: int


class Count:
    """A mutable counter for servers without a protocol object (the blocking loop)."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every server takes; each script adds its own variant flag (``--loop``, ``--reactor``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", choices=WORKLOADS, required=True, help="echo, sink (count only) or multicast")
    p.add_argument("--members", type=int, default=4, help="multicast: member sockets joined to the group")
    p.add_argument("--group", default="239.255.77.77", help="multicast: the group (joined on 127.0.0.1 only)")
    p.add_argument(
        "--rcvbuf", type=int, default=None,
        help="SO_RCVBUF in bytes for the server's socket (Linux doubles it, capped at net.core.rmem_max); "
        "default: the system's",
    )
    return p


def set_rcvbuf(sock: socket.socket, size: int | None) -> int:
    """Ask for ``size`` bytes of receive buffer (``None``: leave the system's default) and return what the
    kernel gives (socket(7): doubled, capped at ``net.core.rmem_max``); the ``ready`` line reports it."""
    if size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def emit(event: str, **fields: object) -> None:
    """Print one JSON line for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def unavailable(reason: str) -> None:
    """Say why this backend cannot run here, and exit."""
    emit("unavailable", reason=reason)
    sys.exit(EXIT_UNAVAILABLE)


def runq_wait() -> float | None:
    """Seconds the main thread spent runnable but waiting for a CPU (Linux ``/proc/<pid>/schedstat``, second
    field, in ns; sched-stats.rst): on a shared machine, the time other processes took from this one."""
    try:
        with open("/proc/self/schedstat", encoding="ascii") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def snapshot(counters: Sequence[Counted]) -> dict[str, object]:
    """The figures a ``snap`` or ``final`` line carries."""
    return {
        "t": time.monotonic(),
        "cpu": time.process_time(),
        "runq_wait": runq_wait(),
        "received": [c.received for c in counters],
    }


def serve_control(counters: Sequence[Counted], stop: Callable[[], None]) -> threading.Thread:
    """Answer ``snap`` lines on stdin until ``stop`` or end of input, then call ``stop`` (which must be
    thread-safe: ``loop.call_soon_threadsafe``, ``reactor.callFromThread``, or a flag plus a wake-up)."""

    def control() -> None:
        try:
            for line in sys.stdin:
                command = line.strip()
                if command == "snap":
                    emit("snap", **snapshot(counters))
                elif command == "stop":
                    break
        finally:
            stop()

    thread = threading.Thread(target=control, name="bench-control", daemon=True)
    thread.start()
    return thread


def ip_mreq(group: str) -> bytes:
    """``struct ip_mreq`` for joining ``group`` on the loopback interface only (ip(7): group, then the local
    interface address; never INADDR_ANY, which would let the kernel pick a real network interface)."""
    return socket.inet_aton(group) + socket.inet_aton(HOST)


def multicast_member(group: str, port: int) -> socket.socket:
    """A plain-socket multicast member on loopback, as a program without udpio writes it: SO_REUSEADDR so
    several members share the port (each gets its own copy of every datagram, ip(7)), bound to the group
    so unrelated traffic to the port is not delivered, joined on 127.0.0.1. Closed on any failure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, ip_mreq(group))
    except BaseException:
        sock.close()
        raise
    return sock


def multicast_members(group: str, count: int) -> list[socket.socket]:
    """``count`` members of ``group`` on one free port (the first binds port 0, the others join it)."""
    members: list[socket.socket] = []
    try:
        for _ in range(count):
            members.append(multicast_member(group, members[0].getsockname()[1] if members else 0))
    except BaseException:
        for sock in members:
            sock.close()
        raise
    return members


def run_on_rloop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on rloop (an asyncio event loop written in Rust), or say it is unavailable. rloop has no
    ``run()`` of its own and ``udpio.run`` knows only the standard loop and uvloop, so the loop is made and
    closed here, as ``asyncio.run`` would (works on Python 3.10 too, which has no ``asyncio.Runner``)."""
    # Imported here, not at the top: the blocking server must not pay for importing asyncio.
    import asyncio  # noqa: PLC0415

    try:
        import rloop  # noqa: PLC0415  # optional: only the rloop rows need it
    except ImportError as exc:
        main.close()
        unavailable(f"rloop is not installed ({exc}); pip install 'udpio[bench]'")
    loop = rloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def loop_name() -> str:
    """The running loop's class, for the ``ready`` line (which loop really ran the server)."""
    import asyncio  # noqa: PLC0415  # as in run_on_rloop

    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


def wake(port: int) -> None:
    """Send one empty datagram to our own socket, so a loop blocked in ``recv`` sees its stop flag."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"", (HOST, port))

