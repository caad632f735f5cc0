"""Each datagram's local address (``IP_PKTINFO`` / ``IPV6_RECVPKTINFO``) and replies from a chosen source, on
loopback: ``datagram(s)_received_on``, ``sendto(..., source=)``, ``send_batch`` triples, the echo server and
the Notify member on the wildcard address.

Linux answers for the whole of 127.0.0.0/8 on ``lo``, so 127.0.0.2 and 127.0.0.3 serve as a second and third
address of this host without touching its configuration. IPv6 loopback has one address (::1); a second one
needs a namespace (``tests/test_deploy.py``). Sockets bound to the wildcard here are open to the host's other
interfaces for the test's duration only, and nothing is sent anywhere but to loopback.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

import udpio
from udpio import LocalAddress, _sockopts

from ._helpers import Collector

#: Every test here runs once per receive strategy that reads local addresses (tests/conftest.py).
pytestmark = [pytest.mark.usefixtures("receive_strategy"), pytest.mark.receive_features("pktinfo")]

LO = socket.if_nametoindex("lo")
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
#: The local address a test sends to, and another one of this host (IPv6 has only ::1 on lo).
TARGET = {socket.AF_INET: "127.0.0.2", socket.AF_INET6: "::1"}


class LocalBatches(Collector):
    """Takes ``(data, addr, local)`` lists."""

    def datagrams_received_on(self, batch: list[tuple[bytes, Any, LocalAddress]]) -> None:
        for item in batch:
            self.queue.put_nowait(item)


class LocalOnes(Collector):
    """Takes one ``(data, addr, local)`` call per datagram."""

    def datagram_received_on(self, data: bytes, addr: Any, local: LocalAddress) -> None:
        self.queue.put_nowait((data, addr, local))


@contextlib.asynccontextmanager
async def endpoint(factory: Any, host: str, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    transport, proto = await udpio.listen(factory, host, 0, **options)
    try:
        yield transport, proto
    finally:
        transport.close()


@pytest.mark.parametrize("factory", [LocalBatches, LocalOnes])
async def test_each_datagram_carries_the_address_it_was_sent_to(
    family: int, host: str, factory: type[Collector], receive_strategy: str
) -> None:
    async with endpoint(factory, WILDCARD[family]) as (server, proto), endpoint(Collector, host) as (client, _):
        assert server.get_extra_info("receive_strategy") == receive_strategy
        assert _sockopts.get_pktinfo(server.get_extra_info("socket"))
        port = server.get_extra_info("sockname")[1]
        targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3"] if family == socket.AF_INET else ["::1"]
        for target in targets:
            client.sendto(target.encode(), (target, port))
        for target in targets:
            data, addr, local = await proto.next()
            assert data == target.encode()
            assert addr[:2] == client.get_extra_info("sockname")[:2]
            assert local == LocalAddress(target, LO)


async def test_without_a_local_handler_the_option_stays_off(host: str, family: int, receive_strategy: str) -> None:
    """A protocol that does not take local addresses pays nothing: the option stays off."""
    async with endpoint(Collector, WILDCARD[family]) as (server, _):
        assert server.get_extra_info("receive_strategy") == receive_strategy
        assert not _sockopts.get_pktinfo(server.get_extra_info("socket"))


async def test_set_protocol_turns_the_option_on_and_off(family: int) -> None:
    async with endpoint(Collector, WILDCARD[family]) as (server, _):
        sock = server.get_extra_info("socket")
        server.set_protocol(LocalBatches())
        assert _sockopts.get_pktinfo(sock)
        server.set_protocol(Collector())
        assert not _sockopts.get_pktinfo(sock)


@pytest.mark.parametrize("as_string", [False, True], ids=["LocalAddress", "str"])
async def test_sendto_sends_from_the_source_given(family: int, host: str, as_string: bool) -> None:
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, _), endpoint(Collector, host) as (client, peer):
        dest = client.get_extra_info("sockname")
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.1"] if family == socket.AF_INET else ["::1"]
        for source in sources:
            server.sendto(source.encode(), dest, source=source if as_string else LocalAddress(source, LO))
            data, addr = await peer.next()
            assert (data, addr[0]) == (source.encode(), source)
            assert addr[1] == server.get_extra_info("sockname")[1]
        assert server.counters.datagrams_out == len(sources)
        assert server.counters.bytes_out == sum(map(len, sources))


async def test_send_batch_takes_triples(family: int, host: str) -> None:
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, _), endpoint(Collector, host) as (client, peer):
        dest = client.get_extra_info("sockname")
        second = TARGET[family]
        server.send_batch([(b"a", dest, LocalAddress(second)), (b"b", dest, None), (b"c", dest, second)])
        got = [await peer.next() for _ in range(3)]
        assert [data for data, _ in got] == [b"a", b"b", b"c"]
        assert got[0][1][0] == got[2][1][0] == second
        assert server.counters.datagrams_out == 3


async def test_send_batch_of_many_triples_keeps_order_sources_and_counts(family: int, host: str) -> None:
    """A batch long enough for the batch backend (sendmmsg where the compiled core runs): every datagram in
    order, each from its source (None: the kernel's choice), to two peers, counted once."""
    sources = [LocalAddress("127.0.0.2"), "127.0.0.3", None] if family == socket.AF_INET else ["::1", None]
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, _), endpoint(Collector, host) as (a, peer_a), \
            endpoint(Collector, host) as (b, peer_b):
        dests = [a.get_extra_info("sockname"), b.get_extra_info("sockname")]
        batch = [(b"%03d" % i, dests[i % 2], sources[i % len(sources)]) for i in range(120)]
        server.send_batch(batch)
        for index, peer in enumerate((peer_a, peer_b)):
            got = [await peer.next() for _ in range(60)]
            expected = [item for item in batch if item[1] == dests[index]]
            assert [data for data, _ in got] == [data for data, _, _ in expected]
            for (_, addr), (_, _, source) in zip(got, expected, strict=True):
                wanted = host if source is None else getattr(source, "host", source)
                assert addr[0] == wanted and addr[1] == server.get_extra_info("sockname")[1]
        assert server.counters.datagrams_out == 120
        assert server.counters.bytes_out == 360
        assert server.counters.send_errors == 0


async def test_send_batch_routes_a_source_the_kernel_refuses_and_sends_the_rest(family: int, host: str) -> None:
    """A foreign source in the middle of a batch (192.0.2.1 / 2001:db8::1, no address of this host; the
    destination is loopback): that one error goes to error_received and send_errors once, the datagrams
    before and after it are sent, in order."""
    foreign = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, proto), \
            endpoint(Collector, host) as (client, peer):
        dest = client.get_extra_info("sockname")
        batch = [(b"%d" % i, dest, foreign if i == 3 else TARGET[family]) for i in range(8)]
        server.send_batch(batch)
        assert isinstance(await proto.next(), OSError)
        got = [await peer.next() for _ in range(7)]
        assert [data for data, _ in got] == [b"%d" % i for i in range(8) if i != 3]
        assert {addr[0] for _, addr in got} == {TARGET[family]}
        assert server.counters.send_errors == 1
        assert server.counters.datagrams_out == 7


async def test_bad_sources_are_refused_by_name_with_nothing_sent(family: int, host: str) -> None:
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, _), endpoint(Collector, host) as (client, _):
        dest = client.get_extra_info("sockname")
        other = "::1" if family == socket.AF_INET else "127.0.0.1"
        with pytest.raises(udpio.InvalidAddressError, match="source must be an IPv"):
            server.sendto(b"x", dest, source=other)
        with pytest.raises(udpio.InvalidAddressError, match=r"source must be a udpio\.LocalAddress"):
            server.sendto(b"x", dest, source=7)  # type: ignore[arg-type]  # what the check is for
        with pytest.raises(udpio.InvalidAddressError, match="source must be an IP address of this host"):
            server.sendto(b"x", dest, source="localhost")
        with pytest.raises(udpio.InvalidArgumentError, match=r"batch item must be a \(data, addr, source\) triple"):
            server.send_batch([(b"a", dest, host), (b"b", dest)])  # type: ignore[list-item]  # a pair among triples
        if family == socket.AF_INET6:  # udpio's IPv6 sockets are IPv6-only: no IPv4-mapped source
            with pytest.raises(udpio.InvalidAddressError, match="IPv6-only"):
                server.sendto(b"x", dest, source="::ffff:127.0.0.1")
        assert server.counters.datagrams_out == 0


async def test_a_source_that_is_not_this_hosts_is_the_kernels_error(family: int, host: str) -> None:
    """192.0.2.1 (TEST-NET-1, RFC 5737) / 2001:db8::1 (RFC 3849) is no address of this host: the kernel
    refuses to send from it; the error goes to error_received and send_errors, as any send error does. The
    destination is loopback, so nothing could leave the machine even if it did send."""
    foreign = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    async with endpoint(LocalBatches, WILDCARD[family]) as (server, proto), endpoint(Collector, host) as (client, _):
        server.sendto(b"x", client.get_extra_info("sockname"), source=foreign)
        assert isinstance(await proto.next(), OSError)
        assert server.counters.send_errors == 1
        assert server.counters.datagrams_out == 0


def test_local_address_is_checked() -> None:
    assert LocalAddress("::1") == LocalAddress("::1", 0)
    with pytest.raises(udpio.InvalidAddressError, match="host must be an IPv4 or IPv6 address"):
        LocalAddress("example.com")
    with pytest.raises(udpio.InvalidAddressError, match="interface goes in interface="):
        LocalAddress("fe80::1%lo")
    with pytest.raises(udpio.InvalidArgumentError, match="interface must be an interface index"):
        LocalAddress("::1", -1)
    with pytest.raises(udpio.InvalidArgumentError, match="interface must be an interface index"):
        LocalAddress("::1", True)
    with pytest.raises(AttributeError):
        LocalAddress("::1").host = "::2"  # type: ignore[misc]  # frozen


# -- the echo server and the Notify member ---------------------------------------------------------------


@pytest.mark.parametrize("connected", [True, False], ids=["connected client", "unconnected client"])
async def test_echo_on_the_wildcard_answers_from_the_address_asked(family: int, host: str, connected: bool) -> None:
    """The issue's reproduction on loopback: a request to the second address is answered from it, so a
    connected client (which the kernel gives only its peer's datagrams) gets its reply."""
    target = TARGET[family]
    async with await udpio.start_echo(WILDCARD[family], 0) as server:
        if connected:
            client, peer = await udpio.connect(Collector, target, server.port)
        else:
            client, peer = await udpio.listen(Collector, host, 0)
        try:
            for payload in (b"one", b"", b"three"):
                client.sendto(payload, None if connected else (target, server.port))
                data, addr = await peer.next()
                assert (data, addr[:2]) == (payload, (target, server.port))
        finally:
            client.close()
        assert server.counters.datagrams_out == 3


async def test_echo_without_reply_from_local_answers_by_route() -> None:
    """The control: with the option off, the wildcard-bound server answers 127.0.0.2's request from
    127.0.0.1 (the kernel's choice by route), the reply a connected client would drop."""
    async with await udpio.start_echo("0.0.0.0", 0, reply_from_local=False) as server:
        client, peer = await udpio.listen(Collector, "127.0.0.1", 0)
        try:
            client.sendto(b"x", ("127.0.0.2", server.port))
            _, addr = await peer.next()
            assert addr == ("127.0.0.1", server.port)
        finally:
            client.close()


async def test_echo_on_a_specific_address_leaves_the_option_off(host: str) -> None:
    async with await udpio.start_echo(host, 0) as server:
        assert server.protocol.datagrams_received_on is None
        assert not _sockopts.get_pktinfo(server.transport.get_extra_info("socket"))
    with pytest.raises(udpio.InvalidArgumentError, match="reply_from_local must be None, True or False"):
        await udpio.start_echo(host, 0, reply_from_local=1)  # type: ignore[arg-type]  # what the check is for


async def test_echo_policy_still_decides_with_local_addresses() -> None:
    """The policy sees the same sources as before: a per-source limit (loopback not exempt here) answers a
    burst of two and refuses the third, counted; the source chosen for the answers changes nothing. (IPv4:
    the marker needs a second source host, and per-source means per host.)"""
    policy = udpio.SafetyPolicy(rate=0.001, burst=2, global_rate=None, exempt=[])
    async with await udpio.start_echo("0.0.0.0", 0, policy=policy) as server:
        dest = ("127.0.0.2", server.port)
        client, peer = await udpio.listen(Collector, "127.0.0.1", 0)
        other, other_peer = await udpio.listen(Collector, "127.0.0.4", 0)
        try:
            for payload in (b"a", b"b", b"c"):
                client.sendto(payload, dest)
            assert [await peer.next() for _ in range(2)] == [(b"a", dest), (b"b", dest)]
            other.sendto(b"marker", dest)  # answered after the refused one: the server reads in order
            assert await other_peer.next() == (b"marker", dest)
        finally:
            client.close()
            other.close()
        assert server.counters.policy_drops == {"source_rate": 1}


@pytest.mark.receive_features("gro")
async def test_gro_trains_carry_their_local_address(family: int, host: str) -> None:
    server, proto = await udpio.listen(LocalBatches, WILDCARD[family], 0, gro=True, rcvbuf=1 << 20)
    try:
        if not server.get_extra_info("gro"):
            pytest.skip("kernel without UDP_GRO")
        client, _ = await udpio.listen(Collector, host, 0)
        try:
            payloads = [bytes([i]) * 1000 for i in range(32)] + [b"short"]
            client.send_many(payloads, (TARGET[family], server.get_extra_info("sockname")[1]))
            got = [await proto.next() for _ in payloads]
        finally:
            client.close()
        assert [data for data, _, _ in got] == payloads
        assert {local for _, _, local in got} == {LocalAddress(TARGET[family], LO)}
        assert server.counters.gro_batches >= 1, "the kernel delivered the GSO train without coalescing it"
    finally:
        server.close()


class LocalViews(Collector):
    """Copies each zero-copy view during the call (the view is released when the handler returns)."""

    def datagrams_received_on(self, batch: list[tuple[memoryview, Any, LocalAddress]]) -> None:
        for view, addr, local in batch:
            self.queue.put_nowait((type(view), bytes(view), addr, local))


@pytest.mark.receive_features("zero_copy")
async def test_zero_copy_views_carry_their_local_address(family: int, host: str) -> None:
    async with endpoint(LocalViews, WILDCARD[family], zero_copy=True) as (server, proto):
        async with endpoint(Collector, host) as (client, _):
            port = server.get_extra_info("sockname")[1]
            for payload in (b"v1", b"v2"):
                client.sendto(payload, (TARGET[family], port))
            for payload in (b"v1", b"v2"):
                kind, data, _, local = await proto.next()
                assert (kind, data, local) == (memoryview, payload, LocalAddress(TARGET[family], LO))


async def test_dual_stack_socket_reports_and_answers_ipv4_peers_mapped() -> None:
    """An adopted dual-stack socket (IPV6_V6ONLY off, as Twisted's IPv6 ports on Linux): an IPv4 peer's
    datagram to 127.0.0.2 reports ``::ffff:127.0.0.2`` (IP_PKTINFO wins over IPV6_PKTINFO), and the reply
    from it reaches the IPv4 client from 127.0.0.2; an IPv6 peer gets ::1. A source of the other family than
    the peer is refused by name."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setblocking(False)
    sock.bind(("::", 0))
    try:
        server, proto = await udpio.adopt(LocalBatches, sock)
    finally:
        sock.close()
    try:
        port = server.get_extra_info("sockname")[1]
        assert _sockopts.get_pktinfo(server.get_extra_info("socket"))
        for family, client_host, target, seen in (
            (socket.AF_INET, "127.0.0.1", "127.0.0.2", "::ffff:127.0.0.2"),
            (socket.AF_INET6, "::1", "::1", "::1"),
        ):
            client, peer = await udpio.listen(Collector, client_host, 0)
            try:
                client.sendto(b"q", (target, port))
                data, addr, local = await proto.next()
                assert (data, local) == (b"q", LocalAddress(seen, LO))
                server.sendto(b"r", addr, source=local)
                assert (await peer.next()) == (b"r", (target, port) if family == socket.AF_INET else
                                              (target, port, 0, 0))
                wrong = "::1" if family == socket.AF_INET else "::ffff:127.0.0.1"
                with pytest.raises(udpio.InvalidAddressError, match="source must be an IPv"):
                    server.sendto(b"x", addr, source=wrong)
            finally:
                client.close()
    finally:
        server.close()


async def test_notify_member_on_the_wildcard_acknowledges_from_the_address_asked() -> None:
    async with contextlib.AsyncExitStack() as stack:
        member_t, member = await udpio.listen(udpio.NotifyProtocol, "0.0.0.0", 0)
        stack.callback(member_t.close)
        assert member.datagram_received_on is not None
        client, peer = await udpio.connect(Collector, "127.0.0.3", member_t.get_extra_info("sockname")[1])
        stack.callback(client.close)
        client.sendto(b"Notify")
        assert (await peer.next())[0] == b"Acknowledge"  # a connected client: it came from 127.0.0.3
        assert member.logic.acknowledges_sent == 1
