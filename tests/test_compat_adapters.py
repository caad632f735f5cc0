"""Both compat adapters on real loopback sockets: asyncio protocols on Twisted's reactors (TwistedAdapter),
and Twisted protocols on udpio's transport (listen_twisted, adopt_twisted, listen_multicast_twisted).

The Twisted reactors here are fresh instances that are never installed as the global reactor (as Twisted's own
ReactorBuilder does), so every test gets its own: the asyncio reactor wraps the test's running loop (asyncio or
uvloop), the epoll reactor is pumped with ``iterate`` until the awaited event happened.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("twisted")

from twisted.internet import error as terror
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IListeningPort, IMulticastTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from udpio.compat import (
    TwistedAdapter,
    TwistedPortTransport,
    UdpioMulticastPort,
    UdpioPort,
    adopt_twisted,
    listen_multicast_twisted,
    listen_twisted,
    twisted_address,
)
from zope.interface.verify import verifyObject

import udpio

from ._helpers import Collector

GROUP = "239.255.77.78"


# -- helpers -----------------------------------------------------------------------------------------------


def _dispose(reactor: Any) -> None:
    """Release what a never-run reactor holds: ports, timers, its waker (as Twisted's ReactorBuilder does)."""
    reactor.disconnectAll()
    for call in reactor.getDelayedCalls():
        call.cancel()
    for reader in list(getattr(reactor, "_internalReaders", ())):
        reactor.removeReader(reader)
        reader.connectionLost(None)
    poller = getattr(reactor, "_poller", None)
    if poller is not None:
        poller.close()


@pytest.fixture
def epoll_reactor() -> Iterator[Any]:
    if not sys.platform.startswith("linux"):
        pytest.skip("epoll is Linux's")
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    try:
        yield reactor
    finally:
        _dispose(reactor)


def pump(reactor: Any, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the reactor's iterations until ``done()``; each waits for I/O at most 50 ms."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("the awaited event did not happen within 5 s")
        reactor.iterate(0.05)


def dead_port(family: int, host: str) -> int:
    """A port nobody listens on (bound, read, closed: the kernel answers ICMP port-unreachable there)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class AsyncioReactor:
    """A Twisted asyncio reactor over the test's running loop, disposed on exit."""

    def __enter__(self) -> Any:
        self.reactor = AsyncioSelectorReactor(asyncio.get_running_loop())
        return self.reactor

    def __exit__(self, *exc: object) -> None:
        _dispose(self.reactor)


class Recorder(DatagramProtocol):
    """A Twisted protocol that records its callbacks into an asyncio queue (runs on udpio's loop)."""

    noisy = False

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.events: list[str] = []
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def startProtocol(self) -> None:
        self.events.append("start")

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.queue.put_nowait((datagram, addr))
        if self.echo:
            self.transport.write(datagram, addr)  # type: ignore[union-attr]

    def connectionRefused(self) -> None:
        self.events.append("refused")
        self.queue.put_nowait("refused")

    def stopProtocol(self) -> None:
        self.events.append("stop")

    async def next(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), 5)


async def stopped(port: UdpioPort) -> None:
    d = port.stopListening()
    assert d is not None
    await d.asFuture(asyncio.get_running_loop())


# -- twisted_address ---------------------------------------------------------------------------------------


def test_twisted_address_keeps_what_twisted_would_drop() -> None:
    assert twisted_address(("127.0.0.1", 5)) == ("127.0.0.1", 5)
    assert twisted_address(("::1", 5, 0, 0)) == ("::1", 5)
    # A link-local peer: Twisted's addr[:2] loses the scope and replies fail; udpio keeps the 4-tuple.
    assert twisted_address(("fe80::1", 5, 0, 3)) == ("fe80::1", 5, 0, 3)


# -- asyncio protocol on Twisted's asyncio reactor --------------------------------------------------------


async def test_adapter_echo_round_trip(host: str, raw_socket: socket.socket) -> None:
    with AsyncioReactor() as reactor:
        protocol = Collector()
        adapter = TwistedAdapter(protocol)
        port = reactor.listenUDP(0, adapter, interface=host)
        transport = protocol.transport
        assert protocol.events == ["made"]  # startProtocol -> connection_made, synchronously
        assert isinstance(transport, TwistedPortTransport) and transport is adapter.asyncio_transport
        assert transport.get_extra_info("sockname")[1] == port.getHost().port
        assert transport.get_extra_info("peername") is None
        assert transport.get_extra_info("twisted_port") is port
        here = transport.get_extra_info("sockname")

        raw_socket.sendto(b"ping", here[:2])
        data, addr = await protocol.next()
        assert data == b"ping"
        assert addr[:2] == raw_socket.getsockname()[:2]
        transport.sendto(b"pong", addr)
        assert raw_socket.recvfrom(100) == (b"pong", here)

        raw_socket.sendto(b"", here[:2])  # zero-length datagrams are datagrams
        assert (await protocol.next())[0] == b""
        transport.sendto(b"", addr)
        assert raw_socket.recvfrom(100)[0] == b""

        c = transport.counters
        assert (c.datagrams_in, c.bytes_in, c.datagrams_out, c.bytes_out) == (2, 4, 2, 4)
        assert transport.get_write_buffer_size() == 0 and transport.get_write_buffer_limits() == (0, 0)

        transport.close()
        assert transport.is_closing()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.events == ["made", "lost"]
        with pytest.raises(udpio.EndpointClosedError):
            transport.sendto(b"late", addr)


async def test_adapter_sendto_errors_use_udpio_vocabulary(host: str, family: int) -> None:
    with AsyncioReactor() as reactor:
        protocol = Collector()
        reactor.listenUDP(0, TwistedAdapter(protocol), interface=host)
        transport = protocol.transport
        limit = udpio.MAX_PAYLOAD_IPV4 if family == socket.AF_INET else udpio.MAX_PAYLOAD_IPV6
        with pytest.raises(udpio.DatagramTooLargeError, match=str(limit + 1)):
            transport.sendto(b"x" * (limit + 1), (host, 9))
        with pytest.raises(udpio.InvalidAddressError, match="localhost"):
            transport.sendto(b"x", ("localhost", 9))
        other = "::1" if family == socket.AF_INET else "127.0.0.1"
        with pytest.raises(udpio.InvalidAddressError, match="addr must be"):
            transport.sendto(b"x", (other, 9))
        with pytest.raises(udpio.InvalidAddressError, match="unconnected"):
            transport.sendto(b"x")
        with pytest.raises(TypeError, match="str"):
            transport.sendto("text", (host, 9))  # type: ignore[arg-type]
        transport.close()
        await asyncio.wait_for(protocol.lost, 5)


async def test_adapter_connected_refused_each_time_and_port_stays(host: str, family: int, loop_kind: str) -> None:
    """Twisted's asyncio reactor calls connectionRefused; the adapter makes it error_received, every time."""
    if loop_kind == "uvloop":
        pytest.skip(
            "Twisted's asyncio reactor on uvloop stops reading a socket after its first ICMP error (libuv ends a "
            "poll watcher on POLLERR); 'udpio compare' shows it as the twisted-asyncio-uvloop stack"
        )
    with AsyncioReactor() as reactor:
        protocol = Collector()
        peer = dead_port(family, host)
        reactor.listenUDP(0, TwistedAdapter(protocol, connect=(host, peer)), interface=host)
        transport = protocol.transport
        assert transport.get_extra_info("peername")[1] == peer
        with pytest.raises(udpio.InvalidAddressError, match="connected peer"):
            transport.sendto(b"x", (host, peer + 1 if peer < 65535 else peer - 1))
        for attempt in range(2):
            transport.sendto(f"knock {attempt}".encode())
            exc = await protocol.next()
            assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
            assert not transport.is_closing()
        assert transport.counters.errors_received == 2
        # The peer comes up on that port: the same connected port reaches it.
        with socket.socket(family, socket.SOCK_DGRAM) as server:
            server.bind((host, peer))
            server.settimeout(5)
            transport.sendto(b"again", (host, peer))  # the peer's own address is accepted too
            assert server.recvfrom(100)[0] == b"again"
        transport.close()
        await asyncio.wait_for(protocol.lost, 5)


async def test_adapter_handler_errors_are_counted_and_serving_goes_on(
    host: str, raw_socket: socket.socket
) -> None:
    class Failing(Collector):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if data == b"boom":
                raise ValueError("boom")
            super().datagram_received(data, addr)

    with AsyncioReactor() as reactor:
        protocol = Failing()
        reactor.listenUDP(0, TwistedAdapter(protocol), interface=host)
        here = protocol.transport.get_extra_info("sockname")[:2]
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        try:
            raw_socket.sendto(b"boom", here)
            raw_socket.sendto(b"fine", here)
            assert (await protocol.next())[0] == b"fine"
        finally:
            globalLogPublisher.removeObserver(logged.append)
        assert protocol.transport.counters.handler_errors == 1
        # Twisted logged it (log.err in udp.Port.doRead), as for any Twisted protocol.
        assert any(e.get("isError") and "boom" in str(e.get("failure")) for e in logged)
        protocol.transport.close()
        await asyncio.wait_for(protocol.lost, 5)


async def test_adapter_feeds_batch_only_protocols(host: str, raw_socket: socket.socket) -> None:
    class BatchOnly(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.batches: asyncio.Queue[list[tuple[bytes, Any]]] = asyncio.Queue()

        def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
            self.batches.put_nowait(batch)

    with AsyncioReactor() as reactor:
        protocol = BatchOnly()
        port = reactor.listenUDP(0, TwistedAdapter(protocol), interface=host)
        raw_socket.sendto(b"one", (host, port.getHost().port))
        batch = await asyncio.wait_for(protocol.batches.get(), 5)
        assert [data for data, _ in batch] == [b"one"]
        await port.stopListening().asFuture(asyncio.get_running_loop())


def test_adapter_refuses_what_is_not_an_asyncio_protocol() -> None:
    with pytest.raises(udpio.InvalidArgumentError, match=r"asyncio\.DatagramProtocol"):
        TwistedAdapter(DatagramProtocol())  # type: ignore[arg-type]


# -- asyncio protocol on Twisted's epoll reactor ------------------------------------------------------------


class SyncCollector(asyncio.DatagramProtocol):
    """Records callbacks without needing a running asyncio loop (the epoll reactor has none)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.events.append(("datagram", data, addr))

    def error_received(self, exc: Exception) -> None:
        self.events.append(("error", type(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))


def test_adapter_on_epoll_echo(epoll_reactor: Any, host: str, raw_socket: socket.socket) -> None:
    protocol = SyncCollector()
    port = epoll_reactor.listenUDP(0, TwistedAdapter(protocol), interface=host)
    raw_socket.sendto(b"ping", (host, port.getHost().port))
    pump(epoll_reactor, lambda: len(protocol.events) == 2)
    _, data, addr = protocol.events[1]
    assert data == b"ping"
    protocol.transport.sendto(b"pong", addr)
    assert raw_socket.recvfrom(100)[0] == b"pong"
    protocol.transport.close()
    pump(epoll_reactor, lambda: protocol.events[-1] == ("lost", None))


def test_adapter_on_epoll_shows_twisteds_silent_close(epoll_reactor: Any, host: str, family: int) -> None:
    """Twisted's epoll reactor closes a connected port on ICMP port-unreachable instead of calling
    connectionRefused (Twisted #5377/#6287/#6467): the asyncio protocol sees connection_lost(None) and no
    error. This pins the defect the comparison harness lists as an expected difference."""
    protocol = SyncCollector()
    peer = dead_port(family, host)
    epoll_reactor.listenUDP(0, TwistedAdapter(protocol, connect=(host, peer)), interface=host)
    protocol.transport.sendto(b"knock")
    pump(epoll_reactor, lambda: protocol.events[-1] == ("lost", None))
    assert protocol.events == ["made", ("lost", None)]
    assert protocol.transport.is_closing()


# -- Twisted protocol on udpio ----------------------------------------------------------------------------


@pytest.mark.usefixtures("receive_strategy")
async def test_listen_twisted_echo(host: str, family: int, raw_socket: socket.socket) -> None:
    protocol = Recorder(echo=True)
    port = await listen_twisted(0, protocol, host)
    assert protocol.events == ["start"]  # startProtocol ran before listen_twisted returned
    assert protocol.transport is port
    assert verifyObject(IUDPTransport, port) and verifyObject(IListeningPort, port)
    address = port.getHost()
    assert isinstance(address, IPv4Address if family == socket.AF_INET else IPv6Address)
    assert (address.type, address.host) == ("UDP", host)
    assert port.getHandle().getsockname()[1] == address.port

    raw_socket.sendto(b"ping", (host, address.port))
    data, addr = await protocol.next()
    assert data == b"ping"
    assert addr == raw_socket.getsockname()[:2]  # Twisted's (host, port) shape, also for ::1
    assert raw_socket.recvfrom(100)[0] == b"ping"
    raw_socket.sendto(b"", (host, address.port))
    assert (await protocol.next())[0] == b""
    assert raw_socket.recvfrom(100)[0] == b""
    assert port.transport.counters.datagrams_in == 2

    d = port.stopListening()
    assert d is not None
    await d.asFuture(asyncio.get_running_loop())
    assert protocol.events == ["start", "stop"]
    assert protocol.transport is None  # Twisted's doStop clears it
    assert port.stopListening() is None  # already stopped, as Twisted's udp.Port
    with pytest.raises(terror.NotListeningError):
        port.write(b"late", raw_socket.getsockname())
    with pytest.raises(terror.CannotListenError):
        port.startListening()


@pytest.mark.usefixtures("receive_strategy")
async def test_listen_twisted_write_errors_are_twisteds(host: str, family: int) -> None:
    protocol = Recorder()
    port = await listen_twisted(0, protocol, host)
    with pytest.raises(terror.InvalidAddressError, match="hostnames"):
        port.write(b"x", ("localhost", 9))
    other = "::1" if family == socket.AF_INET else "127.0.0.1"
    with pytest.raises(terror.InvalidAddressError, match="called with"):
        port.write(b"x", (other, 9))
    with pytest.raises(terror.InvalidAddressError, match="needs an address"):
        port.write(b"x")
    limit = udpio.MAX_PAYLOAD_IPV4 if family == socket.AF_INET else udpio.MAX_PAYLOAD_IPV6
    with pytest.raises(terror.MessageLengthError):
        port.write(b"x" * (limit + 1), (host, 9))
    port.writeSequence([b"a", b"b"], port.getHandle().getsockname())  # to ourselves
    data, _ = await protocol.next()
    assert data == b"ab"
    await stopped(port)


@pytest.mark.usefixtures("receive_strategy")
async def test_listen_twisted_connect_refused_each_time_port_stays(host: str, family: int) -> None:
    protocol = Recorder()
    port = await listen_twisted(0, protocol, host)
    with pytest.raises(terror.InvalidAddressError, match="localhost"):
        port.connect("localhost", 9)
    peer = dead_port(family, host)
    port.connect(host, peer)
    with pytest.raises(RuntimeError, match="already connected"):
        port.connect(host, peer)
    with pytest.raises(terror.InvalidAddressError, match="connected to"):
        port.write(b"x", (host, 9 if peer != 9 else 10))
    for attempt in range(2):
        port.write(f"knock {attempt}".encode())
        assert await protocol.next() == "refused"
    assert protocol.events == ["start", "refused", "refused"]
    # Still listening: the peer comes up on that port and the next write reaches it.
    with socket.socket(family, socket.SOCK_DGRAM) as server:
        server.bind((host, peer))
        server.settimeout(5)
        port.write(b"again")
        data, sender = server.recvfrom(100)
        assert data == b"again" and sender[1] == port.getHost().port
        # Connected: a stranger's datagram is filtered by the kernel, the peer's arrives.
        with socket.socket(family, socket.SOCK_DGRAM) as stranger:
            stranger.bind((host, 0))
            stranger.sendto(b"stranger", sender)
            server.sendto(b"from peer", sender)
            data, addr = await protocol.next()
            assert (data, addr[1]) == (b"from peer", peer)
    await stopped(port)


@pytest.mark.usefixtures("receive_strategy")
async def test_adopt_twisted_caller_keeps_its_socket(host: str, family: int, raw_socket: socket.socket) -> None:
    prebuilt = socket.socket(family, socket.SOCK_DGRAM)
    try:
        prebuilt.setblocking(False)
        prebuilt.bind((host, 0))
        number = prebuilt.getsockname()[1]
        protocol = Recorder(echo=True)
        port = await adopt_twisted(prebuilt, protocol)
    finally:
        prebuilt.close()  # the tutorial's order: close ours at once, the port keeps working
    assert port.getHost().port == number
    raw_socket.sendto(b"adopted", (host, number))
    assert (await protocol.next())[0] == b"adopted"
    assert raw_socket.recvfrom(100)[0] == b"adopted"
    await stopped(port)


@pytest.mark.usefixtures("receive_strategy")
async def test_adopt_twisted_connected_socket_gives_connected_port(
    host: str, family: int, raw_socket: socket.socket
) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as prebuilt:
        prebuilt.setblocking(False)
        prebuilt.bind((host, 0))
        prebuilt.connect(raw_socket.getsockname())
        protocol = Recorder()
        port = await adopt_twisted(prebuilt.fileno(), protocol)
    port.write(b"no address needed")
    assert raw_socket.recvfrom(100)[0] == b"no address needed"
    with pytest.raises(RuntimeError, match="already connected"):
        port.connect(host, 9)
    await stopped(port)


async def test_listen_twisted_refuses_bad_protocols(host: str) -> None:
    with pytest.raises(udpio.InvalidArgumentError, match="DatagramProtocol"):
        await listen_twisted(0, Collector(), host)  # type: ignore[arg-type]
    protocol = Recorder()
    port = await listen_twisted(0, protocol, host)
    with pytest.raises(udpio.InvalidArgumentError, match="not yet attached"):
        await listen_twisted(0, protocol, host)
    with pytest.raises(udpio.InvalidSocketError):
        await adopt_twisted(-1, Recorder())
    await stopped(port)


@pytest.mark.usefixtures("receive_strategy")
async def test_listen_twisted_max_packet_size_drops_and_counts(host: str, raw_socket: socket.socket) -> None:
    protocol = Recorder()
    port = await listen_twisted(0, protocol, host, max_packet_size=8)
    raw_socket.sendto(b"123456789", (host, port.getHost().port))  # 9 bytes: dropped, not truncated
    raw_socket.sendto(b"12345678", (host, port.getHost().port))
    assert (await protocol.next())[0] == b"12345678"
    assert port.transport.counters.dropped_oversize == 1
    await stopped(port)


async def test_listen_twisted_broadcast_option(host: str) -> None:
    port = await listen_twisted(0, Recorder(), host)
    assert port.getBroadcastAllowed() is False
    port.setBroadcastAllowed(True)
    assert port.getBroadcastAllowed() is True
    await stopped(port)


@pytest.mark.usefixtures("receive_strategy")
async def test_listen_multicast_twisted_on_loopback() -> None:
    protocol = Recorder()
    port = await listen_multicast_twisted(0, protocol, "", listen_multiple=True)
    assert isinstance(port, UdpioMulticastPort)
    assert verifyObject(IMulticastTransport, port)
    loop = asyncio.get_running_loop()
    assert await port.setOutgoingInterface("127.0.0.1").asFuture(loop) == 1
    assert port.getOutgoingInterface() == "127.0.0.1"
    await port.joinGroup(GROUP, "127.0.0.1").asFuture(loop)
    port.setTTL(2)
    assert port.getTTL() == 2
    port.setLoopbackMode(1)
    assert port.getLoopbackMode() is True

    port.write(b"Notify", (GROUP, port.getHost().port))
    data, addr = await protocol.next()
    assert data == b"Notify" and addr[1] == port.getHost().port

    with pytest.raises(terror.MulticastJoinError) as joined_twice:
        await port.joinGroup(GROUP, "127.0.0.1").asFuture(loop)
    assert isinstance(joined_twice.value.__cause__, udpio.AlreadyJoinedError)
    await port.leaveGroup(GROUP, "127.0.0.1").asFuture(loop)
    with pytest.raises(terror.MulticastJoinError) as not_joined:
        await port.leaveGroup(GROUP, "127.0.0.1").asFuture(loop)
    assert isinstance(not_joined.value.__cause__, udpio.NotJoinedError)
    with pytest.raises(terror.MulticastJoinError, match=r"10\.0\.0\.1"):
        await port.joinGroup("10.0.0.1", "127.0.0.1").asFuture(loop)  # not a group
    await stopped(port)
