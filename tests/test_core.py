"""The compiled I/O core (``udpio._core``) against SEAMS.md's contracts, on real loopback sockets.

The Receiver is driven the way the transport drives a receive strategy: a readiness wait (``select``),
then ``read_event()``. Loopback delivers a datagram into the receiving socket's queue before ``sendto``
returns, so a test that sends first and reads after sees everything queued (as tests/test_fastpath.py
relies on too). Every wait is bounded and fails the test when it expires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from udpio import LocalAddress, _sockopts
from udpio._counters import Counters
from udpio._limits import BATCH_BYTES, GSO_MAX_SEGMENTS, MAX_DATAGRAMS_PER_EVENT, MAX_PAYLOAD_IPV4, RECV_BUFFER_SIZE

if os.environ.get("UDPIO_NO_EXTENSIONS"):
    pytest.skip("UDPIO_NO_EXTENSIONS is set: this run is the pure-Python path's", allow_module_level=True)
core = pytest.importorskip("udpio._core", reason="the compiled I/O core is not built here")

LO4 = "127.0.0.1"
SOURCE = Path(__file__).resolve().parent.parent / "udpio" / "_core.c"


@dataclasses.dataclass(frozen=True)
class Limits:
    """SEAMS.md's ``ReceiveLimits``: ``recv_size`` is ``max_size + 1``, or RECV_BUFFER_SIZE without one."""

    max_size: int | None = None
    per_event: int = MAX_DATAGRAMS_PER_EVENT
    batch_bytes: int = BATCH_BYTES

    @property
    def recv_size(self) -> int:
        return RECV_BUFFER_SIZE if self.max_size is None else self.max_size + 1


class Sink:
    """A ReceiveSink that records what it is given."""

    def __init__(self, *, end_on_error: bool = False) -> None:
        self.counters = Counters()
        self.receive_errors: list[OSError] = []
        self.failures: list[tuple[Exception, object]] = []
        self.end_on_error = end_on_error
        self.on_failure: Callable[[Exception], None] | None = None

    def receive_error(self, exc: OSError) -> bool:
        self.receive_errors.append(exc)
        return self.end_on_error

    def handler_failed(self, exc: Exception, addr: object) -> None:
        self.counters.handler_errors += 1
        self.failures.append((exc, addr))
        if self.on_failure is not None:
            self.on_failure(exc)


class Recorder:
    """Both handler kinds; records every datagram (keeping the bytes objects) and every list."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.lists: list[list[tuple[bytes, Any]]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.lists.append(batch)
        self.got.extend(batch)


def receiver_for(
    sink: Sink, sock: socket.socket, handler: Any, limits: Limits = Limits(), *, batch: bool = False, **kw: Any
) -> Any:
    key = "datagrams_received" if batch else "datagram_received"
    return core.Receiver(sink, sock.fileno(), limits, **{key: handler}, **kw)


@contextlib.contextmanager
def udp_pair(family: int, host: str, rcvbuf: int = 1 << 22) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(receiving socket, non-blocking, big buffer; sending socket), both bound on loopback."""
    with socket.socket(family, socket.SOCK_DGRAM) as rx, socket.socket(family, socket.SOCK_DGRAM) as tx:
        rx.setblocking(False)
        _sockopts.set_rcvbuf(rx, rcvbuf)
        rx.bind((host, 0))
        tx.bind((host, 0))
        tx.settimeout(5)
        yield rx, tx


def pump(receiver: Any, sock: socket.socket, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Readiness wait + read_event until ``done()``; fails if that takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "timed out waiting for deliveries"
        select.select([sock], [], [], remaining)
        receiver.read_event()


def recvfrom_address(family: int, host: str, tx: socket.socket) -> Any:
    """The address socket.recvfrom reports for datagrams from ``tx`` (the reference the core must match)."""
    with socket.socket(family, socket.SOCK_DGRAM) as ref:
        ref.bind((host, 0))
        ref.settimeout(5)
        tx.sendto(b"ref", ref.getsockname())
        return ref.recvfrom(16)[1]


# -- the build ----------------------------------------------------------------------------------


def test_constants_agree_with_the_python_side() -> None:
    assert core.GSO_MAX_BYTES == MAX_PAYLOAD_IPV4
    assert core.GSO_MAX_SEGMENTS == GSO_MAX_SEGMENTS
    assert core.MAX_BUFFER_SIZE >= RECV_BUFFER_SIZE
    assert core.RECV_BATCH <= MAX_DATAGRAMS_PER_EVENT


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc here")
@pytest.mark.parametrize("flags", [["-O2"], ["-O0", "-g"]], ids=["O2", "O0"])
def test_the_c_source_compiles_without_a_single_warning(tmp_path: Path, flags: list[str]) -> None:
    """Stricter than the shipped build (-Wall only): every warning of -Wall -Wextra is an error here."""
    include = sysconfig.get_paths()["include"]
    command = ["gcc", *flags, "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes",
               "-fPIC", "-shared", f"-I{include}", str(SOURCE), "-o", str(tmp_path / "core.so")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


# -- receiving ------------------------------------------------------------------------------------


def test_datagrams_and_addresses_are_exactly_what_recvfrom_gives(family: int, host: str) -> None:
    with udp_pair(family, host) as (rx, tx):
        payloads = [b"", b"x", b"hello", bytes(range(256)) * 4, b"\0" * 1500, os.urandom(9000)]
        expected_addr = recvfrom_address(family, host, tx)
        for data in payloads:
            tx.sendto(data, rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        pump(receiver, rx, lambda: len(rec.got) == len(payloads))
        assert [data for data, _ in rec.got] == payloads
        assert all(type(data) is bytes for data, _ in rec.got)
        assert {addr for _, addr in rec.got} == {expected_addr}
        assert len(expected_addr) == (2 if family == socket.AF_INET else 4)
        assert sink.counters.datagrams_in == len(payloads)
        assert sink.counters.bytes_in == sum(map(len, payloads))
        assert sink.receive_errors == sink.failures == []


def test_many_peers_each_get_their_own_address(family: int, host: str) -> None:
    """More peers than the address cache has slots: every tuple still names its own sender."""
    with udp_pair(family, host) as (rx, _), contextlib.ExitStack() as stack:
        peers = []
        for _ in range(300):
            peer = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            peer.bind((host, 0))
            peers.append(peer)
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        for round_ in range(2):  # the second round finds (most of) them cached
            for peer in peers:
                peer.sendto(str(peer.getsockname()[1]).encode(), rx.getsockname())
            pump(receiver, rx, lambda r=round_: len(rec.got) == (r + 1) * len(peers))
        for data, addr in rec.got:
            assert addr[:2] == (host, int(data))
        assert sink.counters.datagrams_in == 600


def test_ipv4_mapped_senders_read_as_python_writes_them() -> None:
    """A dual-stack IPv6 socket sees an IPv4 peer as ::ffff:127.0.0.1, 4-tuple, as recvfrom shows it."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as ref:
        for s in (rx, ref):
            _sockopts.set_v6only(s, False)
            s.bind(("::ffff:127.0.0.1", 0))
        rx.setblocking(False)
        ref.settimeout(5)
        tx.bind(("127.0.0.1", 0))
        tx.sendto(b"ref", ("127.0.0.1", ref.getsockname()[1]))
        expected = ref.recvfrom(16)[1]
        tx.sendto(b"mapped", ("127.0.0.1", rx.getsockname()[1]))
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert rec.got == [(b"mapped", expected)]
        assert expected[0] == "::ffff:127.0.0.1"


def test_batches_are_lists_of_about_batch_bytes_counted_before_delivery(family: int, host: str) -> None:
    with udp_pair(family, host) as (rx, tx):
        payloads = [bytes([i]) * 700 for i in range(200)]
        for data in payloads:
            tx.sendto(data, rx.getsockname())
        sink = Sink()
        seen_counts: list[int] = []
        lists: list[list[tuple[bytes, Any]]] = []

        def many(batch: list[tuple[bytes, Any]]) -> None:
            # The counters already include this list when it is delivered (the Python path's order).
            seen_counts.append(sink.counters.datagrams_in)
            lists.append(batch)

        receiver = receiver_for(sink, rx, many, Limits(batch_bytes=4096), batch=True)
        pump(receiver, rx, lambda: sum(map(len, lists)) == len(payloads))
        assert [data for batch in lists for data, _ in batch] == payloads
        assert all(type(batch) is list and all(type(item) is tuple for item in batch) for batch in lists)
        assert max(sum(len(d) for d, _ in batch) for batch in lists) <= 4096 + 700
        assert seen_counts == [sum(map(len, lists[: i + 1])) for i in range(len(lists))]
        assert sink.counters.bytes_in == 700 * 200


def test_at_most_per_event_datagrams_per_read_event() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for i in range(10):
            tx.sendto(bytes([i]), rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received, Limits(per_event=3))
        receiver.read_event()
        assert [d for d, _ in rec.got] == [b"\0", b"\1", b"\2"]
        assert sink.counters.datagrams_in == 3
        pump(receiver, rx, lambda: len(rec.got) == 10)
        assert [d for d, _ in rec.got] == [bytes([i]) for i in range(10)]


def test_an_empty_socket_ends_the_event_quietly() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, _):
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        receiver.read_event()
        assert rec.got == [] and sink.receive_errors == [] and sink.counters.datagrams_in == 0


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_oversize_and_truncated_datagrams_are_counted_never_delivered(batch: bool) -> None:
    host = LO4
    """max_size 100: 101 bytes is read whole (recv_size) and dropped; 5000 bytes is cut by the kernel
    (MSG_TRUNC) and dropped; zero-length and exactly-max datagrams are delivered."""
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        sizes = [0, 100, 101, 5000, 1, 65507, 99]
        for size in sizes:
            tx.sendto(b"z" * size, rx.getsockname())
        sink, rec = Sink(), Recorder()
        handler = rec.datagrams_received if batch else rec.datagram_received
        receiver = receiver_for(sink, rx, handler, Limits(max_size=100), batch=batch)
        pump(receiver, rx, lambda: sink.counters.datagrams_in + sink.counters.dropped_oversize == len(sizes))
        assert [len(d) for d, _ in rec.got] == [0, 100, 1, 99]
        assert sink.counters.dropped_oversize == 3
        assert sink.counters.bytes_in == 200


def test_a_larger_buffer_still_applies_max_size() -> None:
    host = LO4
    """buffer_size (GRO's 64 KiB) above recv_size: max_size, not the buffer, decides."""
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for size in (10, 11, 3000):
            tx.sendto(b"q" * size, rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received, Limits(max_size=10), buffer_size=RECV_BUFFER_SIZE)
        pump(receiver, rx, lambda: sink.counters.datagrams_in + sink.counters.dropped_oversize == 3)
        assert [len(d) for d, _ in rec.got] == [10]
        assert sink.counters.dropped_oversize == 2


@contextlib.contextmanager
def refused(family: int, host: str, recverr: bool = False) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(receiving socket connected to a port nobody listens on, with an ECONNREFUSED pending; a socket
    bound to that port again, to send to it from its peer's address). ``recverr``: IP_RECVERR on, so the
    error also sits on the socket's error queue (ip(7))."""
    with socket.socket(family, socket.SOCK_DGRAM) as gone:
        gone.bind((host, 0))
        peer_addr = gone.getsockname()
    with udp_pair(family, host) as (rx, _):
        if recverr:
            if family == socket.AF_INET:
                rx.setsockopt(socket.IPPROTO_IP, _sockopts.IP_RECVERR, 1)
            else:
                rx.setsockopt(socket.IPPROTO_IPV6, _sockopts.IPV6_RECVERR, 1)
        rx.connect(peer_addr)
        rx.send(b"to nobody")  # ICMP port unreachable comes back; Linux queues ECONNREFUSED (udp(7))
        # The ICMP error is delivered in the same call on loopback; wait for it as POLLERR.
        poller = select.poll()
        poller.register(rx, select.POLLERR)
        assert poller.poll(5000), "no ICMP error came back"
        with socket.socket(family, socket.SOCK_DGRAM) as peer:
            peer.bind(peer_addr)
            yield rx, peer


@pytest.mark.parametrize("recverr", [False, True], ids=["plain", "IP_RECVERR"])
@pytest.mark.parametrize("end_on_error", [False, True], ids=["read-on", "end-event"])
def test_icmp_errors_go_to_receive_error_and_reading_goes_on(
    family: int, host: str, end_on_error: bool, recverr: bool
) -> None:
    with refused(family, host, recverr) as (rx, peer):
        peer.sendto(b"after", rx.getsockname())
        sink, rec = Sink(end_on_error=end_on_error), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        receiver.read_event()
        assert len(sink.receive_errors) == 1
        exc = sink.receive_errors[0]
        assert type(exc) is ConnectionRefusedError and exc.errno == errno.ECONNREFUSED
        # True from receive_error ends the event; the datagram waits for the next one.
        assert rec.got == ([] if end_on_error else [(b"after", peer.getsockname())])
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert len(sink.receive_errors) == 1
        if recverr:  # the error queue is the sink's to read (the transport drains it in receive_error)
            _, ancdata, _, _ = rx.recvmsg(1, _sockopts.ERRQUEUE_SPACE, _sockopts.MSG_ERRQUEUE)
            assert [_sockopts.parse_icmp_error(*item) for item in ancdata] == [errno.ECONNREFUSED]


def test_a_closed_descriptor_is_routed_to_receive_error() -> None:
    with udp_pair(socket.AF_INET, "127.0.0.1") as (rx, _):
        sink = Sink(end_on_error=True)
        dup = os.dup(rx.fileno())
        receiver = core.Receiver(sink, dup, Limits(), datagram_received=Recorder().datagram_received)
        os.close(dup)
        receiver.read_event()
        assert [type(e) for e in sink.receive_errors] == [OSError]
        assert sink.receive_errors[0].errno == errno.EBADF


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_handler_exceptions_go_to_handler_failed_and_delivery_goes_on(batch: bool) -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for i in range(6):
            tx.sendto(bytes([i]), rx.getsockname())
        sink = Sink()
        calls: list[object] = []
        contexts: list[object] = []
        sink.on_failure = lambda exc: contexts.append(sys.exc_info()[1])

        def handler(*args: Any) -> None:
            calls.append(args)
            raise ValueError(f"bad {len(calls)}")

        receiver = receiver_for(sink, rx, handler, Limits(batch_bytes=2), batch=batch)
        pump(receiver, rx, lambda: sink.counters.datagrams_in == 6)
        assert len(sink.failures) == len(calls) == (3 if batch else 6)
        for exc, addr in sink.failures:
            assert type(exc) is ValueError
            assert exc.__traceback__ is not None  # the handler's frame is there for the log
            assert addr == tx.getsockname()
        # handler_failed runs as inside `except`: sys.exc_info() is the handler's exception.
        assert contexts == [exc for exc, _ in sink.failures]
        assert sys.exc_info() == (None, None, None)


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_base_exceptions_propagate_with_the_counters_up_to_date(batch: bool) -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for i in range(5):
            tx.sendto(bytes([i]), rx.getsockname())
        sink = Sink()
        seen: list[object] = []

        def handler(arg: Any, *_: Any) -> None:
            seen.append(arg)
            if len(seen) == 2:
                raise KeyboardInterrupt

        receiver = receiver_for(sink, rx, handler, Limits(batch_bytes=1), batch=batch)
        with pytest.raises(KeyboardInterrupt):
            receiver.read_event()
        assert sink.failures == []
        # Two delivered; the others read by the same recvmmsg are lost with the event (counted as received and
        # dropped on close), and what it did not read is still queued: nothing vanishes uncounted.
        left = len(drain_socket(rx))
        assert sink.counters.datagrams_in + left == 5
        assert sink.counters.dropped_on_close == sink.counters.datagrams_in - 2 > 0


def test_an_exception_in_handler_failed_propagates_chained_to_the_handlers() -> None:
    with udp_pair(socket.AF_INET, "127.0.0.1") as (rx, tx):
        tx.sendto(b"boom", rx.getsockname())
        sink = Sink()

        def broken_sink(exc: Exception) -> None:
            raise RuntimeError("the sink broke")

        sink.on_failure = broken_sink

        def handler(data: bytes, addr: Any) -> None:
            raise ValueError("handler")

        receiver = receiver_for(sink, rx, handler)
        select.select([rx], [], [], 5)
        with pytest.raises(RuntimeError, match="the sink broke") as info:
            receiver.read_event()
        assert isinstance(info.value.__context__, ValueError)
        assert sink.counters.datagrams_in == 1


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_stop_mid_event_delivers_nothing_more_and_never_reads_again(batch: bool) -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for i in range(20):
            tx.sendto(bytes([i]) * 10, rx.getsockname())
        sink = Sink()
        calls: list[object] = []
        holder: list[Any] = []

        def handler(*args: Any) -> None:
            calls.append(args)
            if len(calls) == 3:
                holder[0].stop()

        receiver = receiver_for(sink, rx, handler, Limits(batch_bytes=20), batch=batch)
        holder.append(receiver)
        select.select([rx], [], [], 5)
        receiver.read_event()
        assert len(calls) == 3 and receiver.stopped
        # What was read and not delivered is counted as received and dropped on close.
        delivered = 6 if batch else 3
        c = sink.counters
        assert c.datagrams_in - c.dropped_on_close == delivered
        assert c.dropped_on_close > 0  # read by the last recvmmsg, never delivered
        assert c.bytes_in == 10 * c.datagrams_in
        tx.sendto(b"marker", rx.getsockname())
        receiver.read_event()
        assert len(calls) == 3
        # The Receiver did not read: the marker is still in the socket, last of what is left.
        left = []
        with contextlib.suppress(BlockingIOError):
            while True:
                left.append(rx.recv(100))
        assert left[-1] == b"marker"
        assert c.datagrams_in + len(left) - 1 == 20  # what no recvmmsg read is still queued: none lost


def test_a_reentrant_read_event_is_a_no_op() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        for i in range(4):
            tx.sendto(bytes([i]), rx.getsockname())
        got: list[bytes] = []
        holder: list[Any] = []

        def handler(data: bytes, addr: Any) -> None:
            got.append(data)
            holder[0].read_event()  # must not deliver out of order or recurse

        receiver = receiver_for(Sink(), rx, handler)
        holder.append(receiver)
        pump(receiver, rx, lambda: len(got) == 4)
        assert got == [bytes([i]) for i in range(4)]


def test_gro_trains_are_split_at_the_segment_size(family: int, host: str) -> None:
    with udp_pair(family, host) as (rx, tx):
        if not _sockopts.enable_gro(rx) or not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GRO/GSO")
        train = b"".join(bytes([i]) * 1000 for i in range(10)) + b"tail"
        tx.sendmsg([train], [_sockopts.gso_cmsg(1000)], 0, rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received, Limits(max_size=1000), buffer_size=RECV_BUFFER_SIZE)
        pump(receiver, rx, lambda: len(rec.got) == 11)
        assert [d for d, _ in rec.got] == [bytes([i]) * 1000 for i in range(10)] + [b"tail"]
        assert sink.counters.gro_batches >= 1, "the kernel delivered the GSO train without coalescing it"
        assert sink.counters.datagrams_in == 11


def test_gro_pieces_above_max_size_are_counted() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        if not _sockopts.enable_gro(rx) or not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GRO/GSO")
        tx.sendmsg([b"a" * 500 * 4], [_sockopts.gso_cmsg(500)], 0, rx.getsockname())
        tx.sendto(b"fits", rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received, Limits(max_size=100), buffer_size=RECV_BUFFER_SIZE)
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert [d for d, _ in rec.got] == [b"fits"]
        assert sink.counters.dropped_oversize == 4


def test_stop_inside_a_gro_train_counts_the_rest_as_dropped_on_close() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host) as (rx, tx):
        if not _sockopts.enable_gro(rx) or not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GRO/GSO")
        tx.sendmsg([b"g" * 100 * 10], [_sockopts.gso_cmsg(100)], 0, rx.getsockname())
        sink = Sink()
        holder: list[Any] = []
        got: list[bytes] = []

        def handler(data: bytes, addr: Any) -> None:
            got.append(data)
            if len(got) == 3:
                holder[0].stop()

        receiver = receiver_for(sink, rx, handler, buffer_size=RECV_BUFFER_SIZE)
        holder.append(receiver)
        pump(receiver, rx, lambda: receiver.stopped)
        c = sink.counters
        assert got == [b"g" * 100] * 3
        if c.gro_batches:  # coalesced: the other 7 pieces were read with the first three
            assert (c.datagrams_in, c.dropped_on_close, c.bytes_in) == (10, 7, 1000)


def test_kernel_drops_are_read_from_so_rxq_ovfl() -> None:
    host = LO4
    with udp_pair(socket.AF_INET, host, rcvbuf=4096) as (rx, tx):
        if not _sockopts.enable_rxq_ovfl(rx):
            pytest.skip("kernel without SO_RXQ_OVFL")
        for _ in range(200):  # a 4 KiB buffer holds a handful: the rest are dropped by the kernel
            tx.sendto(b"d" * 512, rx.getsockname())
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        pump(receiver, rx, lambda: len(rec.got) > 0)
        while len(drain_socket(rx)) > 0:
            pass
        # Each datagram carries the drop count as of its queueing (socket(7)): the next one tells.
        tx.sendto(b"after the flood", rx.getsockname())
        pump(receiver, rx, lambda: rec.got[-1][0] == b"after the flood")
        assert sink.counters.kernel_drops > 0
        assert sink.counters.kernel_drops + len(rec.got) <= 201


def test_a_failing_sink_propagates_out_of_read_event() -> None:
    """Errors raised by the transport's own side (receive_error, the counters) are bugs to surface, not to
    swallow: they leave read_event, after the datagrams already delivered."""
    with refused(socket.AF_INET, LO4) as (rx, _):

        class Broken(Sink):
            def receive_error(self, exc: OSError) -> bool:
                raise RuntimeError("sink failed") from exc

        receiver = receiver_for(Broken(), rx, Recorder().datagram_received)
        with pytest.raises(RuntimeError, match="sink failed") as info:
            receiver.read_event()
        assert isinstance(info.value.__cause__, ConnectionRefusedError)

    with udp_pair(socket.AF_INET, LO4) as (rx, tx):
        tx.sendto(b"x", rx.getsockname())
        sink, rec = Sink(), Recorder()
        sink.counters = object()  # type: ignore[assignment]  # no datagrams_in: adding to it fails
        receiver = receiver_for(sink, rx, rec.datagram_received)
        select.select([rx], [], [], 5)
        with pytest.raises(AttributeError, match="datagrams_in"):
            receiver.read_event()
        assert rec.got == [(b"x", tx.getsockname())]


def test_counters_that_fail_while_an_exception_leaves_are_reported_as_unraisable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler's KeyboardInterrupt keeps propagating; the counters' own failure is not lost either."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with udp_pair(socket.AF_INET, LO4) as (rx, tx):
        tx.sendto(b"x", rx.getsockname())
        sink = Sink()
        sink.counters = object()  # type: ignore[assignment]

        def handler(data: bytes, addr: Any) -> None:
            raise KeyboardInterrupt

        receiver = receiver_for(sink, rx, handler)
        select.select([rx], [], [], 5)
        with pytest.raises(KeyboardInterrupt):
            receiver.read_event()
    assert [type(u.exc_value) for u in unraisable] == [AttributeError]


# -- local addresses (IP_PKTINFO / IPV6_PKTINFO) ------------------------------------------------------


LO = socket.if_nametoindex("lo")
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class LocalRecorder:
    """Both local-address handler kinds; records every (data, addr, local) and every list."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any, LocalAddress]] = []
        self.lists: list[list[tuple[bytes, Any, LocalAddress]]] = []

    def datagram_received_on(self, data: bytes, addr: Any, local: LocalAddress) -> None:
        self.got.append((data, addr, local))

    def datagrams_received_on(self, batch: list[tuple[bytes, Any, LocalAddress]]) -> None:
        self.lists.append(batch)
        self.got.extend(batch)


def local_receiver(sink: Sink, sock: socket.socket, rec: LocalRecorder, batch: bool, **kw: Any) -> Any:
    if batch:
        return core.Receiver(sink, sock.fileno(), kw.pop("limits", Limits()),
                             datagrams_received_on=rec.datagrams_received_on, **kw)
    return core.Receiver(sink, sock.fileno(), kw.pop("limits", Limits()),
                         datagram_received_on=rec.datagram_received_on, **kw)


@contextlib.contextmanager
def wildcard_pair(
    family: int, host: str, *, dual_stack: bool = False, pktinfo: bool = True
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(receiving socket bound to the wildcard, non-blocking, local addresses on; sending socket on ``host``)."""
    with socket.socket(family, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET if dual_stack else family, socket.SOCK_DGRAM) as tx:
        rx.setblocking(False)
        _sockopts.set_rcvbuf(rx, 1 << 22)
        if family == socket.AF_INET6:
            _sockopts.set_v6only(rx, not dual_stack)
        rx.bind((WILDCARD[family], 0))
        if pktinfo:
            _sockopts.set_pktinfo(rx, True)
        tx.bind((host, 0))
        tx.settimeout(5)
        yield rx, tx


def targets_of(family: int) -> list[str]:
    # Linux answers for the whole of 127.0.0.0/8 on lo; IPv6 loopback has only ::1.
    return [f"127.0.0.{i}" for i in range(1, 41)] if family == socket.AF_INET else ["::1"]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_local_handlers_get_each_datagrams_local_address(family: int, host: str, batch: bool) -> None:
    """Forty local addresses (more than the Receiver's LocalAddress cache holds), two rounds: each datagram
    comes with the address it was sent to and lo's index, the same objects udpio.LocalAddress compares equal
    to; the address and data as without local addresses."""
    with wildcard_pair(family, host) as (rx, tx):
        port = rx.getsockname()[1]
        expected_addr = tx.getsockname() if family == socket.AF_INET else (*tx.getsockname()[:2], 0, 0)
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, batch, limits=Limits(batch_bytes=64))
        assert receiver.pktinfo and receiver.batch == batch
        targets = targets_of(family)
        for _ in range(2):
            for target in targets:
                tx.sendto(target.encode(), (target, port))
        pump(receiver, rx, lambda: len(rec.got) == 2 * len(targets))
        assert [data for data, _, _ in rec.got] == [t.encode() for t in targets] * 2
        assert {addr for _, addr, _ in rec.got} == {expected_addr}
        assert [local for _, _, local in rec.got] == [LocalAddress(t, LO) for t in targets] * 2
        assert all(type(local) is LocalAddress for _, _, local in rec.got)
        assert all(type(item) is tuple and len(item) == 3 for batch_ in rec.lists for item in batch_)
        if batch and family == socket.AF_INET:  # 80 datagrams of ~10 bytes, lists of 64 bytes
            assert len(rec.lists) > 1
        assert sink.counters.datagrams_in == 2 * len(targets)
        assert sink.counters.bytes_in == 2 * sum(map(len, map(str.encode, targets)))


def test_a_dual_stack_socket_reports_ipv4_local_addresses_mapped() -> None:
    """An IPv4 peer of a dual-stack socket brings IP_PKTINFO and IPV6_PKTINFO; the IPv4 one wins and reads
    ::ffff:127.0.0.2, as the socket writes its IPv4 peers; an IPv6 peer's reads ::1. A broadcast tells the two
    apart: IPV6_PKTINFO has the header's destination (the broadcast address), IP_PKTINFO's ipi_spec_dst the
    address of this host that answers for it."""
    with wildcard_pair(socket.AF_INET6, LO4, dual_stack=True) as (rx, tx4), \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx6:
        port = rx.getsockname()[1]
        tx6.bind(("::1", 0))
        tx4.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        tx4.sendto(b"v4", ("127.0.0.2", port))
        tx6.sendto(b"v6", ("::1", port))
        tx4.sendto(b"broadcast", ("127.255.255.255", port))
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, False)
        pump(receiver, rx, lambda: len(rec.got) == 3)
        v4_peer = ("::ffff:127.0.0.1", tx4.getsockname()[1], 0, 0)
        assert rec.got == [
            (b"v4", v4_peer, LocalAddress("::ffff:127.0.0.2", LO)),
            (b"v6", (*tx6.getsockname()[:2], 0, 0), LocalAddress("::1", LO)),
            (b"broadcast", v4_peer, LocalAddress("::ffff:127.0.0.1", LO)),
        ]


def test_local_addresses_match_the_python_strategys_reading(family: int, host: str) -> None:
    """The same datagrams read by the Python side (recvmsg + _sockopts.local_address, what the recvmsg
    strategies do) and by the Receiver give equal LocalAddress objects, including a datagram queued before
    the option was on (the kernel reports ipi_spec_dst 0 and index 0 then: the header's destination stands in
    for IPv4), and an IPv4 broadcast (the local address is ipi_spec_dst, the address the kernel would answer
    from, not the broadcast address in ipi_addr)."""
    with wildcard_pair(family, host, pktinfo=False) as (rx, tx), \
            wildcard_pair(family, host, pktinfo=False) as (ref, _):
        targets = targets_of(family)[:3]
        if family == socket.AF_INET:
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for sock in (rx, ref):
            tx.sendto(b"early", (targets[-1], sock.getsockname()[1]))
            _sockopts.set_pktinfo(sock, True)
            for target in targets:
                tx.sendto(target.encode(), (target, sock.getsockname()[1]))
            if family == socket.AF_INET:  # lo's broadcast address (the local table's "broadcast 127.255.255.255")
                tx.sendto(b"broadcast", ("127.255.255.255", sock.getsockname()[1]))
        count = len(targets) + (2 if family == socket.AF_INET else 1)
        expected = []
        space = socket.CMSG_SPACE(64)
        for _ in range(count):
            data, ancdata, _, addr = ref.recvmsg(100, space)
            locals_ = [_sockopts.local_address(level, cdata, family == socket.AF_INET6)
                       for level, kind, cdata in ancdata]
            assert len(locals_) == 1 and locals_[0] is not None
            expected.append((data, addr, locals_[0]))
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, True)
        pump(receiver, rx, lambda: len(rec.got) == count)
        assert rec.got == expected
        if family == socket.AF_INET:
            assert rec.got[0][2] == LocalAddress(targets[-1], 0)  # queued before: ipi_addr, no index
            assert rec.got[-1][0] == b"broadcast"
            assert rec.got[-1][2].host != "127.255.255.255"


def test_without_a_pktinfo_message_the_wildcard_stands_in(family: int, host: str) -> None:
    """The option off (a handler that takes local addresses on a socket nobody turned it on for): the local
    address is the family's wildcard, udpio._sockopts.UNKNOWN_LOCAL's (as the Python strategies give)."""
    with wildcard_pair(family, host, pktinfo=False) as (rx, tx):
        tx.sendto(b"x", (host, rx.getsockname()[1]))
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, False)
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert rec.got[0][2] == _sockopts.UNKNOWN_LOCAL[family] == LocalAddress(WILDCARD[family])


def test_plain_handlers_ignore_local_addresses_the_socket_carries() -> None:
    """The option on, a handler without local addresses (datagrams queued before set_protocol turned it off):
    delivered as (data, addr), the GRO segment size and drop counts still read (the control room fits all)."""
    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        tx.sendto(b"plain", ("127.0.0.2", rx.getsockname()[1]))
        sink, rec = Sink(), Recorder()
        receiver = receiver_for(sink, rx, rec.datagram_received)
        assert not receiver.pktinfo
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert rec.got == [(b"plain", tx.getsockname())]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_gro_trains_give_every_piece_the_trains_local_address(family: int, host: str, batch: bool) -> None:
    with wildcard_pair(family, host) as (rx, tx):
        if not _sockopts.enable_gro(rx) or not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GRO/GSO")
        target = targets_of(family)[1 if family == socket.AF_INET else 0]
        train = b"".join(bytes([i]) * 1000 for i in range(10)) + b"tail"
        tx.sendmsg([train], [_sockopts.gso_cmsg(1000)], 0, (target, rx.getsockname()[1]))
        tx.sendto(b"after", (host, rx.getsockname()[1]))
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, batch, limits=Limits(max_size=1000), buffer_size=RECV_BUFFER_SIZE)
        pump(receiver, rx, lambda: len(rec.got) == 12)
        assert [d for d, _, _ in rec.got] == [bytes([i]) * 1000 for i in range(10)] + [b"tail", b"after"]
        assert [local for _, _, local in rec.got] == [LocalAddress(target, LO)] * 11 + [LocalAddress(host, LO)]
        assert sink.counters.gro_batches >= 1, "the kernel delivered the GSO train without coalescing it"
        assert sink.counters.datagrams_in == 12


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_local_handler_errors_go_to_handler_failed_with_the_address(batch: bool) -> None:
    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        for i in range(6):
            tx.sendto(bytes([i]), ("127.0.0.2", rx.getsockname()[1]))
        sink = Sink()
        calls: list[tuple[Any, ...]] = []

        def handler(*args: Any) -> None:
            calls.append(args)
            raise ValueError(f"bad {len(calls)}")

        key = "datagrams_received_on" if batch else "datagram_received_on"
        receiver = core.Receiver(sink, rx.fileno(), Limits(batch_bytes=2), **{key: handler})
        pump(receiver, rx, lambda: sink.counters.datagrams_in == 6)
        assert len(sink.failures) == len(calls) == (3 if batch else 6)
        assert all(type(exc) is ValueError and addr == tx.getsockname() for exc, addr in sink.failures)
        if not batch:
            assert all(local == LocalAddress("127.0.0.2", LO) for _, _, local in calls)


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_stop_from_a_local_handler_counts_the_rest_as_dropped_on_close(batch: bool) -> None:
    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        for i in range(20):
            tx.sendto(bytes([i]) * 10, ("127.0.0.2", rx.getsockname()[1]))
        sink = Sink()
        calls: list[object] = []
        holder: list[Any] = []

        def handler(*args: Any) -> None:
            calls.append(args)
            if len(calls) == 3:
                holder[0].stop()

        key = "datagrams_received_on" if batch else "datagram_received_on"
        receiver = core.Receiver(sink, rx.fileno(), Limits(batch_bytes=20), **{key: handler})
        holder.append(receiver)
        select.select([rx], [], [], 5)
        receiver.read_event()
        assert len(calls) == 3 and receiver.stopped
        c = sink.counters
        assert c.datagrams_in - c.dropped_on_close == (6 if batch else 3)
        assert c.dropped_on_close > 0
        assert c.bytes_in == 10 * c.datagrams_in
        assert c.datagrams_in + len(drain_socket(rx)) == 20


def test_kernel_drops_are_read_alongside_local_addresses() -> None:
    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        _sockopts.set_rcvbuf(rx, 4096)
        if not _sockopts.enable_rxq_ovfl(rx):
            pytest.skip("kernel without SO_RXQ_OVFL")
        dest = ("127.0.0.2", rx.getsockname()[1])
        for _ in range(200):
            tx.sendto(b"d" * 512, dest)
        while len(drain_socket(rx)) > 0:
            pass
        tx.sendto(b"after the flood", dest)
        sink, rec = Sink(), LocalRecorder()
        receiver = local_receiver(sink, rx, rec, False)
        pump(receiver, rx, lambda: len(rec.got) == 1)
        assert rec.got[0][0] == b"after the flood" and rec.got[0][2] == LocalAddress("127.0.0.2", LO)
        assert sink.counters.kernel_drops > 0


def test_local_handlers_check_their_arguments() -> None:
    sink, rec, plain = Sink(), LocalRecorder(), Recorder()
    with pytest.raises(TypeError, match="exactly one of datagram_received, datagrams_received, datagram_rec"):
        core.Receiver(sink, 0, Limits(), datagram_received=plain.datagram_received,
                      datagram_received_on=rec.datagram_received_on)
    with pytest.raises(TypeError, match="exactly one of"):
        core.Receiver(sink, 0, Limits(), datagram_received_on=rec.datagram_received_on,
                      datagrams_received_on=rec.datagrams_received_on)
    with pytest.raises(TypeError, match="must be callable, got 'x'"):
        core.Receiver(sink, 0, Limits(), datagrams_received_on="x")
    read, write = os.pipe()
    try:
        with pytest.raises(ValueError, match=rf"fileno must be an IPv4 or IPv6 socket .*, got {read} \(.*socket"):
            core.Receiver(sink, read, Limits(), datagram_received_on=rec.datagram_received_on)
    finally:
        os.close(read)
        os.close(write)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        with pytest.raises(ValueError, match=rf"got {unix.fileno()} \(family {socket.AF_UNIX}\)"):
            core.Receiver(sink, unix.fileno(), Limits(), datagram_received_on=rec.datagram_received_on)
        # Without local addresses the family is not asked for (the descriptor is only read from).
        assert not core.Receiver(sink, unix.fileno(), Limits(), datagram_received=plain.datagram_received).pktinfo


def test_local_receivers_release_their_references() -> None:
    """The cached LocalAddress objects and the handler go with the Receiver; a transport-like cycle through a
    local handler is collected."""

    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.counters = Counters()
            self.strategy = core.Receiver(self, sock.fileno(), Limits(), datagram_received_on=self.on)
            self.got: list[LocalAddress] = []

        def receive_error(self, exc: OSError) -> bool:
            return False

        def handler_failed(self, exc: Exception, addr: object) -> None:
            pass

        def on(self, data: bytes, addr: Any, local: LocalAddress) -> None:
            self.got.append(local)

    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        transport = Transport(rx)
        tx.sendto(b"one", ("127.0.0.2", rx.getsockname()[1]))
        pump(transport.strategy, rx, lambda t=transport: len(t.got) == 1)
        local = transport.got[0]
        held = sys.getrefcount(local)
        alive = weakref.ref(transport)
        del transport
        gc.collect()
        assert alive() is None
        assert sys.getrefcount(local) < held  # the Receiver's cache let go of it too


# -- construction and lifetime -------------------------------------------------------------------


def test_construction_checks_its_arguments() -> None:
    sink, rec = Sink(), Recorder()
    with pytest.raises(TypeError, match="exactly one of"):
        core.Receiver(sink, 0, Limits())
    with pytest.raises(TypeError, match="exactly one of"):
        core.Receiver(sink, 0, Limits(), datagram_received=rec.datagram_received,
                      datagrams_received=rec.datagrams_received)
    with pytest.raises(TypeError, match="must be callable, got 3"):
        core.Receiver(sink, 0, Limits(), datagram_received=3)
    with pytest.raises(ValueError, match=r"fileno must be .*, got -1"):
        core.Receiver(sink, -1, Limits(), datagram_received=rec.datagram_received)
    with pytest.raises(ValueError, match=r"limits.per_event must be an int in 1\.\.\d+, got 0"):
        core.Receiver(sink, 0, Limits(per_event=0), datagram_received=rec.datagram_received)
    with pytest.raises(ValueError, match=r"limits.recv_size must be an int in 1\.\.65536, got 70001"):
        core.Receiver(sink, 0, Limits(max_size=70000), datagram_received=rec.datagram_received)
    with pytest.raises(ValueError, match=r"buffer_size must be in .*, got 100"):
        core.Receiver(sink, 0, Limits(max_size=1000), datagram_received=rec.datagram_received, buffer_size=100)
    with pytest.raises(AttributeError):
        core.Receiver(sink, 0, object(), datagram_received=rec.datagram_received)


def test_references_are_released_and_cycles_collected() -> None:
    host = LO4
    """A Receiver references its sink and handler; the transport references the Receiver: a cycle the
    garbage collector must be able to break (tp_traverse), and nothing may stay referenced after."""

    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.counters = Counters()
            self.strategy = core.Receiver(self, sock.fileno(), Limits(), datagram_received=self.datagram_received)
            self.got: list[bytes] = []

        def receive_error(self, exc: OSError) -> bool:
            return False

        def handler_failed(self, exc: Exception, addr: object) -> None:
            pass

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.append(data)

    with udp_pair(socket.AF_INET, host) as (rx, tx):
        transport = Transport(rx)
        tx.sendto(b"one", rx.getsockname())
        pump(transport.strategy, rx, lambda t=transport: t.got == [b"one"])
        alive = weakref.ref(transport)
        del transport
        gc.collect()
        assert alive() is None

        sink, rec = Sink(), Recorder()
        before = (sys.getrefcount(sink), sys.getrefcount(rec))
        receiver = receiver_for(sink, rx, rec.datagram_received)
        receiver.stop()  # lets go of sink and handler at once
        assert (sys.getrefcount(sink), sys.getrefcount(rec)) == before
        del receiver
        assert (sys.getrefcount(sink), sys.getrefcount(rec)) == before


# -- send_pairs ------------------------------------------------------------------------------------


@contextlib.contextmanager
def receivers(family: int, host: str, count: int) -> Iterator[list[socket.socket]]:
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            _sockopts.set_rcvbuf(s, 1 << 22)
            s.bind((host, 0))
            s.setblocking(False)
            socks.append(s)
        yield socks


def drain_socket(sock: socket.socket) -> list[tuple[bytes, Any]]:
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recvfrom(70000))
    return got


def test_send_pairs_sends_every_pair_in_order_to_many_peers(family: int, host: str) -> None:
    with receivers(family, host, 5) as peers, socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.bind((host, 0))
        tx.setblocking(False)
        pairs: list[tuple[Any, Any]] = []
        for i in range(150):
            peer = peers[(i // 3) % len(peers)]  # runs of three to one peer, then the next
            data: Any = f"{i}:".encode() + b"p" * (i % 7)
            if i % 10 == 0:
                data = bytearray(data)
            elif i % 10 == 1:
                data = memoryview(data)
            pairs.append((data, peer.getsockname()))
        assert core.send_pairs(tx, pairs, 0) == len(pairs)
        for peer in peers:
            got = drain_socket(peer)
            assert [d for d, _ in got] == [bytes(d) for d, a in pairs if a == peer.getsockname()]
            assert {a for _, a in got} <= {tx.getsockname()}


def test_send_pairs_accepts_a_descriptor_and_a_start() -> None:
    host = LO4
    with receivers(socket.AF_INET, host, 1) as (peer,), socket.socket() as tcp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        del tcp
        pairs = [(bytes([i]), peer.getsockname()) for i in range(5)]
        assert core.send_pairs(tx.fileno(), pairs, 2) == 5
        assert core.send_pairs(tx, pairs, 5) == 5
        assert [d for d, _ in drain_socket(peer)] == [b"\2", b"\3", b"\4"]
        with pytest.raises(ValueError, match=r"start must be in 0\.\.5, got 6"):
            core.send_pairs(tx, pairs, 6)
        with pytest.raises(ValueError, match=r"start must be in 0\.\.5, got -1"):
            core.send_pairs(tx, pairs, -1)
        with pytest.raises(TypeError, match="pairs must be a sequence"):
            core.send_pairs(tx, 42, 0)
        with pytest.raises(TypeError, match="unexpected keyword argument 'fast'"):
            core.send_pairs(tx, pairs, 0, fast=True)


def test_send_pairs_on_a_closed_socket_sends_nothing_and_leaves_it_to_sendto() -> None:
    """A handler closed the socket under the transport (fileno() is -1): nothing is sent, no exception; the
    caller's sendto then meets EBADF and routes it (tests/test_resilience.py has the transport's side)."""
    with receivers(socket.AF_INET, LO4, 1) as (peer,):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.close()
        pairs = [(b"a", peer.getsockname()), (b"b", peer.getsockname())]
        assert core.send_pairs(tx, pairs, 1) == 1
        with pytest.raises(ValueError, match=r"start must be in 0\.\.2, got 3"):
            core.send_pairs(tx, pairs, 3)


def test_send_pairs_on_a_connected_socket_takes_none() -> None:
    host = LO4
    with receivers(socket.AF_INET, host, 1) as (peer,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(peer.getsockname())
        pairs = [(b"a", None), (b"b", None), (b"", None)]
        assert core.send_pairs(tx, pairs, 0) == 3
        assert [d for d, _ in drain_socket(peer)] == [b"a", b"b", b""]


@pytest.mark.parametrize(
    "bad",
    [
        ("text", None),  # not a buffer: sendto raises TypeError
        (b"x", ("localhost", 1)),  # a name: sendto resolves it
        (b"x", ("127.0.0.1", 70000)),  # sendto raises OverflowError
        (b"x", ("127.0.0.1",)),
        (b"x", ["127.0.0.1", 1]),
        [b"x", ("127.0.0.1", 1)],
        (memoryview(b"abcd")[::2], None),  # not contiguous
    ],
    ids=["str-data", "hostname", "port", "short-tuple", "list-dest", "list-pair", "strided"],
)
def test_send_pairs_stops_before_what_only_sendto_can_handle(bad: Any) -> None:
    host = LO4
    with receivers(socket.AF_INET, host, 1) as (peer,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        dest = peer.getsockname()
        if isinstance(bad, tuple) and bad[1] is None:
            bad = (bad[0], dest)
        pairs = [(b"1", dest), (b"2", dest), bad, (b"4", dest)]
        assert core.send_pairs(tx, pairs, 0) == 2
        assert [d for d, _ in drain_socket(peer)] == [b"1", b"2"]
        assert core.send_pairs(tx, pairs, 3) == 4


def test_send_pairs_ipv6_destinations_with_flowinfo_and_scope() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with receivers(socket.AF_INET6, "::1", 1) as (peer,), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
        port = peer.getsockname()[1]
        pairs = [(b"a", ("::1", port)), (b"b", ("::1", port, 0, 0)), (b"c", ("::1", port, 0x100000, 0)),
                 (b"d", ("127.0.0.1", port))]
        assert core.send_pairs(tx, pairs, 0) == 2  # flowinfo above 20 bits: sendto's OverflowError
        assert core.send_pairs(tx, pairs, 3) == 3  # an IPv4 literal on an IPv6 socket: sendto's error
        assert [d for d, _ in drain_socket(peer)] == [b"a", b"b"]


def test_send_pairs_leaves_the_failing_pair_to_sendto() -> None:
    host = LO4
    """EMSGSIZE (too big for IPv4): the pairs before it are sent, its index is returned, and sendto
    meets the same error."""
    with receivers(socket.AF_INET, host, 1) as (peer,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        dest = peer.getsockname()
        pairs = [(b"ok", dest), (b"x" * (MAX_PAYLOAD_IPV4 + 1), dest), (b"later", dest)]
        assert core.send_pairs(tx, pairs, 0) == 1
        with pytest.raises(OSError) as info:
            tx.sendto(*pairs[1])
        assert info.value.errno == errno.EMSGSIZE
        assert core.send_pairs(tx, pairs, 2) == 3
        assert [d for d, _ in drain_socket(peer)] == [b"ok", b"later"]


def test_send_pairs_leaves_a_pending_icmp_error_to_sendto(family: int, host: str) -> None:
    """sendmmsg would consume the error (and lose it past its first message): nothing is sent, and the
    caller's send meets ECONNREFUSED."""
    with refused(family, host) as (rx, _):
        assert core.send_pairs(rx, [(b"a", None), (b"b", None)], 0) == 0
        with pytest.raises(ConnectionRefusedError):
            rx.send(b"a")
        assert core.send_pairs(rx, [(b"a", None), (b"b", None)], 1) == 2


def _gro_receiver(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    _sockopts.set_rcvbuf(s, 1 << 22)
    if not _sockopts.enable_gro(s):
        s.close()
        pytest.skip("kernel without UDP_GRO")
    return s


def _receive_trains(sock: socket.socket) -> list[tuple[int, int]]:
    """(length, GRO segment size or 0) of each receive."""
    trains = []
    with contextlib.suppress(BlockingIOError):
        while True:
            data, anc, _, _ = sock.recvmsg(70000, socket.CMSG_SPACE(4))
            segment = 0
            for level, kind, cdata in anc:
                if level == _sockopts.SOL_UDP and kind == _sockopts.UDP_GRO:
                    segment = int.from_bytes(cdata[:4], sys.byteorder)
            trains.append((len(data), segment))
    return trains


def test_send_pairs_joins_runs_to_one_destination_into_gso_trains(family: int, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as tx, contextlib.closing(_gro_receiver(family, host)) as rx:
        tx.bind((host, 0))
        if not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GSO")
        dest = rx.getsockname()
        # 5 x 1000 + a shorter last one: one train; then 70 x 100: 64 (the segment limit) + 6;
        # then a zero-length datagram on its own, and a larger one that starts a new run.
        sizes = [1000] * 5 + [10] + [100] * 70 + [0] + [2000, 2000]
        pairs = [(bytes([i % 256]) * size, dest) for i, size in enumerate(sizes)]
        assert core.send_pairs(tx, pairs, 0) == len(pairs)
        trains = _receive_trains(rx)
        assert trains == [(5010, 1000), (6400, 100), (600, 100), (0, 0), (4000, 2000)]
        # With gso=False every datagram is its own message.
        assert core.send_pairs(tx, pairs[:6], 0, gso=False) == 6
        assert _receive_trains(rx) == [(1000, 0)] * 5 + [(10, 0)]


def test_send_pairs_gso_trains_carry_the_right_bytes() -> None:
    host = LO4
    """Segmented by the kernel, each datagram of a run arrives whole and in order at a plain receiver."""
    with receivers(socket.AF_INET, host, 2) as (a, b), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        pairs = [(os.urandom(1200), a.getsockname()) for _ in range(100)] + [(os.urandom(1200), b.getsockname())]
        pairs += [(os.urandom(1200), a.getsockname()) for _ in range(3)]
        assert core.send_pairs(tx, pairs, 0) == len(pairs)
        assert [d for d, _ in drain_socket(a)] == [d for d, dest in pairs if dest == a.getsockname()]
        assert [d for d, _ in drain_socket(b)] == [pairs[100][0]]


# -- send_pairs with sources ((data, dest, source) triples) -----------------------------------------


def test_send_pairs_sends_triples_from_their_sources(family: int, host: str) -> None:
    """Triples carry the control message of _sockopts.pktinfo_cmsg; each datagram leaves from its source
    (the receivers see it as the sender), None leaves it to the kernel; pairs and triples mix."""
    sources = ["127.0.0.2", "127.0.0.3", None] if family == socket.AF_INET else ["::1", None]
    with receivers(family, host, 3) as peers, socket.socket(family, socket.SOCK_DGRAM) as tx:
        if family == socket.AF_INET6:
            _sockopts.set_v6only(tx, True)
        tx.bind((WILDCARD[family], 0))
        tx.setblocking(False)
        items: list[Any] = []
        for i in range(90):
            source = None if i % 5 == 0 else sources[i % len(sources)]  # every fifth a plain pair
            cmsg = None if source is None else _sockopts.pktinfo_cmsg(family, source, False)
            dest = peers[i % 3].getsockname()
            data = f"{i}:{source}".encode()
            items.append((data, dest) if i % 5 == 0 else (data, dest, cmsg))
        assert core.send_pairs(tx, items, 0) == len(items)
        port = tx.getsockname()[1]
        for peer in peers:
            got = drain_socket(peer)
            sent = [item for item in items if item[1] == peer.getsockname()]
            assert [d for d, _ in got] == [item[0] for item in sent]
            for data, addr in got:
                assert addr[1] == port
                source = data.decode().partition(":")[2]
                assert addr[0] == (host if source == "None" else source)


def test_send_pairs_from_a_mapped_source_on_a_dual_stack_socket() -> None:
    with receivers(socket.AF_INET, LO4, 1) as (peer,), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
        _sockopts.set_v6only(tx, False)
        tx.bind(("::", 0))
        tx.setblocking(False)
        cmsg = _sockopts.pktinfo_cmsg(socket.AF_INET6, "127.0.0.3", True)
        dest = ("::ffff:127.0.0.1", peer.getsockname()[1])
        assert core.send_pairs(tx, [(b"a", dest, cmsg), (b"b", dest, cmsg)], 0) == 2
        assert drain_socket(peer) == [(b"a", ("127.0.0.3", tx.getsockname()[1])),
                                      (b"b", ("127.0.0.3", tx.getsockname()[1]))]


def test_send_pairs_joins_gso_runs_only_from_one_source() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, \
            contextlib.closing(_gro_receiver(socket.AF_INET, LO4)) as rx:
        tx.bind(("0.0.0.0", 0))
        if not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GSO")
        dest = rx.getsockname()
        two = _sockopts.pktinfo_cmsg(socket.AF_INET, "127.0.0.2", False)
        three = _sockopts.pktinfo_cmsg(socket.AF_INET, "127.0.0.3", False)
        items = [(b"x" * 100, dest, two)] * 4 + [(b"y" * 100, dest, three)] * 3 + [(b"z" * 100, dest, None)] * 2
        assert core.send_pairs(tx, items, 0) == len(items)
        assert _receive_trains(rx) == [(400, 100), (300, 100), (200, 100)]


@pytest.mark.parametrize(
    "bad",
    [
        "not a control message",
        (socket.IPPROTO_IP, _sockopts.IP_PKTINFO, b"short"),
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(12)),
        (socket.IPPROTO_IP, _sockopts.IP_PKTINFO, bytearray(12)),
        (socket.IPPROTO_IP, _sockopts.IP_PKTINFO),
    ],
    ids=["str", "short", "other-kind", "bytearray", "two-fields"],
)
def test_send_pairs_stops_before_a_source_it_cannot_send(bad: Any) -> None:
    """Anything but None or one well-formed pktinfo message is left to the caller's sendmsg (which raises or
    sends as it always does): the index of that triple is returned, what came before is sent."""
    with receivers(socket.AF_INET, LO4, 1) as (peer,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind((LO4, 0))
        dest = peer.getsockname()
        items = [(b"a", dest, None), (b"b", dest, bad), (b"c", dest, None)]
        assert core.send_pairs(tx, items, 0) == 1
        assert [d for d, _ in drain_socket(peer)] == [b"a"]


def test_send_pairs_leaves_a_source_the_kernel_refuses_to_sendmsg() -> None:
    """192.0.2.1 (TEST-NET-1) is no address of this host: the kernel refuses that message; the index of it is
    returned (the caller's sendmsg meets the same error and routes it), the rest can be sent after it."""
    with receivers(socket.AF_INET, LO4, 1) as (peer,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("0.0.0.0", 0))
        dest = peer.getsockname()
        foreign = _sockopts.pktinfo_cmsg(socket.AF_INET, "192.0.2.1", False)
        items = [(b"a", dest, None), (b"b", dest, foreign), (b"c", dest, None), (b"d", dest, None)]
        assert core.send_pairs(tx, items, 0) == 1
        with pytest.raises(OSError):
            tx.sendmsg([b"b"], [foreign], 0, dest)
        assert core.send_pairs(tx, items, 2) == 4
        assert [d for d, _ in drain_socket(peer)] == [b"a", b"c", b"d"]


# -- the factory the transport's strategy registry calls ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    limits: Limits = Limits()
    gro: bool = False
    kernel_drops: bool = False
    zero_copy: bool = False
    pktinfo: bool = False


def test_build_receiver_picks_the_handler_from_the_protocol() -> None:
    from udpio._io_core import build_receiver

    class Single:
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.append(data)

    class Lists(Single):
        def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
            self.got += [b"list:" + data for data, _ in batch]

    with udp_pair(socket.AF_INET, LO4) as (rx, tx):
        for protocol, expected in ((Single(), [b"hi"]), (Lists(), [b"list:hi"])):
            receiver = build_receiver(rx, protocol, Config(), Sink())
            assert receiver.batch == isinstance(protocol, Lists)
            tx.sendto(b"hi", rx.getsockname())
            pump(receiver, rx, lambda p=protocol: len(p.got) == 1)
            assert protocol.got == expected
        with pytest.raises(ValueError, match="no zero-copy mode"):
            build_receiver(rx, Single(), Config(zero_copy=True), Sink())


def test_build_receiver_with_pktinfo_picks_the_local_handler() -> None:
    """config.pktinfo: datagrams_received_on if the protocol has it, else datagram_received_on (the Python
    strategies' choice); the plain handlers are not called."""
    from udpio._io_core import build_receiver

    class Single:
        def __init__(self) -> None:
            self.got: list[tuple[bytes, LocalAddress]] = []

        def datagram_received(self, data: bytes, addr: Any) -> None:
            raise AssertionError("the plain handler was chosen")

        datagrams_received = datagram_received

        def datagram_received_on(self, data: bytes, addr: Any, local: LocalAddress) -> None:
            self.got.append((data, local))

    class Lists(Single):
        def datagrams_received_on(self, batch: list[tuple[bytes, Any, LocalAddress]]) -> None:
            self.got += [(b"list:" + data, local) for data, _, local in batch]

    with wildcard_pair(socket.AF_INET, LO4) as (rx, tx):
        for protocol, expected in ((Single(), b"hi"), (Lists(), b"list:hi")):
            sink = Sink()
            receiver = build_receiver(rx, protocol, Config(pktinfo=True), sink)
            assert receiver.pktinfo and receiver.batch == isinstance(protocol, Lists)
            tx.sendto(b"hi", ("127.0.0.3", rx.getsockname()[1]))
            pump(receiver, rx, lambda p=protocol: len(p.got) == 1)
            assert protocol.got == [(expected, LocalAddress("127.0.0.3", LO))]
            assert sink.failures == []
