"""Multicast on the loopback interface, over both loops and both families, on real sockets.

Where it runs, and why (measured on Linux 6.x):

* IPv4 runs on the host's ``lo``. ``lo`` has no MULTICAST flag, yet joining 224.0.0.0/4 groups on it and
  sending with the outgoing interface set to ``lo`` (index 1 / 127.0.0.1) delivers: the route lookup with
  the outgoing interface fixed never consults the default route. Nothing can leave the host.
* IPv6 cannot run on the host's ``lo``: the kernel makes no ``ff00::/8`` route for ``lo`` and turns any
  non-local route through ``lo`` into a reject route (net/ipv6/route.c), so a send gives ENETUNREACH
  (``test_ipv6_on_plain_lo_says_why`` pins that). The IPv6 cases therefore run in a private network
  namespace the fixture creates, whose ``lo`` gets ``local ff00::/8`` in its local table: the thread moves
  in (``setns``) for the test and back out after, and the namespace is deleted. Without root they skip.
* On ``lo`` the loopback option and TTL 0 do not stop local delivery: the datagram goes out ``lo`` and
  comes straight back in (the loop copy is made only for other devices). Their effect is tested across
  namespaces in ``test_netns.py``; here the getters are.

"Gets nothing" is checked without sleeping: after the datagram that must not arrive, a marker goes the same
way (same sender, same ``lo``), and the next datagram received must be the marker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import udpio
from udpio import _membership, _sockopts
from udpio._interfaces import resolve_interface

from ._helpers import Collector
from ._lines import Lines, stop
from ._netns import entered, ip, netns, skip_reason

#: The async tests run on the loop without add_reader too (tests/conftest.py).
pytestmark = pytest.mark.fallback

LOOPS = ["asyncio", "uvloop"]
try:
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover - uvloop is installed where these tests run
    LOOPS = ["asyncio"]

LO = socket.if_nametoindex("lo")


@dataclasses.dataclass
class Env:
    """Where a test runs: the family, two local unicast addresses on ``lo``, and the namespace if any."""

    family: int
    unicast: str  # members are reachable here (markers, answers)
    other: str  # a second local address: a source SSM must refuse
    ns: str | None

    def group(self, prefix: str = "ff01") -> str:
        """A group no other test uses at the same time."""
        if self.family == socket.AF_INET:
            return f"239.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        return f"{prefix}::{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}"

    def kernel_groups(self) -> set[str]:
        """Groups joined on ``lo`` by any socket, as the kernel lists them (this thread's namespace)."""
        if self.family == socket.AF_INET:
            groups = set()
            device = None
            with open("/proc/thread-self/net/igmp", encoding="ascii") as table:
                for line in table.read().splitlines()[1:]:
                    fields = line.split()
                    if not line.startswith("\t"):
                        device = fields[1]
                    elif device == "lo":
                        groups.add(socket.inet_ntoa(struct.pack("=I", int(fields[0], 16))))
            return groups
        with open("/proc/thread-self/net/igmp6", encoding="ascii") as table:
            return {
                socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[2]))
                for fields in (line.split() for line in table)
                if fields[1] == "lo"
            }


@pytest.fixture(params=["ipv4", "ipv6"])
def mc(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "ipv4":
        yield Env(socket.AF_INET, "127.0.0.1", "127.0.0.2", None)
        return
    reason = skip_reason()
    if reason:
        pytest.skip(f"IPv6 multicast over lo needs a namespace with a local ff00::/8 route: {reason}")
    with netns("mc6") as ns:
        ip("-6", "route", "add", "local", "ff00::/8", "dev", "lo", "table", "local", ns=ns)
        ip("-6", "addr", "add", "fd00:7::2/128", "dev", "lo", "nodad", ns=ns)
        with entered(ns):
            yield Env(socket.AF_INET6, "::1", "fd00:7::2", ns)


async def listen_member(group: str | list[str] | None, port: int = 0, **options: Any) -> tuple[Any, Collector]:
    return await udpio.listen_multicast(Collector, port, group=group, **options)


async def close(transport: Any, proto: Collector) -> None:
    udpio.multicast(transport).close()
    await proto.lost


def port_of(transport: Any) -> int:
    return int(transport.get_extra_info("sockname")[1])


async def expect(proto: Collector, payload: bytes) -> Any:
    """The next datagram must be ``payload``; returns the sender."""
    item = await proto.next()
    assert not isinstance(item, BaseException), item
    data, addr = item
    assert data == payload
    return addr


# -- joining, receiving, leaving ----------------------------------------------------------------------


@pytest.mark.usefixtures("receive_strategy")
async def test_join_receive_leave(mc: Env) -> None:
    group = mc.group()
    transport, proto = await listen_member(group)
    control = udpio.multicast(transport)
    port = port_of(transport)
    async with await udpio.open_multicast(family=mc.family) as sender:
        try:
            [membership] = control.groups
            assert (membership.group, membership.interface.name, membership.source) == (group, "lo", None)
            assert group in mc.kernel_groups()
            await sender.send(b"one", (group, port))
            sender_addr = await expect(proto, b"one")
            assert sender_addr[:2] == sender.local_address[:2] or sender_addr[0] == mc.unicast

            left = control.leave_group(group)
            assert left == udpio.GroupLeft(membership)
            assert control.groups == frozenset()
            assert group not in mc.kernel_groups()
            await sender.send(b"after leave", (group, port))
            await sender.send(b"marker", (mc.unicast, port))
            await expect(proto, b"marker")
        finally:
            await close(transport, proto)


@pytest.mark.usefixtures("receive_strategy")
async def test_several_groups_on_one_socket(mc: Env) -> None:
    groups = [mc.group() for _ in range(3)]
    transport, proto = await listen_member(groups[:2])
    control = udpio.multicast(transport)
    port = port_of(transport)
    async with await udpio.open_multicast(family=mc.family) as sender:
        try:
            joined = control.join_group(groups[2], "lo")
            assert isinstance(joined, udpio.GroupJoined)
            assert {m.group for m in control.groups} == set(groups)
            for group in groups:
                await sender.send(group.encode(), (group, port))
            for group in groups:
                await expect(proto, group.encode())
            control.leave_group(groups[1])
            assert {m.group for m in control.groups} == {groups[0], groups[2]}
            for group in groups:
                await sender.send(group.encode(), (group, port))
            await expect(proto, groups[0].encode())
            await expect(proto, groups[2].encode())  # groups[1] was sent in between and is not delivered
        finally:
            await close(transport, proto)


@pytest.mark.parametrize("mc", ["ipv6"], indirect=True)
async def test_ipv6_link_local_group_by_index(mc: Env) -> None:
    group = mc.group("ff02")
    transport, proto = await listen_member(group, interface=LO)
    port = port_of(transport)
    async with await udpio.open_multicast(family=mc.family, interface=LO) as sender:
        try:
            assert udpio.multicast(transport).interface == resolve_interface("lo", socket.AF_INET6)
            await sender.send(b"link-local", (group, port))
            await expect(proto, b"link-local")
        finally:
            await close(transport, proto)


# -- errors with names --------------------------------------------------------------------------------


async def test_join_twice_is_already_joined(mc: Env) -> None:
    group = mc.group()
    transport, proto = await listen_member(group)
    try:
        with pytest.raises(udpio.AlreadyJoinedError, match=rf"already joined group {group} on interface lo$") as info:
            udpio.multicast(transport).join_group(group)
        assert info.value.errno == errno.EADDRINUSE
        assert (info.value.group, info.value.interface.name, info.value.source) == (group, "lo", None)
        assert isinstance(info.value, OSError)
        assert len(udpio.multicast(transport).groups) == 1
    finally:
        await close(transport, proto)


async def test_leave_not_joined_is_not_joined(mc: Env) -> None:
    group = mc.group()
    transport, proto = await listen_member(None, family=mc.family)
    try:
        with pytest.raises(udpio.NotJoinedError, match=rf"not joined: group {group} on interface lo$") as info:
            udpio.multicast(transport).leave_group(group)
        assert info.value.errno == errno.EADDRNOTAVAIL
        assert info.value.group == group
    finally:
        await close(transport, proto)


async def test_unicast_address_as_group_is_refused(mc: Env) -> None:
    expected = r"multicast group must be an IPv4 address in 224\.0\.0\.0/4 or an IPv6 address in ff00::/8, got "
    with pytest.raises(udpio.InvalidGroupError, match=expected + repr(mc.unicast)) as info:
        await listen_member(mc.unicast)
    assert isinstance(info.value, ValueError) and info.value.value == mc.unicast
    transport, proto = await listen_member(None, family=mc.family)
    try:
        with pytest.raises(udpio.InvalidGroupError, match=repr(mc.unicast)):
            udpio.multicast(transport).join_group(mc.unicast)
        other_family = "239.1.2.3" if mc.family == socket.AF_INET6 else "ff01::1"
        with pytest.raises(udpio.InvalidGroupError, match=r"must be an IPv\d multicast address"):
            udpio.multicast(transport).join_group(other_family)
        # Below udpio's check the kernel says EINVAL, which is not in the errno table: re-raised unchanged.
        sock = transport.get_extra_info("socket")
        with pytest.raises(OSError) as raw:
            _membership.join_group(sock, mc.unicast, resolve_interface("lo", mc.family))
        assert raw.value.errno == errno.EINVAL and not isinstance(raw.value, udpio.MembershipError)
    finally:
        await close(transport, proto)


@pytest.mark.parametrize("bad", ["nope0", 99999, "10.255.255.1", "fd00:dead::1", "0.0.0.0", 0, ""])
async def test_unknown_interface_is_named(mc: Env, bad: object) -> None:
    with pytest.raises(udpio.UnknownInterfaceError, match=rf"^interface must be .*, got {bad!r}$") as info:
        await listen_member(mc.group(), interface=bad)
    assert isinstance(info.value, ValueError) and info.value.value == bad
    transport, proto = await listen_member(None, family=mc.family)
    try:
        with pytest.raises(udpio.UnknownInterfaceError, match=repr(bad)):
            udpio.multicast(transport).join_group(mc.group(), interface=bad)  # type: ignore[arg-type]
        with pytest.raises(udpio.UnknownInterfaceError):
            udpio.multicast(transport).interface = bad  # type: ignore[assignment]
    finally:
        await close(transport, proto)


async def test_interface_by_name_index_and_address_is_the_same(mc: Env) -> None:
    by_name = resolve_interface("lo", mc.family)
    assert by_name == resolve_interface(LO, mc.family) == resolve_interface(mc.unicast, mc.family)
    assert (by_name.index, by_name.name, by_name.address) == (LO, "lo", mc.unicast)
    for spec in ("lo", LO, mc.unicast, by_name):
        group = mc.group()
        transport, proto = await listen_member(group, interface=spec)
        try:
            control = udpio.multicast(transport)
            assert control.interface == by_name
            assert [m.interface for m in control.groups] == [by_name]
        finally:
            await close(transport, proto)


async def test_getters_read_what_the_socket_has(mc: Env) -> None:
    transport, proto = await listen_member(mc.group())
    control = udpio.multicast(transport)
    sock = transport.get_extra_info("socket")
    ipv4 = mc.family == socket.AF_INET
    level = socket.IPPROTO_IP if ipv4 else socket.IPPROTO_IPV6
    ttl_option = socket.IP_MULTICAST_TTL if ipv4 else socket.IPV6_MULTICAST_HOPS
    loop_option = socket.IP_MULTICAST_LOOP if ipv4 else socket.IPV6_MULTICAST_LOOP
    try:
        assert (control.ttl, control.loopback, control.interface.name) == (1, True, "lo")  # type: ignore[union-attr]
        control.ttl = 7
        control.loopback = False
        # Read back independently of udpio, with plain getsockopt.
        assert (control.ttl, sock.getsockopt(level, ttl_option)) == (7, 7)
        assert (control.loopback, sock.getsockopt(level, loop_option)) == (False, 0)
        if ipv4:
            assert socket.inet_ntoa(sock.getsockopt(level, socket.IP_MULTICAST_IF, 4)) == "127.0.0.1"
        else:
            assert sock.getsockopt(level, socket.IPV6_MULTICAST_IF) == LO
        control.ttl = 0
        control.loopback = True
        assert (control.ttl, control.loopback) == (0, True)
        assert _membership.get_multicast_all(sock) is False  # only groups this socket joined
        assert _sockopts.describe(sock)["reuse_addr"] is False  # shared ports are off by default
        for bad in (256, -1, True, "1"):
            expected = rf"ttl must be an int in 0\.\.255 \(hops\), got {bad!r}"
            with pytest.raises(udpio.InvalidArgumentError, match=expected):
                control.ttl = bad  # type: ignore[assignment]
        with pytest.raises(udpio.InvalidArgumentError, match="loopback must be True or False, got 1"):
            control.loopback = 1  # type: ignore[assignment]
        assert control.ttl == 0
    finally:
        await close(transport, proto)


async def test_listen_options_are_applied(mc: Env) -> None:
    transport, proto = await listen_member(mc.group(), ttl=9, loopback=False)
    try:
        control = udpio.multicast(transport)
        assert (control.ttl, control.loopback) == (9, False)
    finally:
        await close(transport, proto)


async def test_on_lo_loopback_and_ttl_do_not_stop_local_delivery(mc: Env) -> None:
    """Pins the kernel behaviour the docs state: on ``lo`` the datagram itself comes back in."""
    group = mc.group()
    transport, proto = await listen_member(group)
    try:
        async with await udpio.open_multicast(family=mc.family, ttl=0, loopback=False) as sender:
            await sender.send(b"still here", (group, port_of(transport)))
            await expect(proto, b"still here")
    finally:
        await close(transport, proto)


# -- source-specific multicast ------------------------------------------------------------------------


@pytest.mark.usefixtures("receive_strategy")
async def test_ssm_delivers_only_from_the_allowed_source(mc: Env) -> None:
    # The SSM ranges (RFC 4607): 232.0.0.0/8 and ff3x::/32; Linux does not insist on them.
    ssm_v4 = f"232.{random.randint(1, 254)}.0.{random.randint(1, 254)}"
    group = mc.group("ff31") if mc.family == socket.AF_INET6 else ssm_v4
    transport, proto = await listen_member(group, source=mc.unicast)
    port = port_of(transport)
    control = udpio.multicast(transport)
    allowed = await udpio.open_multicast(family=mc.family, host=mc.unicast)
    other = await udpio.open_multicast(family=mc.family, host=mc.other)
    try:
        [membership] = control.groups
        assert membership.source == mc.unicast
        await other.send(b"from the other source", (group, port))
        await allowed.send(b"from the allowed source", (group, port))
        sender = await expect(proto, b"from the allowed source")
        assert sender[0] == mc.unicast

        with pytest.raises(udpio.AlreadyJoinedError, match=f"from source {mc.unicast}$") as info:
            control.join_group(group, source=mc.unicast)
        assert info.value.source == mc.unicast
        control.join_group(group, source=mc.other)  # a second source for the same group
        await other.send(b"now allowed", (group, port))
        await expect(proto, b"now allowed")

        control.leave_group(group, source=mc.other)
        with pytest.raises(udpio.NotJoinedError, match=f"from source {mc.other}$"):
            control.leave_group(group, source=mc.other)
        control.leave_group(group, source=mc.unicast)
        with pytest.raises(udpio.NotJoinedError):  # no membership of the group at all: EINVAL on Linux
            control.leave_group(group, source=mc.unicast)
        assert control.groups == frozenset()
        with pytest.raises(udpio.InvalidAddressError, match="source must be a unicast"):
            control.join_group(group, source=group)
    finally:
        await allowed.aclose()
        await other.aclose()
        await close(transport, proto)


async def test_any_source_leave_drops_the_sources_too(mc: Env) -> None:
    group = mc.group()
    transport, proto = await listen_member(group, source=mc.unicast)
    try:
        control = udpio.multicast(transport)
        control.join_group(group, source=mc.other)
        control.leave_group(group)
        assert control.groups == frozenset()
        assert group not in mc.kernel_groups()
    finally:
        await close(transport, proto)


# -- shared ports ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("receive_strategy")
async def test_shared_port_two_members_both_receive(mc: Env) -> None:
    group = mc.group()
    first, proto1 = await listen_member(group, listen_multiple=True)
    port = port_of(first)
    second, proto2 = await listen_member(group, port, listen_multiple=True)
    try:
        for transport in (first, second):
            info = _sockopts.describe(transport.get_extra_info("socket"))
            assert info["reuse_addr"] is True and info["reuse_port"] is True
        async with await udpio.open_multicast(family=mc.family) as sender:
            await sender.send(b"to both", (group, port))
            await expect(proto1, b"to both")
            await expect(proto2, b"to both")
    finally:
        await close(first, proto1)
        await close(second, proto2)


async def test_port_is_not_shared_unless_asked(mc: Env) -> None:
    first, proto = await listen_member(mc.group())
    try:
        with pytest.raises(OSError, match="cannot bind UDP socket") as info:
            await listen_member(mc.group(), port_of(first))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        await close(first, proto)


@pytest.mark.usefixtures("receive_strategy")
async def test_non_member_on_the_same_port_gets_nothing(mc: Env) -> None:
    """IP_MULTICAST_ALL is off: a socket gets the groups it joined, not every group joined on its port."""
    group, other_group = mc.group(), mc.group()
    member, proto1 = await listen_member(group, listen_multiple=True)
    port = port_of(member)
    bystander, proto2 = await listen_member(other_group, port, listen_multiple=True)
    try:
        async with await udpio.open_multicast(family=mc.family) as sender:
            await sender.send(b"for members", (group, port))
            await sender.send(b"marker", (other_group, port))
            await expect(proto1, b"for members")
            await expect(proto2, b"marker")
    finally:
        await close(member, proto1)
        await close(bystander, proto2)


# -- lifecycle --------------------------------------------------------------------------------------------


async def test_close_leaves_every_group(mc: Env) -> None:
    groups = [mc.group(), mc.group()]
    transport, proto = await listen_member(groups)
    control = udpio.multicast(transport)
    assert set(groups) <= mc.kernel_groups()
    left = control.close()
    assert {event.membership.group for event in left} == set(groups)
    assert not set(groups) & mc.kernel_groups()  # left before the socket even closed
    assert control.groups == frozenset() and transport.is_closing()
    assert control.close() == []  # idempotent
    with pytest.raises(udpio.EndpointClosedError, match="multicast endpoint is closed"):
        control.join_group(groups[0])
    with pytest.raises(udpio.EndpointClosedError):
        _ = control.ttl
    await proto.lost


async def test_failed_setup_leaves_and_closes(mc: Env) -> None:
    """Regression: set-up that joined a group and then failed must not keep the membership or the socket.

    Root cause guarded against: a join loop that raises half-way and returns without leaving the groups
    already joined nor closing the socket (left for the garbage collector).
    """
    group = mc.group()
    with pytest.raises(udpio.AlreadyJoinedError):
        await listen_member([group, group])
    assert group not in mc.kernel_groups()

    class Boom(Exception):
        pass

    def failing_factory() -> Collector:
        raise Boom

    other = mc.group()
    with pytest.raises(Boom):
        await udpio.listen_multicast(failing_factory, 0, group=other)
    assert other not in mc.kernel_groups()  # the socket was closed: the kernel dropped the membership


@pytest.mark.parametrize("mc", ["ipv4"], indirect=True)  # net.ipv4.igmp_max_memberships: IPv4 only
async def test_membership_limit_is_explained(mc: Env) -> None:
    limit = int(Path("/proc/sys/net/ipv4/igmp_max_memberships").read_text())  # noqa: ASYNC240  # procfs: instant
    if limit > 200:
        pytest.skip(f"igmp_max_memberships is {limit}: too many joins for a unit test")
    transport, proto = await listen_member(None)
    try:
        control = udpio.multicast(transport)
        for _ in range(limit):
            control.join_group(mc.group())
        with pytest.raises(OSError, match="igmp_max_memberships") as info:
            control.join_group(mc.group())
        assert info.value.errno == errno.ENOBUFS
    finally:
        await close(transport, proto)


async def test_multicast_control_needs_a_multicast_transport(host: str) -> None:
    transport, proto = await udpio.listen(Collector, host, 0)
    try:
        expected = r"transport must be a transport made by udpio\.listen_multicast"
        with pytest.raises(udpio.InvalidArgumentError, match=expected):
            udpio.multicast(transport)
    finally:
        transport.close()
        await proto.lost


async def test_ipv6_on_plain_lo_says_why() -> None:
    """A fresh namespace's lo, like a stock host's, has no IPv6 multicast route: the send says why."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with netns("noroute6") as ns, entered(ns):
        ep = await udpio.open_multicast(group="ff01::1:7")
        try:
            with pytest.raises(udpio.NoMulticastRouteError, match="no IPv6 multicast route on the loopback") as info:
                await ep.send(b"x", ("ff01::1:7", 9))
            assert info.value.errno == errno.ENETUNREACH and info.value.group == "ff01::1:7"
            # The raw transport does not raise: the protocol gets the bare errno, hence the check above.
            ep.transport.sendto(b"x", ("ff01::1:7", 9))
            with pytest.raises(OSError) as raw:
                await asyncio.wait_for(ep.recv(), 5)
            assert raw.value.errno == errno.ENETUNREACH
            await ep.send(b"unicast is not checked", ("::1", ep.local_address[1]))
            assert (await asyncio.wait_for(ep.recv(), 5))[0] == b"unicast is not checked"
        finally:
            await ep.aclose()


# -- Notify / Acknowledge -----------------------------------------------------------------------------------


def test_notify_logic_answers_bytes_with_bytes() -> None:
    logic = udpio.NotifyLogic()
    member = ("127.0.0.1", 5000)
    step = logic.feed(b"Notify", member, 1.0)
    assert step.sends == ((b"Acknowledge", member),)
    assert step.events == (udpio.NotifyReceived(member, 1.0), udpio.AcknowledgeSent(member, 1.0))
    # The tutorial's bug: it compared bytes to the str 'Notify' and never answered. Near misses are ignored.
    for other in (b"notify", b"Notify\n", b"", b"Acknowledge!"):
        assert logic.feed(other, member, 2.0).sends == ()
    assert logic.feed(b"Acknowledge", member, 3.0).events == (udpio.Acknowledged(member, 3.0),)
    assert (logic.notifies_received, logic.acknowledges_sent, logic.acknowledgements, logic.ignored) == (1, 1, 1, 4)
    quiet = udpio.NotifyLogic(answer=False)
    assert quiet.feed(b"Notify", member, 0.0).sends == ()
    assert quiet.notify(("239.1.1.1", 8001), 5.0) == udpio.NotifyStep(
        ((b"Notify", ("239.1.1.1", 8001)),), (udpio.NotifySent(("239.1.1.1", 8001), 5.0),)
    )
    with pytest.raises(udpio.InvalidArgumentError, match="got \\('Notify', b'Acknowledge'\\)"):
        udpio.NotifyLogic(notify="Notify")  # type: ignore[arg-type]


# Members bound to the wildcard answer from each Notify's local address: strategies that read it only.
@pytest.mark.usefixtures("receive_strategy")
@pytest.mark.receive_features("pktinfo")
async def test_notify_acknowledge_end_to_end(mc: Env) -> None:
    group = mc.group()
    member_events: asyncio.Queue[Any] = asyncio.Queue()
    members = []
    port = 0
    for _ in range(2):
        transport, proto = await udpio.listen_multicast(
            lambda: udpio.NotifyProtocol(on_event=member_events.put_nowait), port, group=group, listen_multiple=True
        )
        port = port_of(transport)
        members.append((transport, proto))
    sender_events: asyncio.Queue[Any] = asyncio.Queue()
    sender, sender_proto = await udpio.listen_multicast(
        lambda: udpio.NotifyProtocol(notify_to=(group, port), answer=False, on_event=sender_events.put_nowait),
        0,
        group=group,
    )
    try:
        sent = await asyncio.wait_for(sender_events.get(), 5)
        assert isinstance(sent, udpio.NotifySent) and sent.to == (group, port)
        acks = [await asyncio.wait_for(sender_events.get(), 5) for _ in range(2)]
        assert all(isinstance(a, udpio.Acknowledged) for a in acks)
        assert {a.member[:2] for a in acks} == {(mc.unicast, port)}
        seen = [await asyncio.wait_for(member_events.get(), 5) for _ in range(4)]
        assert sorted(type(e).__name__ for e in seen) == ["AcknowledgeSent"] * 2 + ["NotifyReceived"] * 2
        assert {e.sender[:2] for e in seen if isinstance(e, udpio.NotifyReceived)} == {(mc.unicast, port_of(sender))}
        assert sender_proto.logic.acknowledgements == 2
    finally:
        for transport, proto in [*members, (sender, sender_proto)]:
            udpio.multicast(transport).close()
            await proto.closed


# -- the command line ---------------------------------------------------------------------------------------


def _cli(loop: str, *args: str) -> subprocess.Popen[str]:
    # A child inherits the network namespace of the thread that starts it (the IPv6 fixture's namespace).
    return subprocess.Popen(
        [sys.executable, "-m", "udpio", "--loop", loop, "multicast", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )


@pytest.mark.parametrize("loop", LOOPS)
def test_cli_notify_and_answer(mc: Env, loop: str) -> None:
    group = mc.group()
    member = _cli(loop, group, "0", "--answer", "-c", "1", "--timeout", "30")
    sender = None
    try:
        member_err = Lines(member.stderr)  # type: ignore[arg-type]
        port = member_err.expect(r"joined .* on lo, listening on port (\d+)").group(1)
        sender = _cli(loop, group, port, "--notify", "--local-port", "0", "-c", "1", "--timeout", "30")
        out, errors = sender.communicate(timeout=30)
        assert sender.returncode == 0, errors
        assert out.split("\t")[1:] == ["11", "Acknowledge\n"]
        assert "1 Acknowledge received" in errors
        assert member.wait(30) == 0
        assert member.stdout is not None and member.stdout.read().split("\t")[1:] == ["6", "Notify\n"]
        assert member_err.expect(r"1 Notify answered, .*; left " + group.replace(".", r"\."))
    finally:
        stop(member)
        if sender is not None:
            stop(sender)


@pytest.mark.parametrize("loop", LOOPS)
def test_cli_stops_cleanly_on_ctrl_c(mc: Env, loop: str) -> None:
    member = _cli(loop, mc.group(), "0", "--hex")
    try:
        errors = Lines(member.stderr)  # type: ignore[arg-type]
        port = int(errors.expect(r"listening on port (\d+)").group(1))
        with socket.socket(mc.family, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00\x01hi", (mc.unicast, port))  # unicast: the member prints what reaches its port
        assert member.stdout is not None
        assert member.stdout.readline().rstrip("\n").split("\t")[1:] == ["4", "00 01 68 69"]
        member.send_signal(signal.SIGINT)
        assert member.wait(30) == 0
        assert errors.expect(r"1 received, 0 Notify answered, 0 Acknowledge received, 0 dropped; left ")
    finally:
        stop(member)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1"], "multicast group must be an IPv4 address in 224.0.0.0/4"),
        (["239.1.2.3", "-i", "nope0"], "an interface on this host, got 'nope0'"),
    ],
)
def test_cli_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "udpio", "multicast", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_public_names() -> None:
    for name in (
        "listen_multicast", "open_multicast", "multicast", "MulticastControl", "MulticastEndpoint", "Membership",
        "GroupJoined", "GroupLeft", "Interface", "resolve_interface", "AlreadyJoinedError", "NotJoinedError",
        "InvalidGroupError", "UnknownInterfaceError", "NoMulticastRouteError", "NotifyProtocol", "NotifyLogic",
        "Acknowledged", "NotifyReceived",
    ):
        assert name in udpio.__all__, name
    assert os.path.basename(udpio._multicast.__file__) == "_multicast.py"


@pytest.mark.usefixtures("receive_strategy")
@pytest.mark.receive_features("gro")
async def test_multicast_member_with_gro_receives_a_gso_train() -> None:
    """GRO on a multicast socket: a GSO train to the group arrives whole and in order (loopback, IPv4)."""
    group = "239.255.77.7"
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Member(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[bytes, object]]) -> None:
            for data, _ in batch:
                received.put_nowait(data)

    member, _ = await udpio.listen_multicast(Member, 0, group=group, interface="127.0.0.1", gro=True)
    sender, _ = await udpio.listen_multicast(asyncio.DatagramProtocol, 0, interface="127.0.0.1")
    try:
        port = member.get_extra_info("sockname")[1]
        payloads = [bytes([i]) * 200 for i in range(30)]
        sender.send_many(payloads, (group, port))
        assert [await asyncio.wait_for(received.get(), 5) for _ in payloads] == payloads
    finally:
        sender.close()
        member.close()
