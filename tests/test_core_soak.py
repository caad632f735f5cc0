"""Soak: a flood through the compiled I/O core leaves no trace in memory.

A flooder process (300 source sockets, so the Receiver's 256-slot address cache keeps turning over) sends
64-byte, zero-length, 1200-byte and oversize datagrams with ``send_pairs``. This process receives them with
a Receiver, first one datagram per handler call (every 10007th call raises), then in lists that a batch
handler echoes back with ``send_pairs`` (the flooder never reads: the kernel drops the echoes). After a warm-up,
the resident memory, the interpreter's allocated blocks and the number of live objects must stay flat.

UDPIO_SOAK_DATAGRAMS sets the datagrams received per phase (default 500,000: CI; the report's run used more).
"""

from __future__ import annotations

import gc
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from udpio import _sockopts
from udpio._counters import Counters

from .test_core import Limits

core = pytest.importorskip("udpio._core", reason="the compiled I/O core is not built here")

pytestmark = pytest.mark.slow

PER_PHASE = int(os.environ.get("UDPIO_SOAK_DATAGRAMS", "500000"))
MAX_SIZE = 1500

FLOODER = r"""
import select, socket, sys, time
from udpio._core import send_pairs

dest = ("127.0.0.1", int(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
socks = []
for _ in range(300):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    socks.append(s)
# Mostly 64 bytes; a zero-length, a 1200-byte and an oversize one (2000 > max_size) in every 16.
batch = [(b"s" * 64, dest)] * 13 + [(b"", dest), (b"m" * 1200, dest), (b"o" * 2000, dest)]
print("ready", flush=True)
while time.monotonic() < deadline:
    for s in socks:
        if send_pairs(s, batch, 0) < len(batch):
            time.sleep(0.0001)  # the socket's send buffer is full: let the kernel catch up
    if select.select([sys.stdin], [], [], 0)[0]:
        break
"""


class CountingSink:
    def __init__(self) -> None:
        self.counters = Counters()

    def receive_error(self, exc: OSError) -> bool:
        raise AssertionError(f"unexpected receive error {exc!r}")

    def handler_failed(self, exc: Exception, addr: object) -> None:
        self.counters.handler_errors += 1


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample() -> tuple[int, int, int]:
    gc.collect()
    return _rss(), sys.getallocatedblocks(), len(gc.get_objects())


def _run(receiver: Any, rx: socket.socket, sink: CountingSink, target: int, deadline: float) -> None:
    while sink.counters.datagrams_in < target:
        assert time.monotonic() < deadline, f"soak too slow: {sink.counters.datagrams_in} of {target}"
        select.select([rx], [], [], 1)
        receiver.read_event()


@pytest.mark.timeout(600)
def test_a_flood_leaves_no_trace_in_memory() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setblocking(False)
        _sockopts.set_rcvbuf(rx, 1 << 22)
        rx.bind(("127.0.0.1", 0))
        limits = Limits(max_size=MAX_SIZE)
        deadline = time.monotonic() + 500
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOODER, str(rx.getsockname()[1]), "500"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert flooder.stdout is not None and flooder.stdout.readline().strip() == "ready"
            report = []
            calls = 0
            last: list[object] = [None]

            def one(data: bytes, addr: Any) -> None:
                nonlocal calls
                calls += 1
                last[0] = (data, addr)  # keep a reference, then let it go at the next call
                if calls % 10007 == 0:
                    raise ValueError("every 10007th datagram")

            def many(batch: list[tuple[bytes, Any]]) -> None:
                core.send_pairs(rx, batch, 0)  # echo: (data, addr) pairs are already send_pairs' shape
                last[0] = batch

            for name, handler in (("datagram_received", one), ("datagrams_received", many)):
                sink = CountingSink()
                refs = (sys.getrefcount(sink), sys.getrefcount(handler), sys.getrefcount(limits))
                receiver = core.Receiver(sink, rx.fileno(), limits, **{name: handler})
                _run(receiver, rx, sink, PER_PHASE // 10, deadline)  # warm-up: caches, arena, free lists
                before = _sample()
                _run(receiver, rx, sink, PER_PHASE, deadline)
                after = _sample()
                c = sink.counters
                report.append(f"{name}: {c.datagrams_in} in, {c.dropped_oversize} oversize, "
                              f"{c.handler_errors} handler errors; rss {before[0]} -> {after[0]}, "
                              f"blocks {before[1]} -> {after[1]}, objects {before[2]} -> {after[2]}")
                print(report[-1])
                assert c.dropped_oversize > 0
                if name == "datagram_received":
                    assert c.handler_errors == calls // 10007 > 0
                assert after[0] - before[0] < 4 << 20, report[-1]
                assert after[1] - before[1] < 2000, report[-1]
                assert after[2] - before[2] < 500, report[-1]
                receiver.stop()
                del receiver
                assert (sys.getrefcount(sink), sys.getrefcount(handler), sys.getrefcount(limits)) == refs
        finally:
            assert flooder.stdin is not None
            flooder.stdin.close()
            try:
                flooder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                flooder.kill()
                flooder.wait()
            assert flooder.stdout is not None
            flooder.stdout.close()
