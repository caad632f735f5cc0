"""Micro-benchmark: the pure-Python drain loop against the compiled I/O core (udpio._core), flood sink and echo.

    python benchmarks/core_drain.py [--seconds 3] [--size 64] [--peers 16] [--modes python,compiled,...]

A flooder process sends ``--size``-byte datagrams from ``--peers`` sockets as fast as it can (sendmmsg through
udpio._core.send_pairs) to one socket that this process drains on uvloop, with ``loop.add_reader`` as
udpio's transport does. Each mode runs for ``--seconds`` and reports the datagrams delivered to the handler
per second. Modes:

* ``python``: the transport's per-datagram loop (recvfrom, size check, handler call, counters at the end);
* ``python-batch``: the same building lists of (data, addr) for a ``datagrams_received`` handler;
* ``compiled`` / ``compiled-batch``: ``udpio._core.Receiver`` with the same handlers;
* ``echo-python``: ``python`` whose handler replies with ``sock.sendto`` (what a protocol does today);
* ``echo-compiled``: ``compiled-batch`` whose handler replies to the whole list with ``send_pairs``;
* ``c`` (``--prefilled`` only): no interpreter at all, a C loop of ``recvmmsg`` (64 per call, 64 KiB per slot,
  the benchmark's ``c-ref`` sink) compiled with ``cc`` and called through ``ctypes`` once per drain: the
  kernel's share of a drain, the floor under every mode above.

A figure is only meaningful on a quiet machine: the flooder and this process each need a core.
``--prefilled`` measures without a flooder: the socket's queue is filled first, then drained by read events
called directly, timed in this thread's CPU time (``time.thread_time``), so a busy machine disturbs it less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from udpio import _core, _sockopts
from udpio._counters import Counters

MAX_DATAGRAMS_PER_EVENT = 256
BATCH_BYTES = 16 * 1024
RECV_SIZE = 65536

FLOODER = r"""
import socket, sys, time
from udpio._core import send_pairs
dest = ("127.0.0.1", int(sys.argv[1])); size = int(sys.argv[2]); peers = int(sys.argv[3])
socks = []
for _ in range(peers):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.setblocking(False)
    socks.append(s)
batch = [(b"x" * size, dest)] * 64
sent = 0
end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end:
    for s in socks:
        sent += send_pairs(s, batch, 0)
print(sent, flush=True)
"""


class Limits:
    recv_size = RECV_SIZE
    max_size = RECV_SIZE - 1
    per_event = MAX_DATAGRAMS_PER_EVENT
    batch_bytes = BATCH_BYTES


class Sink:
    def __init__(self) -> None:
        self.counters = Counters()

    def receive_error(self, exc: OSError) -> bool:
        return False

    def handler_failed(self, exc: Exception, addr: object) -> None:
        self.counters.handler_errors += 1


def python_reader(sock: socket.socket, sink: Sink, deliver: Callable[[bytes, Any], None]) -> Callable[[], None]:
    """udpio/_transport.py's per-datagram read loop, as it runs today."""
    counters = sink.counters

    def read_ready() -> None:
        recvfrom = sock.recvfrom
        size = RECV_SIZE
        count = nbytes = 0
        try:
            for _ in range(MAX_DATAGRAMS_PER_EVENT):
                try:
                    data, addr = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if sink.receive_error(exc):
                        break
                    continue
                length = len(data)
                if length >= size:
                    counters.dropped_oversize += 1
                    continue
                count += 1
                nbytes += length
                try:
                    deliver(data, addr)
                except Exception as exc:
                    sink.handler_failed(exc, addr)
        finally:
            counters.datagrams_in += count
            counters.bytes_in += nbytes

    return read_ready


def python_batch_reader(
    sock: socket.socket, sink: Sink, many: Callable[[list[tuple[bytes, Any]]], None]
) -> Callable[[], None]:
    """udpio/_transport.py's batch read loop (recvfrom, lists of about BATCH_BYTES)."""
    counters = sink.counters

    def flush(batch: list[tuple[bytes, Any]], chunk: int) -> None:
        counters.datagrams_in += len(batch)
        counters.bytes_in += chunk
        try:
            many(batch)
        except Exception as exc:
            sink.handler_failed(exc, batch[-1][1])

    def read_ready() -> None:
        batch: list[tuple[bytes, Any]] = []
        recvfrom = sock.recvfrom
        chunk = 0
        for _ in range(MAX_DATAGRAMS_PER_EVENT):
            try:
                item = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if sink.receive_error(exc):
                    break
                continue
            length = len(item[0])
            if length >= RECV_SIZE:
                counters.dropped_oversize += 1
                continue
            batch.append(item)
            chunk += length
            if chunk >= BATCH_BYTES:
                flush(batch, chunk)
                batch, chunk = [], 0
        if batch:
            flush(batch, chunk)

    return read_ready


def make_reader(mode: str, sock: socket.socket, sink: Sink) -> Callable[[], None]:
    got = [0]

    def one(data: bytes, addr: Any) -> None:
        got[0] += 1

    def many(batch: list[tuple[bytes, Any]]) -> None:
        got[0] += len(batch)

    sendto = sock.sendto

    def echo_one(data: bytes, addr: Any) -> None:
        try:  # noqa: SIM105  # a with-statement per datagram would cost more than the send it guards
            sendto(data, addr)
        except OSError:
            pass

    def echo_many(batch: list[tuple[bytes, Any]]) -> None:
        _core.send_pairs(sock, batch, 0)

    if mode == "python":
        return python_reader(sock, sink, one)
    if mode == "python-batch":
        return python_batch_reader(sock, sink, many)
    if mode == "echo-python":
        return python_reader(sock, sink, echo_one)
    fd = sock.fileno()
    if mode == "compiled":
        return _core.Receiver(sink, fd, Limits(), datagram_received=one).read_event
    if mode == "compiled-batch":
        return _core.Receiver(sink, fd, Limits(), datagrams_received=many).read_event
    if mode == "echo-compiled":
        return _core.Receiver(sink, fd, Limits(), datagrams_received=echo_many).read_event
    raise SystemExit(f"unknown mode {mode!r}")


async def measure(mode: str, seconds: float, size: int, peers: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        _sockopts.set_rcvbuf(sock, 1 << 22)
        sock.bind(("127.0.0.1", 0))
        sink = Sink()
        loop.add_reader(sock.fileno(), make_reader(mode, sock, sink))
        warmup = 0.5
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOODER, str(sock.getsockname()[1]), str(size), str(peers),
            str(seconds + warmup + 0.5), stdout=subprocess.PIPE,
        )
        try:
            await asyncio.sleep(warmup)
            start_count, start = sink.counters.datagrams_in, time.perf_counter()
            await asyncio.sleep(seconds)
            delivered = sink.counters.datagrams_in - start_count
            elapsed = time.perf_counter() - start
            assert flooder.stdout is not None
            sent = int((await flooder.stdout.read()).decode().strip() or 0)
            await flooder.wait()
        finally:
            loop.remove_reader(sock.fileno())
            if flooder.returncode is None:
                flooder.kill()
                await flooder.wait()
        return delivered / elapsed, sent / (seconds + warmup + 0.5)


C_DRAIN = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/socket.h>
#define BATCH 64
#define SLOT 65536
static struct mmsghdr msgs[BATCH];
static struct iovec iovs[BATCH];
static struct sockaddr_storage peers[BATCH];
static char *buffers;
long drain(int fd) {
    if (buffers == NULL && (buffers = malloc((size_t)BATCH * SLOT)) == NULL) return -1;
    long count = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iovs[i].iov_base = buffers + (size_t)i * SLOT;
            iovs[i].iov_len = SLOT;
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return count;
        count += n;
    }
}
"""


def c_reader(sock: socket.socket, sink: Sink) -> Callable[[], None]:
    """The ``c`` mode: a C recvmmsg loop that drains the socket in one call (counted into ``sink``)."""
    import ctypes  # noqa: PLC0415  # only this mode needs it
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="core_drain-") as scratch:
        source, library = os.path.join(scratch, "drain.c"), os.path.join(scratch, "drain.so")
        with open(source, "w", encoding="ascii") as out:
            out.write(C_DRAIN)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", library, source], check=True)
        drain = ctypes.CDLL(library).drain  # loaded: the file may go
    drain.restype = ctypes.c_long
    drain.argtypes = [ctypes.c_int]
    fd = sock.fileno()

    def read() -> None:
        sink.counters.datagrams_in += max(0, drain(fd))

    return read


def prefilled(mode: str, size: int, peers: int, rounds: int = 20) -> float:
    """CPU seconds per datagram to drain a queue filled beforehand (no loop, no flooder)."""
    per_peer = 4096 // peers  # 4096 datagrams queued per round: well inside a 4 MiB receive buffer
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        _sockopts.set_rcvbuf(sock, 1 << 22)
        sock.bind(("127.0.0.1", 0))
        dest = sock.getsockname()
        senders = []
        for _ in range(peers):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.1", 0))
            senders.append(sender)
        try:
            sink = Sink()
            read = c_reader(sock, sink) if mode == "c" else make_reader(mode, sock, sink)
            pairs = [(b"x" * size, dest)] * per_peer
            spent = 0.0
            total = 0
            for _ in range(rounds):
                for sender in senders:
                    _core.send_pairs(sender, pairs, 0)
                before = sink.counters.datagrams_in
                start = time.thread_time()
                while True:
                    seen = sink.counters.datagrams_in
                    read()
                    if sink.counters.datagrams_in == seen:  # drained (or the kernel dropped some)
                        break
                spent += time.thread_time() - start
                total += sink.counters.datagrams_in - before
            return spent / total
        finally:
            for sender in senders:
                sender.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--prefilled", action="store_true", help="drain a filled queue, timed in CPU time")
    parser.add_argument("--modes", default="python,compiled,python-batch,compiled-batch,echo-python,echo-compiled")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.size}-byte datagrams from {args.peers} peers, "
          f"{args.seconds:g} s per run")
    if args.prefilled:
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                cost = prefilled(mode, args.size, args.peers)
                print(f"{mode:15s} {cost * 1e9:6.0f} ns CPU per datagram ({1 / cost / 1e3:.0f} k/s on one core)",
                      flush=True)
        return 0
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            rate, offered = uvloop.run(measure(mode, args.seconds, args.size, args.peers))
            print(f"{mode:15s} {rate / 1e3:8.0f} k datagrams/s delivered (flooder offered {offered / 1e3:.0f} k/s)",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
