"""Regression tests for the transport-level defects of issue 13 (items 1, 6 and the API part of 9), on real
sockets. Each failed on the code before its fix; each docstring says the root cause.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import re
import select
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import udpio
from udpio import _sockopts

from . import _netns
from ._helpers import Collector
from .conftest import IPV6

TIMEOUT = 10.0


def _dead_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# -- 1. zero copy: a buffer handed out must outlive its reader, or be copied -------------------------------------


async def test_awaitable_endpoints_refuse_zero_copy(host: str) -> None:
    """Root cause: ``open_endpoint(..., zero_copy=True)`` queued ``memoryview`` slices of the transport's reused
    receive arena, so five distinct datagrams read late all came back as copies of the last one, on both loops.
    An endpoint that queues must own its data, and a copy would make zero copy pointless: the awaitable
    endpoints have no such option (mypy says so too, see test_seams.py)."""
    with pytest.raises(TypeError, match="zero_copy"):
        await udpio.open_endpoint(host, 0, zero_copy=True)  # type: ignore[call-arg]  # the point of the test
    with pytest.raises(TypeError, match="zero_copy"):
        await udpio.open_multicast(0, zero_copy=True)  # type: ignore[call-arg]  # the point of the test


@pytest.mark.usefixtures("receive_strategy")
@pytest.mark.receive_features("zero_copy")
async def test_zero_copy_views_kept_past_the_handler_fail_loudly_or_stay_true(
    host: str, raw_socket: socket.socket
) -> None:
    """Root cause: zero copy delivered slices of one arena reused for every read event, and nothing ended a
    view's life when its handler returned: a view kept past the call silently showed later datagrams. Now the
    delivered views are released when the handler returns (a kept one raises ``ValueError``), and the arena
    is reused only when nothing made from a view survives (a kept sub-slice keeps its arena, unchanged)."""
    kept: list[memoryview] = []
    slices: list[memoryview] = []
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    class Keeper(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[memoryview, Any]]) -> None:
            for view, _ in batch:
                kept.append(view)  # the misuse: keeping the view itself
                slices.append(view[0:])  # a view made from it, kept too
                seen.put_nowait(bytes(view))

    transport, _ = await udpio.listen(Keeper, host, 0, zero_copy=True)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        payloads = [bytes([65 + i]) * (10 + i) for i in range(5)]
        for payload in payloads:  # one at a time: each its own read event, each at the start of the arena
            raw_socket.sendto(payload, addr)
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == payload
        assert [bytes(view) for view in slices] == payloads
        for view in kept:
            with pytest.raises(ValueError, match="released"):
                bytes(view)
    finally:
        transport.close()


# -- 6. close or abort from a protocol callback in the middle of a send call ------------------------------------


class AbortsOnPause(asyncio.DatagramProtocol):
    """Aborts its transport from ``pause_writing`` once armed."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.armed = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        if self.armed:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@contextlib.contextmanager
def _slow_loopback() -> Iterator[str]:
    """A namespace whose ``lo`` is rate-limited (tbf), so what a sender sent stays charged to its socket and a
    small send buffer fills: the only way to meet EAGAIN on loopback."""
    reason = _netns.skip_reason()
    if reason:
        pytest.skip(reason)
    with _netns.netns("r13") as ns:
        subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit",
             "burst", "2kb", "limit", "1mb"],
            check=True, capture_output=True, timeout=30,
        )
        yield ns


def _socket_in(ns: str, sndbuf: int | None = None) -> socket.socket:
    with _netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.netns
@pytest.mark.parametrize("call", ["send_many", "send_batch"])
async def test_abort_from_pause_writing_mid_send_counts_every_datagram(call: str) -> None:
    """Root cause: ``send_many`` (and ``send_batch``) went on queueing the rest of its datagrams after
    ``pause_writing`` had aborted the transport: 31 of 32 datagrams vanished uncounted, and a writer stayed
    registered for the closed descriptor (on the standard loop the next endpoint given that descriptor number
    then failed to open); ``send_batch`` raised EndpointClosedError at its caller instead. Now a call under
    way when its transport closes counts every datagram it can no longer send in ``dropped_on_close``, and
    nothing stays registered."""
    with _slow_loopback() as ns:
        sink = _socket_in(ns)
        sock = _socket_in(ns, sndbuf=1024)
        try:
            transport, protocol = await udpio.adopt(AbortsOnPause, sock)
        finally:
            sock.close()
        try:
            fileno = transport.get_extra_info("socket").fileno()
            transport.set_write_buffer_limits(high=0)  # pause as soon as anything is buffered
            dest = sink.getsockname()
            # The first 32 go out in one GSO train the qdisc holds: the socket's send buffer is full after it.
            transport.send_many([b"f" * 1000] * 32, dest)
            assert transport.get_write_buffer_size() == 0
            protocol.armed = True
            if call == "send_many":
                transport.send_many([b"s" * 1000] * 32, dest)
            else:
                transport.send_batch([(b"s" * 1000, dest)] * 32)
            assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
            c = transport.counters
            assert c.datagrams_out == 32
            assert c.dropped_on_close == 32
            assert c.datagrams_out + c.dropped_on_close + c.dropped_send_buffer + c.send_errors == 64
            selector = getattr(asyncio.get_running_loop(), "_selector", None)  # the standard loop's
            if selector is not None:
                assert fileno not in selector.get_map()
        finally:
            transport.abort()
            sink.close()


class AbortsOnError(Collector):
    """Aborts its transport from ``error_received``."""

    def error_received(self, exc: Exception) -> None:
        super().error_received(exc)
        self.transport.abort()


async def test_abort_from_error_received_mid_send_many_sends_nothing_more(host: str, family: int) -> None:
    """Root cause: ``send_many`` sent the runs after one whose error made ``error_received`` abort the
    transport (on a socket about to close), counting them as sent. Now the rest is counted in
    ``dropped_on_close`` and nothing more is sent."""
    transport, protocol = await udpio.connect(AbortsOnError, host, _dead_port(family, host))
    try:
        transport.sendto(b"probe")
        # Wait, without running the loop (whose reader would consume it), until the ICMP port-unreachable is
        # pending on the socket: the next send then fails with ECONNREFUSED (udp(7)).
        poller = select.poll()
        poller.register(transport.get_extra_info("socket").fileno(), select.POLLERR)
        assert poller.poll(TIMEOUT * 1000), "no ICMP error arrived"
        # Three GSO runs (a larger size starts a new run); without GSO, thirty sends.
        gso = _sockopts.gso_supported(transport.get_extra_info("socket"))
        transport.send_many([b"a" * 10] * 10 + [b"b" * 50] * 10 + [b"c" * 100] * 10)
        assert isinstance(await protocol.next(), ConnectionRefusedError)
        await asyncio.wait_for(protocol.lost, TIMEOUT)
        c = transport.counters
        assert c.datagrams_out == 1  # the probe
        assert c.send_errors == 1  # the first run (or datagram), refused in one system call
        assert c.dropped_on_close == (20 if gso else 29)  # everything after it
    finally:
        transport.abort()


# -- 9. bad arguments are refused by name, before anything changes -----------------------------------------------


async def test_sendto_refuses_malformed_destinations_by_name(host: str, family: int) -> None:
    """Root cause: ``sendto`` looked its destination up in a set before validating it, so a list raised a raw
    TypeError (unhashable), a 4-tuple on IPv4 a raw TypeError from the socket module, and, once ``(host, 1)``
    was cached, ``(host, True)`` was sent (True == 1, same hash) and ``(host, 1.0)`` raised a raw TypeError.
    Now a cache hit needs an exact int port, and everything else is validated and refused by name."""
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        with pytest.raises(udpio.InvalidAddressError, match=re.escape(repr([host, 9]))):
            transport.sendto(b"x", [host, 9])
        if family == socket.AF_INET:
            with pytest.raises(udpio.InvalidAddressError, match=re.escape(repr((host, 9, 0, 0)))):
                transport.sendto(b"x", (host, 9, 0, 0))
        transport.sendto(b"cached", (host, 1))  # port 1 on loopback: refused by ICMP at most, never leaves
        with pytest.raises(udpio.InvalidPortError, match="got True"):
            transport.sendto(b"x", (host, True))
        with pytest.raises(udpio.InvalidPortError, match=r"got 1\.0"):
            transport.sendto(b"x", (host, 1.0))
        with pytest.raises(udpio.InvalidPortError, match="got True"):
            transport.send_batch([(b"x", (host, True))])
        assert transport.counters.datagrams_out == 1
    finally:
        transport.close()


async def test_ipv6_only_socket_gives_advice_that_works() -> None:
    """Root cause: an IPv4 destination on an IPv6 socket was refused with the advice to write it as
    ``::ffff:a.b.c.d``, which then fails with ENETUNREACH on udpio's own sockets: they are IPv6-only."""
    if not IPV6:
        pytest.skip("IPv6 loopback ::1 cannot be bound on this machine")
    transport, _ = await udpio.listen(Collector, "::1", 0)
    try:
        with pytest.raises(udpio.InvalidAddressError, match="IPv6-only") as raised:
            transport.sendto(b"x", ("127.0.0.1", 9))
        assert "::ffff:" not in str(raised.value)
        assert "IPv4" in str(raised.value)
    finally:
        transport.close()


async def test_send_batch_measures_a_memoryview_in_bytes(host: str) -> None:
    """Root cause: ``send_batch`` measured a datagram with ``len()``, which counts items, so a 65,600-byte
    ``memoryview`` of 4-byte ints (16,400 items) passed the size check; ``sendto`` used ``nbytes``."""
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        view = memoryview(array.array("i", [0]) * 16_400)
        assert view.nbytes == 65_600
        with pytest.raises(udpio.DatagramTooLargeError, match="65600 bytes"):
            transport.send_batch([(view, (host, 9))])
        with pytest.raises(udpio.DatagramTooLargeError, match="65600 bytes"):
            transport.sendto(view, (host, 9))
        assert transport.counters.datagrams_out == transport.counters.send_errors == 0
    finally:
        transport.close()


async def test_connect_to_port_zero_is_refused_by_name(host: str, family: int) -> None:
    """Root cause: port 0 passed the port check (it means "any" when binding), and ``connect(2)`` to it leaves
    a UDP socket unconnected, so ``udpio.connect`` failed later with ENOTCONN from ``getpeername``. Port 0 is
    not a destination: refused with InvalidPortError naming it, before the endpoint changes."""
    with pytest.raises(udpio.InvalidPortError, match="got 0"):
        await udpio.connect(Collector, host, 0)
    server, _ = await udpio.listen(Collector, host, 0)
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        with pytest.raises(udpio.InvalidPortError, match="got 0"):
            transport.connect((host, 0))
        assert transport.get_extra_info("peername") is None
        transport.connect(server.get_extra_info("sockname")[:2])  # still unconnected, so this works
        assert transport.get_extra_info("peername")[:2] == server.get_extra_info("sockname")[:2]
    finally:
        transport.close()
        server.close()


async def test_adopt_of_an_impossible_descriptor_is_invalid_socket_error() -> None:
    """Root cause: ``adopt(2**40)`` reached ``os.get_blocking``, whose C int argument overflowed: a raw
    OverflowError instead of InvalidSocketError naming the value."""
    with pytest.raises(udpio.InvalidSocketError, match=str(2**40)):
        await udpio.adopt(Collector, 2**40)


@pytest.mark.parametrize("option", ["zero_copy", "gro", "track_kernel_drops"])
async def test_boolean_options_must_be_bools(host: str, option: str) -> None:
    """Root cause: the boolean options were used for their truth value, so ``zero_copy="no"`` turned zero copy
    on. They are validated once, into TransportOptions: True or False, anything else refused by name."""
    with pytest.raises(udpio.InvalidArgumentError, match=f"{option} must be True or False, got 'no'"):
        await udpio.listen(Collector, host, 0, **{option: "no"})


# -- 9, on the drop-in Twisted reactor ----------------------------------------------------------------------------


@pytest.fixture
def twisted_reactor(loop_kind: str) -> Iterator[Any]:
    pytest.importorskip("twisted")
    from udpio.compat import UdpioReactor

    loop = udpio.new_event_loop(loop_kind)
    reactor = UdpioReactor(loop)
    try:
        yield reactor
    finally:
        reactor.disconnectAll()
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        loop.close()


def test_twisted_connect_to_port_zero_leaves_the_port_unconnected(twisted_reactor: Any, host: str) -> None:
    """Root cause: ``UDPPort.connect`` marked the port connected, then connected the socket and read its peer;
    with port 0 that last step raised ENOTCONN and the port stayed marked connected (the next ``connect``
    said "already connected"). Everything is validated before the port changes state."""
    from twisted.internet.protocol import DatagramProtocol

    port = twisted_reactor.listenUDP(0, DatagramProtocol(), interface=host)
    with pytest.raises(udpio.InvalidPortError, match="got 0"):
        port.connect(host, 0)
    assert port.getHandle().fileno() != -1
    port.connect(host, 9)  # not "already connected"


@pytest.mark.parametrize("bad", [None, "8000", 70000])
def test_twisted_listen_udp_with_a_bad_port_names_it(twisted_reactor: Any, host: str, bad: Any) -> None:
    """Root cause: the port number ``None`` was how an adopted port was recognised, so ``listenUDP(None)`` said
    "an adopted port cannot listen again". A port must be an int in 0..65535, and the error says so."""
    from twisted.internet.protocol import DatagramProtocol

    with pytest.raises(udpio.InvalidPortError, match=re.escape(f"port must be an int in 0..65535, got {bad!r}")):
        twisted_reactor.listenUDP(bad, DatagramProtocol(), interface=host)


# -- the batch backend does not lose an error the kernel reported once ------------------------------------------

#: ip(7): IP_RECVERR (the Python 3.10/3.11 socket module does not export it).
IP_RECVERR = 11


async def test_send_batch_reports_a_pending_error_once_and_does_not_resend() -> None:
    """An error pending on the socket (IP_RECVERR: an earlier ICMP error fails the next send, on any socket) is
    consumed by the ``sendto`` that raises it. A batch backend that stopped there and let the caller retry the
    pair would send it after all and lose the error (SEAMS.md, amendment 3 of ``core``): the send path reports
    the error once, and the pair it failed is not sent again. (IPv4 only: IPV6_RECVERR takes the same path.)"""
    host = "127.0.0.1"
    received = Collector()
    live, _ = await udpio.listen(lambda: received, host, 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    sock.bind((host, 0))
    sock.setblocking(False)
    try:
        transport, protocol = await udpio.adopt(Collector, sock)
    finally:
        sock.close()
    try:
        transport.pause_reading()  # nobody reads the error before the batch meets it
        transport.sendto(b"to nobody", (host, _dead_port(socket.AF_INET, host)))
        poller = select.poll()
        poller.register(transport.get_extra_info("socket").fileno(), select.POLLERR)
        assert poller.poll(TIMEOUT * 1000), "no ICMP error arrived"
        dest = live.get_extra_info("sockname")
        transport.send_batch([(b"first", dest), (b"second", dest)])
        assert isinstance(await protocol.next(), ConnectionRefusedError)
        assert (await received.next())[0] == b"second"
        c = transport.counters
        assert (c.datagrams_out, c.send_errors, c.errors_received) == (2, 1, 1)  # "to nobody" and "second"
        assert protocol.queue.empty()  # reported once
    finally:
        transport.close()
        live.close()
