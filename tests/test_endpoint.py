"""listen / connect / adopt on real loopback sockets, over both loops and both families."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

import udpio
from udpio._transport import DatagramTransport

from ._helpers import Collector
from .conftest import NO_READERS

#: Every test here runs once per receive strategy, and on the loop without add_reader (tests/conftest.py).
pytestmark = [pytest.mark.usefixtures("receive_strategy"), pytest.mark.fallback]


async def test_listen_receives_and_replies(family: int, host: str, raw_socket: socket.socket) -> None:
    transport, proto = await udpio.listen(Collector, host, 0)
    try:
        assert isinstance(transport, DatagramTransport)
        addr = transport.get_extra_info("sockname")
        assert addr[1] != 0 and addr[0] == host
        raw_socket.sendto(b"ping", addr[:2])
        data, peer = await proto.next()
        assert data == b"ping"
        assert peer[:2] == raw_socket.getsockname()[:2]
        if family == socket.AF_INET6:
            assert len(peer) == 4  # flowinfo and scope id are passed through
        transport.sendto(b"pong", peer)
        reply = await asyncio.get_running_loop().run_in_executor(None, raw_socket.recvfrom, 100)
        assert reply[0] == b"pong"
    finally:
        transport.close()
    assert await proto.lost is None
    assert proto.events == ["made", "lost"]


async def test_zero_length_datagrams_both_ways(host: str, raw_socket: socket.socket) -> None:
    transport, proto = await udpio.listen(Collector, host, 0)
    try:
        raw_socket.sendto(b"", transport.get_extra_info("sockname")[:2])
        data, peer = await proto.next()
        assert data == b""
        transport.sendto(b"", peer)
        reply = await asyncio.get_running_loop().run_in_executor(None, raw_socket.recvfrom, 10)
        assert reply[0] == b""
    finally:
        transport.close()


async def test_many_datagrams_in_one_event_are_all_delivered(host: str, raw_socket: socket.socket) -> None:
    transport, proto = await udpio.listen(Collector, host, 0, rcvbuf=1 << 20)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        for i in range(600):  # more than MAX_DATAGRAMS_PER_EVENT, all queued before the loop reads
            raw_socket.sendto(str(i).encode(), addr)
        got = [(await proto.next())[0] for _ in range(600)]
        assert got == [str(i).encode() for i in range(600)]
        c = transport.counters
        assert c.datagrams_in == 600
        assert c.bytes_in == sum(len(str(i)) for i in range(600))
    finally:
        transport.close()


async def test_counters_count_both_directions(host: str, raw_socket: socket.socket) -> None:
    transport, proto = await udpio.listen(Collector, host, 0)
    try:
        raw_socket.sendto(b"abc", transport.get_extra_info("sockname")[:2])
        _, peer = await proto.next()
        transport.sendto(b"12345", peer)
        snap = transport.counters.snapshot()
        assert snap["datagrams_in"] == 1 and snap["bytes_in"] == 3
        assert snap["datagrams_out"] == 1 and snap["bytes_out"] == 5
        assert snap["dropped"] == 0
        assert transport.get_extra_info("counters") is transport.counters
    finally:
        transport.close()


async def test_max_size_drops_and_counts_oversize(host: str, raw_socket: socket.socket) -> None:
    transport, proto = await udpio.listen(Collector, host, 0, max_size=10)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        raw_socket.sendto(b"x" * 11, addr)
        raw_socket.sendto(b"y" * 10, addr)
        data, _ = await proto.next()
        assert data == b"y" * 10
        assert transport.counters.dropped_oversize == 1
    finally:
        transport.close()


async def test_connected_send_without_address_and_refused(host: str) -> None:
    # A port with nobody listening: bind, learn the port, close.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        dead_port = probe.getsockname()[1]
    transport, proto = await udpio.connect(Collector, host, dead_port)
    try:
        assert transport.get_extra_info("peername")[1] == dead_port
        transport.sendto(b"anyone?")
        err = await proto.next()
        assert isinstance(err, ConnectionRefusedError)
        # The endpoint keeps working: a second send is refused again, not silently lost.
        transport.sendto(b"still there?")
        assert isinstance(await proto.next(), ConnectionRefusedError)
        assert not transport.is_closing()
        assert transport.counters.errors_received + transport.counters.send_errors >= 2
    finally:
        transport.close()


async def test_connected_talks_to_its_peer_only(host: str, family: int) -> None:
    server_t, server = await udpio.listen(Collector, host, 0)
    client_t, client = await udpio.connect(Collector, host, server_t.get_extra_info("sockname")[1])
    stranger = socket.socket(family, socket.SOCK_DGRAM)
    try:
        client_t.sendto(b"hello")
        data, peer = await server.next()
        assert data == b"hello"
        stranger.sendto(b"intruder", client_t.get_extra_info("sockname")[:2])
        server_t.sendto(b"reply", peer)
        data, _ = await client.next()
        assert data == b"reply"  # the stranger's datagram was filtered by the kernel
        with pytest.raises(udpio.InvalidAddressError, match="connected peer"):
            client_t.sendto(b"x", stranger.getsockname())
    finally:
        stranger.close()
        client_t.close()
        server_t.close()


async def test_connected_protocol_connection_refused_callback(host: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        dead_port = probe.getsockname()[1]
    refused: asyncio.Queue[udpio.PeerRefused] = asyncio.Queue()

    class P(udpio.ConnectedProtocol):
        def connection_refused(self, event: udpio.PeerRefused) -> None:
            refused.put_nowait(event)

    transport, _ = await udpio.connect(P, host, dead_port)
    try:
        transport.sendto(b"x")
        event = await asyncio.wait_for(refused.get(), 5)
        assert event.peer is not None and event.peer[1] == dead_port
        assert isinstance(event.error, ConnectionRefusedError)
    finally:
        transport.close()


@pytest.mark.parametrize("how", ["socket", "fd"])
async def test_adopt_prebuilt_socket(how: str, family: int, host: str, raw_socket: socket.socket) -> None:
    mine = socket.socket(family, socket.SOCK_DGRAM)
    mine.setblocking(False)
    mine.bind((host, 0))
    addr = mine.getsockname()[:2]
    transport, proto = await udpio.adopt(Collector, mine if how == "socket" else mine.fileno())
    mine.close()  # as in the tutorial: the caller may close its own socket right after adopting
    try:
        raw_socket.sendto(b"adopted", addr)
        data, _ = await proto.next()
        assert data == b"adopted"
    finally:
        transport.close()
    await proto.lost


async def test_adopt_refuses_bad_sockets_and_leaves_them_untouched(host: str, family: int) -> None:
    blocking = socket.socket(family, socket.SOCK_DGRAM)
    blocking.bind((host, 0))
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setblocking(False)
    unbound = socket.socket(family, socket.SOCK_DGRAM)
    unbound.setblocking(False)
    closed = socket.socket(family, socket.SOCK_DGRAM)
    closed.close()
    r, w = os.pipe()
    try:
        with pytest.raises(udpio.InvalidSocketError, match="non-blocking"):
            await udpio.adopt(Collector, blocking)
        with pytest.raises(udpio.InvalidSocketError, match="SOCK_DGRAM"):
            await udpio.adopt(Collector, tcp)
        with pytest.raises(udpio.InvalidSocketError, match="bound"):
            await udpio.adopt(Collector, unbound)
        with pytest.raises(udpio.InvalidSocketError, match="closed"):
            await udpio.adopt(Collector, closed)
        with pytest.raises(udpio.InvalidSocketError, match="a socket"):
            await udpio.adopt(Collector, r)
        with pytest.raises(udpio.InvalidSocketError, match="open file descriptor"):
            await udpio.adopt(Collector, w + 1000)
        with pytest.raises(udpio.InvalidSocketError, match=r"socket.socket or an int"):
            await udpio.adopt(Collector, "3")  # type: ignore[arg-type]
        assert blocking.fileno() != -1 and blocking.getblocking()
        assert tcp.fileno() != -1
    finally:
        for s in (blocking, tcp, unbound):
            s.close()
        os.close(r)
        os.close(w)


async def test_bad_arguments_name_the_value(host: str) -> None:
    with pytest.raises(udpio.InvalidPortError, match=r"port must be an int in 0..65535, got 70000"):
        await udpio.listen(Collector, host, 70000)
    with pytest.raises(udpio.InvalidPortError, match="-1"):
        await udpio.connect(Collector, host, -1)
    with pytest.raises(udpio.InvalidAddressError, match=r"host must be a non-empty .* got ''"):
        await udpio.listen(Collector, "", 0)
    with pytest.raises(udpio.InvalidAddressError, match="family must be"):
        await udpio.listen(Collector, host, 0, family=99)
    with pytest.raises(udpio.HostNotFoundError, match=r"no-such-host.invalid"):
        await udpio.listen(Collector, "no-such-host.invalid", 0)
    with pytest.raises(udpio.InvalidArgumentError, match="max_size"):
        await udpio.listen(Collector, host, 0, max_size=70000)


async def test_wrong_family_literal_is_named(host: str) -> None:
    with pytest.raises(udpio.InvalidAddressError, match=r"::1 \(IPv6\)"):
        await udpio.listen(Collector, "::1", 0, family=socket.AF_INET)


async def test_port_in_use_raises_oserror_naming_address(host: str) -> None:
    transport, _ = await udpio.listen(Collector, host, 0)
    port = transport.get_extra_info("sockname")[1]
    try:
        with pytest.raises(OSError, match=f"cannot bind UDP socket to .*{port}") as info:
            await udpio.listen(Collector, host, port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        transport.close()


async def test_send_errors_name_the_problem(host: str, family: int) -> None:
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        limit = udpio.MAX_PAYLOAD_IPV4 if family == socket.AF_INET else udpio.MAX_PAYLOAD_IPV6
        with pytest.raises(udpio.DatagramTooLargeError, match=f"{limit + 1} bytes exceeds"):
            transport.sendto(b"x" * (limit + 1), (host, 9))
        with pytest.raises(udpio.InvalidAddressError, match="localhost"):
            transport.sendto(b"x", ("localhost", 9))
        with pytest.raises(udpio.InvalidPortError, match="70000"):
            transport.sendto(b"x", (host, 70000))
        with pytest.raises(udpio.InvalidAddressError, match="destination"):
            transport.sendto(b"x")
        with pytest.raises(TypeError, match="str"):
            transport.sendto("text", (host, 9))  # type: ignore[arg-type]
    finally:
        transport.close()
    with pytest.raises(udpio.EndpointClosedError, match="closed"):
        transport.sendto(b"x", (host, 9))


async def test_handler_exception_is_logged_and_endpoint_keeps_serving(
    host: str, raw_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    class Fragile(Collector):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if data == b"boom":
                raise RuntimeError("handler bug")
            super().datagram_received(data, addr)

    transport, proto = await udpio.listen(Fragile, host, 0)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        raw_socket.sendto(b"boom", addr)
        raw_socket.sendto(b"fine", addr)
        data, _ = await proto.next()
        assert data == b"fine"
        assert transport.counters.handler_errors == 1
        peer = udpio.format_address(raw_socket.getsockname())
        assert any(peer in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        transport.close()


async def test_socket_closed_underneath_breaks_endpoint(host: str) -> None:
    transport, proto = await udpio.listen(Collector, host, 0)
    transport.get_extra_info("socket").close()
    transport.sendto(b"x", (host, 9))
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, udpio.EndpointBrokenError)
    assert transport.is_closing()


async def test_batch_protocol_gets_lists(host: str, raw_socket: socket.socket) -> None:
    batches: asyncio.Queue[list[tuple[bytes, object]]] = asyncio.Queue()

    class Batch(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[bytes, object]]) -> None:
            batches.put_nowait(batch)

    transport, _ = await udpio.listen(Batch, host, 0)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        for i in range(10):
            raw_socket.sendto(bytes([i]), addr)
        got: list[bytes] = []
        while len(got) < 10:
            got += [d for d, _ in await asyncio.wait_for(batches.get(), 5)]
        assert got == [bytes([i]) for i in range(10)]
    finally:
        transport.close()


async def test_reuse_port_lets_two_sockets_share(host: str) -> None:
    t1, _ = await udpio.listen(Collector, host, 0, reuse_port=True)
    port = t1.get_extra_info("sockname")[1]
    t2, _ = await udpio.listen(Collector, host, port, reuse_port=True)
    try:
        assert t2.get_extra_info("sockname")[1] == port
    finally:
        t1.close()
        t2.close()


async def test_ipv6_socket_is_v6only() -> None:
    pytest.importorskip("socket")
    transport, _ = await udpio.listen(Collector, "::", 0)
    try:
        assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        transport.close()


async def test_connection_made_failure_closes_socket(host: str) -> None:
    class Bad(asyncio.DatagramProtocol):
        def connection_made(self, transport: object) -> None:
            raise RuntimeError("refuse to start")

    with pytest.raises(RuntimeError, match="refuse to start"):
        await udpio.listen(Bad, host, 0)
    await asyncio.sleep(0)  # let the scheduled close run; a leaked socket would fail via ResourceWarning
    await asyncio.sleep(0)


async def test_runs_on_requested_loop(loop_kind: str) -> None:
    # The no-readers loop is the standard loop (a subclass of it), and udpio says so.
    assert udpio.loop_kind() == ("asyncio" if loop_kind == NO_READERS else loop_kind)


async def test_connect_an_existing_endpoint(host: str, family: int) -> None:
    server_t, server = await udpio.listen(Collector, host, 0)
    client_t, client = await udpio.listen(Collector, host, 0)
    stranger = socket.socket(family, socket.SOCK_DGRAM)
    try:
        server_addr = server_t.get_extra_info("sockname")
        with pytest.raises(udpio.InvalidAddressError, match="localhost"):
            client_t.connect(("localhost", server_addr[1]))
        client_t.connect(server_addr[:2])
        assert client_t.get_extra_info("peername")[:2] == server_addr[:2]
        client_t.sendto(b"no address needed")
        data, peer = await server.next()
        assert data == b"no address needed"
        stranger.sendto(b"filtered", client_t.get_extra_info("sockname")[:2])
        server_t.sendto(b"back", peer)
        assert (await client.next())[0] == b"back"
        with pytest.raises(udpio.InvalidAddressError, match="already connected"):
            client_t.connect(server_addr[:2])
    finally:
        stranger.close()
        client_t.close()
        server_t.close()


async def test_set_protocol_switches_between_batch_and_single(host: str, raw_socket: socket.socket) -> None:
    batches: asyncio.Queue[list[tuple[bytes, object]]] = asyncio.Queue()

    class Batch(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[bytes, object]]) -> None:
            batches.put_nowait(batch)

    transport, single = await udpio.listen(Collector, host, 0)
    try:
        addr = transport.get_extra_info("sockname")[:2]
        raw_socket.sendto(b"one", addr)
        assert (await single.next())[0] == b"one"
        transport.set_protocol(Batch())
        raw_socket.sendto(b"two", addr)
        assert [d for d, _ in await asyncio.wait_for(batches.get(), 5)] == [b"two"]
    finally:
        transport.close()


async def test_closing_from_a_handler_accounts_for_every_datagram_read(host: str, raw_socket: socket.socket) -> None:
    """A handler that closes its transport stops delivery at once (nothing after ``close()`` reaches a
    handler); a strategy that had already read more of the socket counts those in ``dropped_on_close``, so
    every datagram read was delivered or counted."""
    delivered: list[bytes] = []

    class ClosesAtOnce(Collector):
        def datagram_received(self, data: bytes, addr: object) -> None:
            delivered.append(data)
            self.transport.close()

    transport, proto = await udpio.listen(ClosesAtOnce, host, 0)
    addr = transport.get_extra_info("sockname")[:2]
    for i in range(5):  # all queued before the loop reads
        raw_socket.sendto(bytes([i]), addr)
    await asyncio.wait_for(proto.lost, 5)
    c = transport.counters
    assert delivered == [b"\x00"]
    assert c.datagrams_in == len(delivered) + c.dropped_on_close
