"""The echo server is safe by default, on real sockets: no amplification, no loops, rate limits, allow/deny.

"Spoofed-like" sources are real: sockets bound to the listed service ports (the tests run as root) on
addresses of 127.0.0.0/8 picked at random, so they do not collide with services of the host or other tests;
port 0 and the server's own address, which no ordinary socket can send from, are forged with a raw socket
(the kernel builds the IP header from the raw socket's bound loopback address; the UDP header is ours).

"No reply" is checked without sleeping: after the datagrams that must not be answered, a marker goes to the
server from another socket; the server handles its socket's queue in order and a loopback send lands in the
receiver's queue during the ``sendto`` call, so once the marker's echo is back, any reply would already be
waiting in the silent socket's queue, and a non-blocking read must find it empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import udpio
from udpio._policy import DEFAULT_BLOCKED_PORTS

from .conftest import IPV6, NoReadersLoop

#: The async tests run on the loop without add_reader too (tests/conftest.py).
pytestmark = pytest.mark.fallback

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="binding ports below 1024 and raw sockets need root")
#: The ports the issue names; DEFAULT_BLOCKED_PORTS holds them and a few more known reflectors.
ISSUE_PORTS = (7, 13, 17, 19, 37, 53, 123, 161, 1900, 5353, 11211)
TIMEOUT = 10.0


def _random_loopback() -> str:
    """An address of 127.0.0.0/8 other than 127.0.0.1 (all of it is loopback on Linux)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def bind_udp(port: int, host: str | None = None, family: int = socket.AF_INET) -> socket.socket:
    """A UDP socket bound to ``port`` on a loopback address (a random 127/8 one for IPv4 unless given)."""
    for _ in range(20):
        address = host if host is not None else "::1" if family == socket.AF_INET6 else _random_loopback()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or host is not None:
                raise
            continue
        sock.setblocking(False)
        return sock
    raise AssertionError(f"no free loopback address for port {port}")


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrived on ``sock`` (call after a barrier)."""
    with pytest.raises(BlockingIOError):
        sock.recvfrom(70000)


async def recv_on(sock: socket.socket) -> tuple[bytes, Any]:
    """Await the next datagram on a plain non-blocking socket through the loop's reader (uvloop has no
    ``sock_recvfrom``)."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, NoReadersLoop):
        # The loop without readiness callbacks (tests/conftest.py) has sock_recvfrom (Python 3.11+).
        if sys.version_info < (3, 11):  # pragma: no cover
            pytest.skip("the client side needs loop.sock_recvfrom (Python 3.11+) on the loop without add_reader")
        return await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), TIMEOUT)
    arrived: asyncio.Future[tuple[bytes, Any]] = loop.create_future()

    def readable() -> None:
        if arrived.done():
            return
        try:
            arrived.set_result(sock.recvfrom(70000))
        except BlockingIOError:
            pass
        except OSError as exc:
            arrived.set_exception(exc)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await asyncio.wait_for(arrived, TIMEOUT)
    finally:
        loop.remove_reader(sock.fileno())


async def echo_of(sock: socket.socket, data: bytes, dest: Any) -> tuple[bytes, Any]:
    """Send from a non-blocking socket and await the reply on the loop (no thread, no sleep)."""
    sock.setblocking(False)
    sock.sendto(data, dest)  # loopback: the kernel queues it at the receiver within this call
    return await recv_on(sock)


async def barrier(server: udpio.EchoServer, marker: socket.socket) -> None:
    """Return once the server has handled everything sent to it before this call."""
    token = os.urandom(8)
    data, _ = await echo_of(marker, token, server.address)
    assert data == token


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def forge(family: int, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """Send one UDP datagram with a source address and port of our choosing, on loopback only.

    IPv4: a raw IPPROTO_UDP socket bound to the source address; the kernel writes the IP header, we write the
    UDP header with checksum 0 ("none", RFC 768). IPv6 requires a checksum: IPV6_CHECKSUM (RFC 3542 3.1)
    makes the kernel compute it at offset 6 of what we send.
    """
    assert src[0].startswith(("127.", "::1")) and dst[0].startswith(("127.", "::1"))  # loopback only
    header = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 6)
        raw.bind((src[0], 0))
        raw.sendto(header + payload, (dst[0], 0))


@contextlib.contextmanager
def sockets(*socks: socket.socket) -> Iterator[tuple[socket.socket, ...]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def adds_up(c: udpio.Counters) -> None:
    """Every datagram received was answered or dropped under a reason; the reasons sum to the total."""
    assert c.datagrams_in == c.datagrams_out + c.dropped_policy + c.dropped_send_buffer + c.send_errors, c
    assert sum(c.policy_drops.values()) == c.dropped_policy


# -- no amplification ----------------------------------------------------------------------------


async def test_reply_is_the_request_never_larger(host: str, family: int) -> None:
    limit = udpio.MAX_PAYLOAD_IPV4 if family == socket.AF_INET else udpio.MAX_PAYLOAD_IPV6
    sizes = [0, 1, 64, 1200, 1472, 8192, 40000, limit]
    async with await udpio.start_echo(host, 0) as server:
        with sockets(socket.socket(family, socket.SOCK_DGRAM)) as (client,):
            client.bind((host, 0))
            for size in sizes:
                request = os.urandom(size)
                reply, peer = await echo_of(client, request, server.address)
                assert reply == request  # same bytes, so never larger
                assert peer[:2] == server.address[:2]
            assert_silent(client)  # one reply per request, no more
        c = server.counters
        assert c.datagrams_in == c.datagrams_out == len(sizes)
        assert c.bytes_out == c.bytes_in == sum(sizes)
        adds_up(c)


async def test_max_size_drops_instead_of_answering(host: str, family: int) -> None:
    async with await udpio.start_echo(host, 0, max_size=100) as server:
        with sockets(socket.socket(family, socket.SOCK_DGRAM)) as (client,):
            client.bind((host, 0))
            client.setblocking(False)
            client.sendto(b"x" * 101, server.address)
            assert (await echo_of(client, b"y" * 100, server.address))[0] == b"y" * 100
            assert_silent(client)
        assert server.counters.dropped_oversize == 1


# -- no loops: service ports, port 0, own port ------------------------------------------------------------


@needs_root
async def test_no_reply_to_any_service_port_ipv4() -> None:
    async with await udpio.start_echo("127.0.0.1", 0) as server:
        ports = sorted(DEFAULT_BLOCKED_PORTS)
        assert set(ISSUE_PORTS) <= set(ports)
        with sockets(*(bind_udp(p) for p in ports), bind_udp(0, "127.0.0.1")) as socks:
            *services, marker = socks
            for sock in services:
                sock.sendto(b"start a loop", server.address)
            await barrier(server, marker)
            for sock in services:
                assert_silent(sock)
        c = server.counters
        assert c.policy_drops == {udpio.DROP_SERVICE_PORT: len(ports)}
        assert c.datagrams_out == 1  # the marker
        adds_up(c)


@needs_root
@pytest.mark.skipif(not IPV6, reason="IPv6 loopback ::1 cannot be bound")
async def test_no_reply_to_service_ports_ipv6() -> None:
    async with await udpio.start_echo("::1", 0) as server:
        services = []
        try:
            for port in ISSUE_PORTS:
                try:
                    services.append(bind_udp(port, "::1", socket.AF_INET6))
                except OSError as exc:  # a service of this host really listens there: test the others
                    if exc.errno != errno.EADDRINUSE:
                        raise
            assert len(services) >= len(ISSUE_PORTS) - 2
            with sockets(bind_udp(0, "::1", socket.AF_INET6)) as (marker,):
                for sock in services:
                    sock.sendto(b"start a loop", server.address)
                await barrier(server, marker)
                for sock in services:
                    assert_silent(sock)
        finally:
            for sock in services:
                sock.close()
        assert server.counters.policy_drops == {udpio.DROP_SERVICE_PORT: len(services)}


@needs_root
async def test_forged_port_zero_and_own_address_are_dropped(host: str, family: int) -> None:
    async with await udpio.start_echo(host, 0) as server:
        with sockets(bind_udp(0, host, family)) as (marker,):
            forge(family, (host, 0), server.address[:2], b"from port zero")
            # Forged to come from the server itself: answering would echo to itself forever.
            forge(family, server.address[:2], server.address[:2], b"from myself")
            await barrier(server, marker)
        c = server.counters
        assert c.policy_drops == {udpio.DROP_SOURCE_PORT_ZERO: 1, udpio.DROP_OWN_PORT: 1}
        assert c.datagrams_in == 3 and c.datagrams_out == 1
        adds_up(c)


@needs_root
async def test_without_the_guard_a_forged_self_datagram_loops(host: str, family: int) -> None:
    """The hazard the guard removes, shown on real sockets (and proof the test above can fail)."""
    server = await udpio.start_echo(host, 0, policy=None)
    try:
        forge(family, server.address[:2], server.address[:2], b"ping-pong")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while server.counters.datagrams_in < 100:  # it answers itself, again and again
            assert loop.time() < deadline, server.counters
            await asyncio.sleep(0.01)  # paced polling: the loop under test has no event to wait on
    finally:
        server.transport.abort()  # stop the loop at once
        await server.wait_closed()


@needs_root
async def test_echo_and_chargen_style_loop_is_broken() -> None:
    """A peer that answers everything (an unprotected echo on port 7) sends to a protected server: the
    server does not answer, so the ping-pong never starts. Without the guard it does (control)."""
    for guarded in (True, False):
        peer = await udpio.start_echo(_random_loopback(), 7, policy=None)
        server = await udpio.start_echo("127.0.0.1", 0, policy="default" if guarded else None)
        try:
            peer.transport.sendto(b"loop?", server.address)
            if guarded:
                with sockets(bind_udp(0, "127.0.0.1")) as (marker,):
                    await barrier(server, marker)
                assert server.counters.policy_drops == {udpio.DROP_SERVICE_PORT: 1}
                assert peer.counters.datagrams_in == 0
            else:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + TIMEOUT
                while peer.counters.datagrams_in < 50:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.01)  # paced polling of a loop that has no end event
        finally:
            for s in (peer, server):
                s.transport.abort()
                await s.wait_closed()


@needs_root
async def test_two_protected_twins_on_one_port_do_not_loop() -> None:
    """Two instances of the service on the same port (two hosts, here two loopback addresses): a datagram
    forged from one to the other is refused as coming from the server's own port."""
    first = await udpio.start_echo(_random_loopback(), 0)
    try:
        second = await udpio.start_echo(_random_loopback(), first.port)
        try:
            first.transport.sendto(b"twin", second.address)
            with sockets(bind_udp(0, "127.0.0.1")) as (marker,):
                await barrier(second, marker)
            assert second.counters.policy_drops == {udpio.DROP_OWN_PORT: 1}
            assert first.counters.datagrams_in == 0
        finally:
            await second.shutdown()
    finally:
        await first.shutdown()


# -- rate limits -------------------------------------------------------------------------------------


async def test_per_source_rate_limit_answers_exactly_the_burst() -> None:
    # 0.001 datagrams/s: no token comes back during the test, so exactly `burst` are answered.
    policy = udpio.SafetyPolicy(rate=0.001, burst=5, global_rate=None, exempt=())
    async with await udpio.start_echo("127.0.0.1", 0, policy=policy) as server:
        with sockets(bind_udp(0), bind_udp(0), bind_udp(0, "127.0.0.1")) as (greedy, other, marker):
            for i in range(30):
                greedy.sendto(b"%d" % i, server.address)
            for i in range(3):
                other.sendto(b"o%d" % i, server.address)  # another source: its own bucket
            await barrier(server, marker)
            answered = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    answered.append(greedy.recvfrom(100)[0])
            assert answered == [b"0", b"1", b"2", b"3", b"4"]
            assert sum(1 for _ in iter_ready(other)) == 3
        c = server.counters
        assert c.policy_drops == {udpio.DROP_SOURCE_RATE: 25}
        assert policy.tracked_sources == 3
        adds_up(c)


def iter_ready(sock: socket.socket) -> Iterator[bytes]:
    with contextlib.suppress(BlockingIOError):
        while True:
            yield sock.recvfrom(70000)[0]


async def test_global_rate_limit_caps_all_sources() -> None:
    policy = udpio.SafetyPolicy(rate=None, global_rate=0.001, global_burst=4, exempt=["127.0.0.1/32"])
    async with await udpio.start_echo("127.0.0.1", 0, policy=policy) as server:
        with sockets(*(bind_udp(0) for _ in range(6)), bind_udp(0, "127.0.0.1")) as socks:
            *sources, marker = socks  # the marker's address is exempt, so the barrier gets through
            for sock in sources:
                sock.sendto(b"x", server.address)
                sock.sendto(b"y", server.address)
            await barrier(server, marker)
            assert sum(len(list(iter_ready(s))) for s in sources) == 4
        assert server.counters.policy_drops == {udpio.DROP_GLOBAL_RATE: 8}
        adds_up(server.counters)


async def test_loopback_is_exempt_by_default(host: str, family: int) -> None:
    """The defaults rate-limit remote sources only: a local burst far above the default rates is answered."""
    async with await udpio.start_echo(host, 0) as server:
        total = int(udpio.SafetyPolicy().options()["rate"] * 3)
        with sockets(bind_udp(0, host, family)) as (client,):
            received = 0
            for i in range(total):
                data, _ = await echo_of(client, b"%d" % i, server.address)
                received += data == b"%d" % i
        assert received == total
        assert server.counters.dropped_policy == 0


# -- allow / deny ----------------------------------------------------------------------------------


async def test_deny_and_allow_lists_ipv4() -> None:
    allowed, denied, stranger = _random_loopback(), _random_loopback(), _random_loopback()
    policy = udpio.SafetyPolicy(allow=[f"{allowed}/32", "127.0.0.1/32", f"{denied}/32"], deny=[f"{denied}/32"])
    async with await udpio.start_echo("127.0.0.1", 0, policy=policy) as server:
        with sockets(bind_udp(0, allowed), bind_udp(0, denied), bind_udp(0, stranger),
                     bind_udp(0, "127.0.0.1")) as (a, d, s, marker):
            for sock in (a, d, s):
                sock.sendto(b"hello", server.address)
            await barrier(server, marker)
            assert list(iter_ready(a)) == [b"hello"]
            assert_silent(d)
            assert_silent(s)
        assert server.counters.policy_drops == {udpio.DROP_DENIED: 1, udpio.DROP_NOT_ALLOWED: 1}
        adds_up(server.counters)


async def test_ipv4_loopback_peers_of_a_dual_stack_socket_are_refused_as_mapped() -> None:
    """A dual-stack IPv6 socket sees IPv4 peers as ::ffff:a.b.c.d. Mapped *loopback* cannot be told from an IPv6
    datagram another host forged with that source (Linux delivers those), so it is refused, never exempt, on
    such a socket: the documented cost is that local IPv4 clients must use an IPv4 socket or ::1. IPv4 lists
    still match real IPv4 peers of a dual-stack socket (tests/test_hostile.py, across namespaces)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))  # IPv4 loopback only, through an IPv6 socket
        sock.setblocking(False)
        transport, protocol = await udpio.adopt(lambda: Observed(udpio.SafetyPolicy()), sock)
    finally:
        sock.close()  # adopt works on its own duplicate
    server = udpio.EchoServer(transport, protocol)
    async with server:
        with sockets(bind_udp(0, "127.0.0.1")) as (client,):
            client.sendto(b"hello", ("127.0.0.1", server.port))
            assert await asyncio.wait_for(protocol.batches.get(), TIMEOUT) == 1  # handled (nothing to echo back)
            assert_silent(client)
        assert server.counters.policy_drops == {udpio.DROP_MAPPED_SOURCE: 1}


class Observed(udpio.EchoProtocol):
    """The echo protocol, plus a queue of batch sizes so a test can wait for datagrams it cannot see."""

    def __init__(self, policy: udpio.SafetyPolicy) -> None:
        super().__init__(policy)
        self.batches: asyncio.Queue[int] = asyncio.Queue()

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        super().datagrams_received(batch)
        self.batches.put_nowait(len(batch))


@pytest.mark.skipif(not IPV6, reason="IPv6 loopback ::1 cannot be bound")
async def test_deny_and_allow_lists_ipv6() -> None:
    """Only ::1 exists on IPv6 loopback, so the refused datagrams are counted through the protocol."""
    for policy, reason in (
        (udpio.SafetyPolicy(deny=["::1/128"]), udpio.DROP_DENIED),
        (udpio.SafetyPolicy(allow=["2001:db8::/32"]), udpio.DROP_NOT_ALLOWED),
    ):
        transport, protocol = await udpio.listen(lambda p=policy: Observed(p), "::1", 0)
        async with udpio.EchoServer(transport, protocol) as server:
            with sockets(bind_udp(0, "::1", socket.AF_INET6)) as (client,):
                for _ in range(3):
                    client.sendto(b"hello", server.address)
                seen = 0
                while seen < 3:
                    seen += await asyncio.wait_for(protocol.batches.get(), TIMEOUT)
                assert_silent(client)
            assert server.counters.policy_drops == {reason: 3}


# -- the command line -------------------------------------------------------------------------------


class Echo:
    """``udpio echo`` as a subprocess; reads the 'listening on HOST:PORT' line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "udpio", "echo", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"listening on \[?([0-9a-f.:]+?)\]?:(\d+)$", line.strip())
        if match is None:
            self.stop()
            raise AssertionError(f"no 'listening on' line: {line!r}")
        self.address = (match.group(1), int(match.group(2)))
        # The policy line comes next; read it here (communicate() reads the pipe, not this file's buffer).
        self.policy_line = self.proc.stderr.readline()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, err


def _blocking_echo(sock: socket.socket, data: bytes, dest: Any) -> bytes:
    sock.setblocking(True)
    sock.settimeout(TIMEOUT)
    sock.sendto(data, dest)
    return sock.recvfrom(70000)[0]


def test_cli_rate_and_deny_options() -> None:
    server = Echo("127.0.0.1", "0", "--rate", "0.001", "--burst", "2", "--no-exempt", "--deny", "127.0.0.2/32")
    try:
        with sockets(bind_udp(0, "127.0.0.3"), bind_udp(0, "127.0.0.2"), bind_udp(0, "127.0.0.4")) as (c, d, m):
            for _ in range(5):
                c.sendto(b"x", server.address)
            d.sendto(b"x", server.address)
            assert _blocking_echo(m, b"mark", server.address) == b"mark"  # its own bucket
            assert len(list(iter_ready(c))) == 2
            assert_silent(d)
    finally:
        code, err = server.stop()
    assert code == 0, err
    assert "policy: reflection guard on" in server.policy_line
    assert "per-source 0.001/s burst 2" in server.policy_line
    summary = err.strip().splitlines()[-1]
    assert "received 7 datagrams" in summary and "sent 3 " in summary
    assert "denied 1" in summary and "source_rate 3" in summary


@needs_root
def test_cli_no_policy_answers_a_service_port() -> None:
    server = Echo("127.0.0.1", "0", "--no-policy")
    try:
        with sockets(bind_udp(19)) as (chargen,):
            assert _blocking_echo(chargen, b"x", server.address) == b"x"
    finally:
        code, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert "policy: none" in server.policy_line


def test_cli_bad_policy_values_are_usage_errors() -> None:
    for args, message in (
        (["--allow", "10.0.0.1/8"], "has host bits set"),
        (["--block-port", "70000"], "blocked port must be an int in 0..65535, got 70000"),
        (["--rate=-3"], "rate must be a finite number > 0"),
        (["--workers", "0"], "workers must be an int in 1..256, got 0"),
    ):
        done = subprocess.run([sys.executable, "-m", "udpio", "echo", "127.0.0.1", "0", *args],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
