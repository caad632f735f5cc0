"""The Python load generator: its own process (``python -m udpio.bench._generator``), driven by the harness.

(The many-peer and request/response workloads, and the flood where a C compiler exists, are driven by the C
load generator instead, ``native/loadgen.c``. Side by side on a loaded machine it offered about 1.6x this
flood to servers without GRO and 6-7x to a GRO server: see ``benchmarks/RESULTS.md``.)

It reads one JSON job per line on stdin and answers on stdout with JSON lines: ``measure-start`` and
``measure-end`` when its measuring window opens and closes (the harness snapshots the server's counters at
those moments), then ``result`` with its own figures, or ``error``. It stays up for the whole suite, so
its interpreter start-up, imports and CPU pinning are paid once.

It must not be the bottleneck, so each workload uses the cheapest client there is:

* ``flood`` and ``multicast``: udpio's transport ``send_many`` (UDP GSO on Linux: one ``sendmsg`` sends up
  to 64 equal-sized datagrams) in a tight loop, pausing only when the kernel pushes back;
* ``throughput``: a window of datagrams in flight, refilled per received batch with one ``send_many``;
* ``latency``: a blocking socket, one datagram in flight (an event loop would only add to every RTT).

Its offered rate is what the kernel accepted (``counters.datagrams_out``) inside the window, and it
reports its own CPU use there, so a reader can tell a saturated server from a generator that could not
offer more.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import udpio

from .. import _sockopts
from .._limits import GSO_MAX_SEGMENTS

#: Send and receive buffers asked for (the kernel caps them at ``net.core.wmem_max``/``rmem_max``). A
#: large send buffer keeps the flood from being flow-controlled by a slow receiver: the surplus is
#: dropped at the receiver's full queue, where the loss is visible, instead of slowing the generator.
SOCKET_BUFFER = 4 * 1024 * 1024
#: ``send_many`` calls between two looks at the clock in the flood loop (8 x 64 datagrams: about 150 us).
SENDS_PER_CLOCK_CHECK = 8
#: The flood loop lets the event loop run at least this often (seconds), e.g. for ICMP errors.
YIELD_INTERVAL = 0.01
#: The echo window is refilled when no reply came for this long (seconds): a datagram was lost.
STALL_TIMEOUT = 0.1
#: Latency: a reply later than this (seconds) counts as lost.
LATENCY_TIMEOUT = 0.5

#: Why the multicast workload cannot run with a udpio that has no multicast API (the generator's sender
#: needs it to pin its outgoing interface to loopback).
_NO_MULTICAST = "this udpio has no multicast API (udpio.listen_multicast)"

Job = dict[str, Any]
Result = dict[str, Any]


def emit(event: str, **fields: object) -> None:
    """One JSON line for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def runq_wait() -> float:
    """Seconds this process's main thread waited for a CPU while runnable (Linux ``/proc/self/schedstat``,
    second field, ns; sched-stats.rst); 0.0 elsewhere. On a shared machine: what other processes took."""
    try:
        with open("/proc/self/schedstat", encoding="ascii") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class _Window:
    """Marks the measuring window: ``warmup`` seconds after start, lasting ``duration``; records the clock,
    this process's CPU time and a count at both edges, and tells the harness."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.opens = time.monotonic() + warmup
        self.duration = duration
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = self.wait0 = self.wait1 = 0.0
        self.count0 = self.count1 = 0

    def open(self, count: int) -> None:
        self.t0, self.cpu0, self.wait0, self.count0 = time.monotonic(), time.process_time(), runq_wait(), count
        emit("measure-start", t=self.t0)

    def close(self, count: int) -> None:
        self.t1, self.cpu1, self.wait1, self.count1 = time.monotonic(), time.process_time(), runq_wait(), count
        emit("measure-end", t=self.t1)

    def figures(self, what: str) -> Result:
        elapsed = self.t1 - self.t0
        count = self.count1 - self.count0
        return {
            what: count,
            f"{what}_per_s": count / elapsed if elapsed > 0 else 0.0,
            "window_s": elapsed,
            "t0": self.t0,
            "t1": self.t1,
            "generator_cpu": (self.cpu1 - self.cpu0) / elapsed if elapsed > 0 else 0.0,
            "generator_wait": (self.wait1 - self.wait0) / elapsed if elapsed > 0 else 0.0,
        }

    async def run(self, count: Callable[[], int]) -> None:
        """Open and close the window on time while the loop does the work (for closed-loop workloads)."""
        await asyncio.sleep(max(0.0, self.opens - time.monotonic()))
        self.open(count())
        await asyncio.sleep(self.duration)
        self.close(count())


# -- latency: one datagram in flight ---------------------------------------------------------------------


def latency(job: Job) -> Result:
    """Ping-pong with a blocking socket; RTTs in microseconds from inside the window."""
    size = int(job["size"])
    window = _Window(float(job["warmup"]), float(job["duration"]))
    buffer = bytearray(size)
    tagged = size >= 8  # a sequence number tells a late reply from the current one
    rtts: list[int] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((job["host"], int(job["port"])))
        sock.settimeout(LATENCY_TIMEOUT)
        send, recv = sock.send, sock.recv
        clock = time.perf_counter_ns
        phase = 0
        sequence = 0
        while True:
            now = time.monotonic()
            if phase == 0 and now >= window.opens:
                window.open(len(rtts))
                rtts.clear()
                lost = 0
                phase = 1
            elif phase == 1 and now >= window.t0 + window.duration:
                window.close(len(rtts))
                break
            sequence += 1
            if tagged:
                struct.pack_into("!Q", buffer, 0, sequence)
            start = clock()
            send(buffer)
            try:
                while True:
                    reply = recv(65536)
                    if not tagged or reply[:8] == buffer[:8]:
                        break
            except TimeoutError:
                lost += 1
                continue
            rtts.append(clock() - start)
    result = window.figures("replies")
    rtts.sort()
    result["lost"] = lost
    if rtts:
        n = len(rtts)
        result.update(
            rtt_min_us=rtts[0] / 1000,
            rtt_p50_us=rtts[(n - 1) // 2] / 1000,
            rtt_p99_us=rtts[int(0.99 * (n - 1))] / 1000,
            rtt_max_us=rtts[-1] / 1000,
        )
    return result


# -- throughput: a window of datagrams in flight ---------------------------------------------------------


class _EchoClient(asyncio.DatagramProtocol):
    """Keeps ``window`` datagrams in flight: every batch of replies is answered with as many new ones."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = 0
        self.transport: udpio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # udpio.connect gives udpio's transport

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        n = len(batch)
        self.received += n
        self.transport.send_many([self.payload] * n)  # type: ignore[union-attr]  # set by connection_made

    def error_received(self, exc: Exception) -> None:
        """ICMP errors are counted by the transport; the stall timer refills the window."""


async def throughput(job: Job) -> Result:
    """Echo a window of datagrams; replies per second counted here (the client sees what came back)."""
    window_size = int(job["window"])
    payload = bytes(int(job["size"]))
    transport, client = await udpio.connect(
        lambda: _EchoClient(payload),
        job["host"],
        int(job["port"]),
        gro=bool(job.get("gro", False)),
        rcvbuf=SOCKET_BUFFER,
        sndbuf=SOCKET_BUFFER,
    )
    refills = 0
    try:
        window = _Window(float(job["warmup"]), float(job["duration"]))
        measuring = asyncio.ensure_future(window.run(lambda: client.received))
        transport.send_many([payload] * window_size)
        seen = -1
        while not measuring.done():
            await asyncio.wait([measuring], timeout=STALL_TIMEOUT)
            if client.received == seen and not measuring.done():
                # Nothing came back for a while: datagrams were lost (a full queue somewhere). Refill.
                refills += 1
                transport.send_many([payload] * window_size)
            seen = client.received
        await measuring
    finally:
        transport.close()
    result = window.figures("replies")
    result.update(window=window_size, refills=refills, send_errors=transport.counters.send_errors)
    return result


# -- flood and multicast: as fast as the kernel takes it -------------------------------------------------


class _Sender(asyncio.DatagramProtocol):
    """Flow control for the flood: ``writable`` is cleared while udpio holds unsent datagrams."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.pauses = 0

    def pause_writing(self) -> None:
        self.pauses += 1
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable (no server yet or any more): counted by the transport, the flood goes on."""


async def _flood(transport: udpio.DatagramTransport, sender: _Sender, job: Job, dest: Any = None) -> Result:
    size = int(job["size"])
    batch = [bytes(size)] * GSO_MAX_SEGMENTS
    # Pause as soon as anything is buffered, resume once all is sent: the loop below then never queues
    # more than one batch behind a full socket (the queue would only be dropped at its hard limit).
    transport.set_write_buffer_limits(high=0)
    counters = transport.counters  # the same object throughout; its fields are read at the window edges
    send_many = transport.send_many
    writable = sender.writable
    window = _Window(float(job["warmup"]), float(job["duration"]))
    phase = 0
    next_yield = 0.0
    while True:
        for _ in range(SENDS_PER_CLOCK_CHECK):
            send_many(batch, dest)
            if not writable.is_set():
                await writable.wait()
        now = time.monotonic()
        if phase == 0 and now >= window.opens:
            window.open(counters.datagrams_out)
            phase = 1
        elif phase == 1 and now >= window.t0 + window.duration:
            window.close(counters.datagrams_out)
            break
        if now >= next_yield:
            await asyncio.sleep(0)
            next_yield = now + YIELD_INTERVAL
    result = window.figures("sent")
    sock = transport.get_extra_info("socket")
    result.update(
        gso=_sockopts.gso_supported(sock),
        pauses=sender.pauses,
        dropped_send_buffer=counters.dropped_send_buffer,
        send_errors=counters.send_errors,
    )
    return result


async def flood(job: Job) -> Result:
    """Send ``size``-byte datagrams to the server as fast as the kernel takes them."""
    transport, sender = await udpio.connect(_Sender, job["host"], int(job["port"]), sndbuf=SOCKET_BUFFER)
    try:
        return await _flood(transport, sender, job)
    finally:
        transport.close()


async def multicast(job: Job) -> Result:
    """Flood a group on the loopback interface; the server's members count what each of them got."""
    # No group joined: a sending socket whose outgoing interface is loopback, with TTL 0, so even a wrong
    # route could not carry a datagram off this host (ip(7): TTL 0 multicast is delivered locally only).
    transport, sender = await udpio.listen_multicast(_Sender, 0, interface="127.0.0.1", host="127.0.0.1", ttl=0)
    try:
        return await _flood(transport, sender, job, (job["group"], int(job["port"])))
    finally:
        transport.close()


_ASYNC_JOBS: dict[str, Callable[[Job], Coroutine[Any, Any, Result]]] = {
    "throughput": throughput,
    "flood": flood,
    "multicast": multicast,
}


def run_job(job: Job) -> Result:
    """Run one job on a fresh loop (uvloop unless the job says otherwise) and return its figures."""
    kind = job["kind"]
    if kind == "latency":
        return latency(job)
    if kind not in _ASYNC_JOBS:
        raise ValueError(f"unknown job kind {kind!r}")
    return udpio.run(_ASYNC_JOBS[kind](job), loop=job.get("loop", "auto"))


def capabilities() -> Result:
    """What this generator can do here, announced once at start (``None``: available, else the reason)."""
    return {"multicast": None if hasattr(udpio, "listen_multicast") else _NO_MULTICAST}


def main() -> int:
    """Serve jobs from stdin until it ends."""
    emit("hello", **capabilities())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            emit("result", **run_job(job))
        except Exception as exc:
            emit("error", error=f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
