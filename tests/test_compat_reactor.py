"""The drop-in Twisted reactor (``udpio.compat.install()``, ``--reactor=udpio``) on real loopback sockets.

Three layers:

* Twisted's own UDP suites under the udpio reactor, run by ``tests/run_twisted_udp_suite.py`` in a private
  network namespace (their multicast tests join "any interface"), on both loops: the counts are asserted, so a
  test that stops running is noticed as surely as one that fails.
* The udpio-specific promises, in this process: a fresh :class:`UdpioReactor` per test (never installed
  globally, as Twisted's ReactorBuilder does), run until the test's Deferred fires.
* The entry points in subprocesses (a fresh interpreter each): ``install()``, ``python -m udpio.compat``,
  the plugin for ``trial`` and ``twistd``.

Multicast here stays on ``lo`` (joins name 127.0.0.1, sends set the outgoing interface first); the suites'
"any interface" multicast runs only inside the runner's namespace.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("twisted")

from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IListeningPort,
    ILoggingContext,
    IMulticastTransport,
    IReactorMulticast,
    IReactorSocket,
    IReactorUDP,
    ISystemHandle,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.python import context, log
from twisted.python.failure import Failure
from udpio.compat import MulticastPort, UdpioReactor, UDPPort
from udpio.compat._ports import _MAX_HELD_WRITES, _REREAD_FULL, _REREAD_WORTH, _ipv6_receiver
from zope.interface.verify import verifyObject

import udpio

from . import run_twisted_udp_suite as suite_runner

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(suite_runner.__file__)
GROUP = "239.255.77.79"
LOOPS = ["asyncio", "uvloop"] if udpio._loop.uvloop_available() else ["asyncio"]
#: The suites run in a few seconds; the bound is for a loaded CI machine.
SUITE_TIMEOUT = 240
CHILD_TIMEOUT = 60


# -- Twisted's own suites ----------------------------------------------------------------------------------

#: suite -> (tests run, summary trial prints). The one skip is Twisted's own: "only IPv4 multicast has TTLs,
#: IPv6 has hops" (MulticastTestsIPv6.testTTL), skipped on every reactor.
EXPECTED = {
    "legacy": (27, "PASSED (skips=1, successes=26)"),
    "builder": (36, "PASSED (successes=36)"),
}


@pytest.mark.netns
@pytest.mark.timeout(SUITE_TIMEOUT + 30)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("suite", sorted(EXPECTED))
def test_twisted_udp_suite_passes_on_the_udpio_reactor(suite: str, loop: str) -> None:
    """``trial --reactor=udpio twisted.test.test_udp`` (through the plugin) and
    ``twisted.internet.test.test_udp`` (ReactorBuilder -> udpio only): everything passes, nothing is skipped
    but Twisted's own IPv6-TTL skip."""
    proc = subprocess.run(
        [sys.executable, str(RUNNER), suite, "--loop", loop],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        cwd=REPO,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode == suite_runner.EXIT_UNAVAILABLE:
        pytest.skip(output.strip())
    ran, summary = EXPECTED[suite]
    assert proc.returncode == 0, output
    assert re.search(rf"^Ran {ran} tests in ", output, re.MULTILINE), output
    assert summary in output, output
    assert f"global reactor: <udpio.compat.UdpioReactor on {loop}>" in output, output
    if suite == "builder":  # the ReactorBuilder classes were generated for the udpio reactor only
        assert output.count("_UdpioReactorTests") == 2, output
        assert "EPollReactor" not in output and "SelectReactor" not in output, output


# -- a fresh reactor per test ------------------------------------------------------------------------------


@pytest.fixture
def reactor(loop_kind: str, receive_strategy: str) -> Iterator[UdpioReactor]:
    """A fresh reactor; its ports' transports use ``receive_strategy`` (every strategy in turn)."""
    loop = udpio.new_event_loop(loop_kind)
    built = UdpioReactor(loop)
    try:
        yield built
    finally:
        # What Twisted's ReactorBuilder does for reactors it made: ports, timers, the waker.
        built.disconnectAll()
        for call in built.getDelayedCalls():
            call.cancel()
        for reader in list(built._internalReaders):
            built.removeReader(reader)
            reader.connectionLost(None)
        loop.close()


def run(reactor: UdpioReactor, body: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10.0) -> Any:
    """Run ``reactor`` until ``body()`` (a coroutine awaiting Deferreds) ends; return or raise its outcome.

    ``reactor.stop()`` then shuts down as Twisted does: ``disconnectAll`` closes every port still open.
    """
    outcome: list[Any] = []

    def start() -> None:
        done = defer.ensureDeferred(body())
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    timer = reactor.callLater(timeout, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if timer.active():
        timer.cancel()
    assert outcome, f"timed out after {timeout} s"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class Recorder(DatagramProtocol):
    """Records every callback; ``next()`` is a Deferred for the next datagram or refusal."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.waiting: list[defer.Deferred[Any]] = []
        self.pending: list[Any] = []

    def _event(self, event: Any) -> None:
        self.events.append(event)
        if self.waiting:
            self.waiting.pop(0).callback(event)
        else:
            self.pending.append(event)

    def next(self) -> defer.Deferred[Any]:
        if self.pending:
            return defer.succeed(self.pending.pop(0))
        waiter: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(waiter)
        return waiter

    def startProtocol(self) -> None:
        self.events.append("start")

    def stopProtocol(self) -> None:
        self.events.append("stop")

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._event((datagram, addr))

    def connectionRefused(self) -> None:
        self._event("refused")


def _dead_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _observe_log() -> tuple[list[dict[str, Any]], Callable[[], None]]:
    events: list[dict[str, Any]] = []
    log.addObserver(events.append)
    return events, lambda: log.removeObserver(events.append)


# -- interfaces ----------------------------------------------------------------------------------------


def test_ports_provide_twisteds_interfaces(reactor: UdpioReactor, host: str, family: int) -> None:
    for interface in (IReactorUDP, IReactorMulticast, IReactorSocket):
        assert verifyObject(interface, reactor)
    port = reactor.listenUDP(0, DatagramProtocol(), interface=host)
    multicast = reactor.listenMulticast(0, DatagramProtocol(), interface=host)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.setblocking(False)
        adopted = reactor.adoptDatagramPort(sock.fileno(), sock.family, DatagramProtocol())
    for each in (port, multicast, adopted):
        assert isinstance(each, UDPPort)
        for interface in (IListeningPort, IUDPTransport, ISystemHandle, ILoggingContext):
            assert verifyObject(interface, each)
    assert isinstance(multicast, MulticastPort)
    assert verifyObject(IMulticastTransport, multicast)
    address = port.getHost()
    assert isinstance(address, IPv6Address if family == socket.AF_INET6 else IPv4Address)
    assert (address.type, address.host) == ("UDP", host)
    assert port.getHandle().getsockname()[1] == address.port
    assert str(address.port) in repr(port)
    assert port in reactor.getReaders()


def test_adopted_socket_stays_the_callers(reactor: UdpioReactor, host: str, family: int) -> None:
    """Twisted's adoptDatagramPort semantics: the port serves a duplicate, the caller closes its own."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
        port = reactor.adoptDatagramPort(sock.fileno(), family, DatagramProtocol())
        assert sock.fileno() != -1
        assert port.getHandle().fileno() != sock.fileno()
        assert port.getHost().port == sock.getsockname()[1]
    finally:
        sock.close()
    with pytest.raises(terror.UnsupportedAddressFamily):
        reactor.adoptDatagramPort(0, socket.AF_UNIX, DatagramProtocol())
    with socket.socket(family, socket.SOCK_DGRAM) as blocking:
        blocking.bind((host, 0))
        with pytest.raises(udpio.InvalidSocketError, match="non-blocking"):
            reactor.adoptDatagramPort(blocking.fileno(), family, DatagramProtocol())


def test_bad_arguments_raise_twisteds_errors(reactor: UdpioReactor, host: str) -> None:
    with pytest.raises(terror.InvalidAddressError):
        reactor.listenUDP(0, DatagramProtocol(), interface="example.com")
    port = reactor.listenUDP(0, Recorder(), interface=host)
    with pytest.raises(terror.CannotListenError):
        reactor.listenUDP(port.getHost().port, DatagramProtocol(), interface=host)
    with pytest.raises(udpio.InvalidPortError, match="70000"):
        reactor.listenUDP(70000, DatagramProtocol(), interface=host)
    with pytest.raises(terror.InvalidAddressError, match="not hostnames"):
        port.write(b"x", ("localhost", 9))
    with pytest.raises(terror.InvalidAddressError):
        port.write(b"x")  # unconnected: an address is needed
    other = "127.0.0.1" if ":" in host else "::1"
    with pytest.raises(terror.InvalidAddressError):
        port.write(b"x", (other, 9))
    with pytest.raises(terror.InvalidAddressError):
        port.connect("localhost", 9)
    port.connect(host, 9)
    with pytest.raises(RuntimeError, match="already connected"):
        port.connect(host, 9)
    with pytest.raises(terror.InvalidAddressError, match="connected"):
        port.write(b"x", (host, 10))


# -- datagrams, errors, lifecycle ---------------------------------------------------------------------


def test_echo_and_counters(reactor: UdpioReactor, host: str) -> None:
    class Echo(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.transport.write(datagram, addr)  # type: ignore[union-attr]  # set while listening

    server = reactor.listenUDP(0, Echo(), interface=host)
    client = Recorder()
    client_port = reactor.listenUDP(0, client, interface=host)
    target = (host, server.getHost().port)

    async def body() -> list[Any]:
        replies = []
        for payload in (b"", b"one", b"x" * 1400):
            client_port.write(payload, target)
            replies.append(await client.next())
        client_port.writeSequence([b"a", b"b"], target)
        replies.append(await client.next())
        return replies

    replies = run(reactor, body)
    assert replies == [(p, target) for p in (b"", b"one", b"x" * 1400, b"ab")]
    assert server.counters.datagrams_in == server.counters.datagrams_out == 4
    assert server.counters.bytes_in == server.counters.bytes_out == 1405
    assert client.events[0] == "start" and client.events[-1] == "stop"  # reactor shutdown stopped the port


def test_connection_refused_every_time_and_the_port_stays_open(reactor: UdpioReactor, host: str, family: int) -> None:
    """Twisted's epoll/poll reactors close such a port silently after the first ICMP port-unreachable
    (Twisted #5377, #6287, #6467); here connectionRefused comes every time (on uvloop too, where the
    transport re-arms its reader after each POLLERR) and the port keeps receiving from its peer."""
    dead = _dead_port(family, host)
    client = Recorder()
    port = reactor.listenUDP(0, client, interface=host)
    port.connect(host, dead)
    peer = socket.socket(family, socket.SOCK_DGRAM)

    async def body() -> list[Any]:
        seen = []
        for round_ in range(3):
            port.write(b"ping %d" % round_)
            seen.append(await client.next())
        peer.bind((host, dead))  # the peer comes up on the refused port: the port still hears it
        peer.sendto(b"back", (host, port.getHost().port))
        seen.append(await client.next())
        return seen

    try:
        seen = run(reactor, body)
    finally:
        peer.close()
    assert seen[:3] == ["refused"] * 3
    assert seen[3][0] == b"back"
    assert port.counters.errors_received >= 3


def test_unconnected_port_ignores_icmp_as_twisted_does(reactor: UdpioReactor, host: str, family: int) -> None:
    recorder = Recorder()
    port = reactor.listenUDP(0, recorder, interface=host)
    dead = _dead_port(family, host)

    async def body() -> Any:
        port.write(b"to nobody", (host, dead))
        port.write(b"to me", (host, port.getHost().port))
        return await recorder.next()

    assert run(reactor, body)[0] == b"to me"
    assert "refused" not in recorder.events


def test_message_too_long_raises_message_length_error(reactor: UdpioReactor, host: str, family: int) -> None:
    port = reactor.listenUDP(0, DatagramProtocol(), interface=host)
    with pytest.raises(terror.MessageLengthError):
        port.write(b"x" * 70000, (host, 9))
    port.connect(host, _dead_port(family, host))
    with pytest.raises(terror.MessageLengthError):
        port.write(b"x" * 70000)
    assert port.counters.send_errors == 2


def test_datagram_larger_than_max_packet_size_is_dropped_and_counted(reactor: UdpioReactor, host: str) -> None:
    recorder = Recorder()
    port = reactor.listenUDP(0, recorder, interface=host, maxPacketSize=100)
    address = (host, port.getHost().port)

    async def body() -> Any:
        port.write(b"x" * 101, address)
        port.write(b"y" * 100, address)
        return await recorder.next()

    assert run(reactor, body) == (b"y" * 100, address)
    assert port.counters.dropped_oversize == 1


def test_handler_exception_is_logged_by_twisted_and_the_port_keeps_serving(reactor: UdpioReactor, host: str) -> None:
    class Fragile(Recorder):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            if datagram == b"boom":
                raise ZeroDivisionError("handler bug")
            super().datagramReceived(datagram, addr)

    protocol = Fragile()
    port = reactor.listenUDP(0, protocol, interface=host)
    address = (host, port.getHost().port)
    events, stop_observing = _observe_log()

    async def body() -> Any:
        port.write(b"boom", address)
        port.write(b"fine", address)
        return await protocol.next()

    try:
        assert run(reactor, body)[0] == b"fine"
    finally:
        stop_observing()
    failures = [e for e in events if e.get("isError") and e.get("failure") is not None]
    assert [f["failure"].type for f in failures] == [ZeroDivisionError]
    assert failures[0]["system"] == "Fragile (UDP)"
    assert port.counters.handler_errors == 1


def test_log_context_and_messages_are_twisteds(reactor: UdpioReactor, host: str) -> None:
    systems: list[str] = []

    class Prefixed(Recorder):
        def logPrefix(self) -> str:
            return "Custom"

        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            systems.append(context.get(log.ILogContext)["system"])
            super().datagramReceived(datagram, addr)

    events, stop_observing = _observe_log()
    try:
        protocol = Prefixed()
        port = reactor.listenUDP(0, protocol, interface=host)
        number = port.getHost().port
        assert port.logPrefix() == "Custom (UDP)"

        async def body() -> None:
            port.write(b"x", (host, number))
            await protocol.next()
            await port.stopListening()

        run(reactor, body)
    finally:
        stop_observing()
    messages = [" ".join(e["message"]) for e in events if e.get("message")]
    assert f"Custom starting on {number}" in messages
    assert f"(UDP Port {number} Closed)" in messages
    assert systems == ["Custom (UDP)"]


def test_stop_listening_frees_the_port_before_its_deferred_fires(reactor: UdpioReactor, host: str) -> None:
    protocol = Recorder()
    port = reactor.listenUDP(0, protocol, interface=host)
    number = port.getHost().port

    async def body() -> Any:
        first = port.stopListening()
        second = port.stopListening()  # before the close completed: the same close, its own Deferred
        assert first is not None and second is not None and first is not second
        assert protocol.events == ["start"]  # stopProtocol is called later, never re-entrantly
        await defer.gatherResults([first, second])
        assert protocol.events == ["start", "stop"]
        assert port.stopListening() is None  # stopped: as Twisted's udp.Port
        again = reactor.listenUDP(number, DatagramProtocol(), interface=host)  # the number is free already
        return again.getHost().port

    assert run(reactor, body) == number
    assert port.fileno() == -1
    with pytest.raises(terror.NotListeningError):
        port.getHost()


def test_lose_connection_is_deprecated_but_works(reactor: UdpioReactor, host: str) -> None:
    port = reactor.listenUDP(0, DatagramProtocol(), interface=host)

    async def body() -> None:
        with pytest.warns(DeprecationWarning, match="stopListening"):
            stopped = port.loseConnection()
        assert stopped is not None
        await stopped

    run(reactor, body)
    assert not port.connected


def test_one_protocol_on_two_ports_starts_and_stops_once(reactor: UdpioReactor, host: str) -> None:
    """doStart/doStop count ports: startProtocol on the first, stopProtocol after the last."""
    protocol = Recorder()
    first = reactor.listenUDP(0, protocol, interface=host)
    protocol.transport = None  # Twisted's makeConnection asserts the protocol is free: give it to a second port
    second = reactor.listenUDP(0, protocol, interface=host)

    async def body() -> None:
        await first.stopListening()
        assert protocol.events == ["start"]
        await second.stopListening()

    run(reactor, body)
    assert protocol.events == ["start", "stop"]
    assert protocol.numPorts == 0


def test_start_protocol_failure_closes_the_port(reactor: UdpioReactor, host: str) -> None:
    class Broken(DatagramProtocol):
        def startProtocol(self) -> None:
            raise RuntimeError("cannot start")

    protocol = Broken()
    with pytest.raises(RuntimeError, match="cannot start"):
        reactor.listenUDP(0, protocol, interface=host)
    assert protocol.transport is None
    assert not reactor.getReaders() or all(not isinstance(r, UDPPort) for r in reactor.getReaders())


def test_remove_all_takes_the_ports_and_shutdown_stops_them(reactor: UdpioReactor, host: str) -> None:
    protocol = Recorder()
    port = reactor.listenUDP(0, protocol, interface=host)
    assert port in reactor.getReaders()
    reactor.disconnectAll()  # what Twisted does at shutdown: removeAll, then connectionLost on each
    assert protocol.events == ["start", "stop"]
    assert port not in reactor.getReaders()
    assert port.fileno() == -1


def test_shutdown_from_datagram_received(reactor: UdpioReactor, host: str) -> None:
    """Closing the port from inside datagramReceived ends the read loop at once (Twisted's
    ReactorShutdownInteractionTests, here with the rest of the batch still queued in the socket)."""
    received: list[bytes] = []
    stopped: defer.Deferred[None] = defer.Deferred()

    class Closer(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            received.append(datagram)
            port.connectionLost()

        def stopProtocol(self) -> None:
            stopped.callback(None)

    port = reactor.listenUDP(0, Closer(), interface=host)
    address = (host, port.getHost().port)

    async def body() -> None:
        for _ in range(5):
            port.write(b"x", address)
        await stopped

    run(reactor, body)
    assert received == [b"x"]
    assert port.fileno() == -1 and port.stopListening() is None


def test_ipv6_sender_keeps_its_scope() -> None:
    """Twisted reduces IPv6 senders to (host, port) and so loses a link-local scope; udpio keeps it in the
    host, where Twisted's write (and the socket module) accept it."""
    seen: list[Any] = []
    deliver = _ipv6_receiver(lambda data, addr: seen.append(addr))
    deliver(b"", ("fe80::1", 5000, 0, 7))
    deliver(b"", ("::1", 5000, 0, 0))
    assert seen == [("fe80::1%7", 5000), ("::1", 5000)]


def test_ipv6_port_is_dual_stack_as_twisteds(reactor: UdpioReactor) -> None:
    recorder = Recorder()
    try:
        port = reactor.listenUDP(0, recorder, interface="::")
    except terror.CannotListenError as exc:
        pytest.skip(f"no IPv6 here: {exc}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ipv4_peer:
        ipv4_peer.bind(("127.0.0.1", 0))

        async def body() -> Any:
            ipv4_peer.sendto(b"v4", ("127.0.0.1", port.getHost().port))
            return await recorder.next()

        data, addr = run(reactor, body)
    assert data == b"v4" and addr[0] == "::ffff:127.0.0.1"


# -- writes held during a read event ---------------------------------------------------------------------


class Replier(DatagramProtocol):
    """Answers each datagram ``b"n"`` with what ``replies(addr)`` lists: (datagram, destination) pairs."""

    def __init__(self, replies: Callable[[Any], list[tuple[Any, Any]]]) -> None:
        self.replies = replies
        self.errors: list[BaseException] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        for data, dest in self.replies(addr):
            try:
                self.transport.write(data, dest)  # type: ignore[union-attr]  # set while listening
            except Exception as exc:
                self.errors.append(exc)


def test_replies_written_in_datagram_received_all_arrive_in_order(reactor: UdpioReactor, host: str) -> None:
    """Held writes go out in order: runs to one peer (GSO when equal-sized), another peer in between."""
    first, second = Recorder(), Recorder()
    first_port = reactor.listenUDP(0, first, interface=host)
    second_port = reactor.listenUDP(0, second, interface=host)
    to_first = (host, first_port.getHost().port)
    to_second = (host, second_port.getHost().port)
    plan = (
        [(b"%03d" % i, to_first) for i in range(100)]
        + [(b"short", to_second), (bytearray(b"mutable"), to_second)]
        + [(b"x" * 1000, to_first), (b"y" * 10, to_first)]
    )

    def replies(addr: Any) -> list[tuple[Any, Any]]:
        return plan

    server = reactor.listenUDP(0, Replier(replies), interface=host)

    async def body() -> tuple[list[Any], list[Any]]:
        first_port.write(b"go", (host, server.getHost().port))
        got_first = [await first.next() for _ in range(102)]
        got_second = [await second.next() for _ in range(2)]
        return got_first, got_second

    got_first, got_second = run(reactor, body)
    assert [data for data, _ in got_first] == [data for data, dest in plan if dest == to_first]
    assert [data for data, _ in got_second] == [b"short", b"mutable"]
    assert server.counters.datagrams_out == len(plan)


def test_held_write_copies_a_reused_buffer(reactor: UdpioReactor, host: str) -> None:
    peer = Recorder()
    peer_port = reactor.listenUDP(0, peer, interface=host)
    buffer = bytearray(b"first")

    class Reuser(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.transport.write(buffer, addr)  # type: ignore[union-attr]  # set while listening
            buffer[:] = b"later"  # before the held write is sent

    server = reactor.listenUDP(0, Reuser(), interface=host)

    async def body() -> Any:
        peer_port.write(b"go", (host, server.getHost().port))
        return await peer.next()

    assert run(reactor, body)[0] == b"first"


def test_send_errors_in_and_out_of_datagram_received(reactor: UdpioReactor, host: str) -> None:
    """Port 0 is refused by the kernel (EINVAL, udp_sendmsg) before anything is sent. Outside a read event
    ``write`` raises it, as on Twisted; a held write's error is logged (Twisted logs what
    ``datagramReceived`` raises) and the writes after it still go out. Too long is said at once either way."""
    peer = Recorder()
    peer_port = reactor.listenUDP(0, peer, interface=host)
    server_protocol = Replier(lambda addr: [(b"x" * 70000, addr), (b"to nowhere", (host, 0)), (b"after", addr)])
    server = reactor.listenUDP(0, server_protocol, interface=host)
    from_server = (host, server.getHost().port)
    with pytest.raises(OSError) as raised:
        server.write(b"to nowhere", (host, 0))
    assert raised.value.errno == errno.EINVAL
    events, stop_observing = _observe_log()

    async def body() -> Any:
        peer_port.write(b"go", (host, server.getHost().port))
        return await peer.next()

    try:
        assert run(reactor, body) == (b"after", from_server)
    finally:
        stop_observing()
    assert [type(e) for e in server_protocol.errors] == [terror.MessageLengthError]
    logged = [e["failure"].value for e in events if e.get("isError") and e.get("failure") is not None]
    assert [getattr(exc, "errno", None) for exc in logged] == [errno.EINVAL]


def test_without_held_writes_errors_are_raised_by_write(loop_kind: str, host: str) -> None:
    """``hold_writes=False``: Twisted's timing exactly, the protocol sees the send error itself."""
    loop = udpio.new_event_loop(loop_kind)
    reactor = UdpioReactor(loop, hold_writes=False)
    try:
        peer = Recorder()
        peer_port = reactor.listenUDP(0, peer, interface=host)
        protocol = Replier(lambda addr: [(b"to nowhere", (host, 0)), (b"after", addr)])
        server = reactor.listenUDP(0, protocol, interface=host)

        async def body() -> Any:
            peer_port.write(b"go", (host, server.getHost().port))
            return await peer.next()

        assert run(reactor, body)[0] == b"after"
        assert [getattr(e, "errno", None) for e in protocol.errors] == [errno.EINVAL]
    finally:
        reactor.disconnectAll()
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        loop.close()
    with pytest.raises(udpio.InvalidArgumentError, match="hold_writes"):
        UdpioReactor(loop, hold_writes=1)  # type: ignore[arg-type]  # the point of the test


def test_written_then_stopped_in_datagram_received_still_goes_out(reactor: UdpioReactor, host: str) -> None:
    peer = Recorder()
    peer_port = reactor.listenUDP(0, peer, interface=host)

    class LastWord(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.transport.write(b"bye", addr)  # type: ignore[union-attr]  # set while listening
            self.transport.stopListening()  # type: ignore[union-attr]

    server = reactor.listenUDP(0, LastWord(), interface=host)

    async def body() -> Any:
        peer_port.write(b"go", (host, server.getHost().port))
        return await peer.next()

    assert run(reactor, body)[0] == b"bye"


@pytest.mark.parametrize("hold_writes", [True, False])
def test_written_after_stop_listening_in_the_same_callback_still_goes_out(
    loop_kind: str, receive_strategy: str, host: str, hold_writes: bool
) -> None:
    """Twisted's port closes in the reactor's next iteration (``connectionLost`` by ``callLater(0)``), so a
    write made after ``stopListening`` in the same callback is sent; so it is here, held or not."""
    loop = udpio.new_event_loop(loop_kind)
    reactor = UdpioReactor(loop, hold_writes=hold_writes)
    try:
        peer = Recorder()
        peer_port = reactor.listenUDP(0, peer, interface=host)

        class StopThenWrite(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                self.transport.stopListening()  # type: ignore[union-attr]  # set while listening
                self.transport.write(b"after stop", addr)  # type: ignore[union-attr]

        server = reactor.listenUDP(0, StopThenWrite(), interface=host)

        async def body() -> Any:
            peer_port.write(b"go", (host, server.getHost().port))
            return await peer.next()

        assert run(reactor, body)[0] == b"after stop"
    finally:
        reactor.disconnectAll()
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        loop.close()


class Feeder(DatagramProtocol):
    """Answers every datagram to ``reply_to``; while ``feed`` says so, also queues one more datagram on its own
    socket (from ``helper``, on loopback the datagram is queued before ``sendto`` returns) and records, in
    ``order``, each delivery and when the loop got control back after the first one."""

    def __init__(self, reply_to: Any, helper: socket.socket, feed: Callable[[int], bool]) -> None:
        self.reply_to = reply_to
        self.helper = helper
        self.feed = feed
        self.order: list[Any] = []
        self.delivered = 0
        self.after_first: Callable[[], None] | None = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.delivered += 1
        self.order.append(datagram)
        if datagram == b"first":
            loop = self.transport.reactor._asyncioEventloop  # type: ignore[union-attr]  # set while listening
            loop.call_soon(self.order.append, "loop")
        self.transport.write(b"reply", self.reply_to)  # type: ignore[union-attr]  # set while listening
        if self.feed(self.delivered):
            self.helper.sendto(b"next", self.transport.socket.getsockname())  # type: ignore[union-attr]
        if datagram == b"first" and self.after_first is not None:
            self.after_first()


def _feeder_port(reactor: UdpioReactor, host: str, feed: Callable[[int], bool]) -> tuple[Feeder, Any, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    helper = socket.socket(family, socket.SOCK_DGRAM)
    helper.bind((host, 0))
    protocol = Feeder(helper.getsockname()[:2], helper, feed)
    return protocol, reactor.listenUDP(0, protocol, interface=host), helper


def test_after_answering_the_port_reads_again_before_the_loop_runs(reactor: UdpioReactor, host: str) -> None:
    """Issue 14: a request queued while the replies were written is read in the same readiness event (as
    Twisted's doRead reads until EAGAIN), not after a trip through the loop."""
    protocol, server, helper = _feeder_port(reactor, host, lambda delivered: delivered == 1)
    with helper:

        async def body() -> None:
            helper.sendto(b"first", (host, server.getHost().port))
            while protocol.delivered < 2 or "loop" not in protocol.order:
                await _loop_turn(reactor)

        run(reactor, body)
    assert protocol.order == [b"first", b"next", "loop"]


def test_without_held_writes_the_port_reads_once_per_event(loop_kind: str, host: str) -> None:
    """``hold_writes=False`` keeps Twisted's timing: the event ends when the strategy finds the queue empty
    (no second round after the replies)."""
    loop = udpio.new_event_loop(loop_kind)
    reactor = UdpioReactor(loop, hold_writes=False)
    try:
        protocol, server, helper = _feeder_port(reactor, host, lambda delivered: delivered == 1)
        with helper:

            async def body() -> None:
                helper.sendto(b"first", (host, server.getHost().port))
                while protocol.delivered < 2 or "loop" not in protocol.order:
                    await _loop_turn(reactor)

            run(reactor, body)
    finally:
        reactor.disconnectAll()
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        loop.close()
    # The compiled strategy ends its event on a short recvmmsg; the Python ones may see the second datagram
    # in their own drain loop, before the loop runs: either way, no round after the replies is needed.
    assert protocol.order in ([b"first", "loop", b"next"], [b"first", b"next", "loop"])


#: per_datagram reads on by itself after each handler call (its FIONREAD probe), as Twisted's doRead does: what
#: a handler queues is read in the same round, so these tests of the round after the replies do not apply.
_READS_ON_BY_ITSELF = "per_datagram reads on by itself after a handler call (its FIONREAD probe): no second round"


def test_reading_again_stops_when_the_port_stops_listening(
    reactor: UdpioReactor, receive_strategy: str, host: str
) -> None:
    if receive_strategy == "per_datagram":
        pytest.skip(_READS_ON_BY_ITSELF)
    protocol, server, helper = _feeder_port(reactor, host, lambda delivered: delivered == 1)
    stopped: list[defer.Deferred[None] | None] = []
    protocol.after_first = lambda: stopped.append(server.stopListening())
    with helper:

        async def body() -> None:
            helper.sendto(b"first", (host, server.getHost().port))
            while not stopped:
                await _loop_turn(reactor)
            await stopped[0]

        run(reactor, body)
    assert b"next" not in protocol.order


def test_reading_again_is_bounded_so_the_loop_keeps_running(reactor: UdpioReactor, host: str) -> None:
    """A peer that always has the next request queued cannot keep the port's event going for ever: after
    ``_MAX_HELD_WRITES`` replies the loop runs (its timers, other sockets)."""
    protocol, server, helper = _feeder_port(reactor, host, lambda delivered: delivered < 3 * _MAX_HELD_WRITES)
    with helper:

        async def body() -> None:
            helper.sendto(b"first", (host, server.getHost().port))
            while "loop" not in protocol.order:
                await _loop_turn(reactor)

        run(reactor, body)
    assert protocol.order.index("loop") <= _MAX_HELD_WRITES + 1


def test_reading_again_stops_while_it_finds_nothing(reactor: UdpioReactor, receive_strategy: str, host: str) -> None:
    """A peer slower than the server (each request sent after the previous reply arrived): the round after
    the replies finds nothing, and once that is the rule the port stops trying (one receive saved per
    request), but for one event in ``_REREAD_PROBE_EVENTS``, which notices when the peer speeds up."""
    if receive_strategy == "per_datagram":
        pytest.skip(_READS_ON_BY_ITSELF)
    misses = 0
    hits = _REREAD_FULL
    while hits >= _REREAD_WORTH:  # the rule of _holdingWrites: each miss weighs 1/8
        hits -= hits >> 3
        misses += 1
    protocol, server, helper = _feeder_port(reactor, host, lambda delivered: delivered > misses)
    with helper:

        async def body() -> None:
            for _ in range(misses):  # ping-pong: the reply arrives before the next request leaves
                helper.sendto(b"ping", (host, server.getHost().port))
                await _reply(reactor, helper)
            helper.sendto(b"first", (host, server.getHost().port))
            while b"next" not in protocol.order or "loop" not in protocol.order:
                await _loop_turn(reactor)

        run(reactor, body)
    assert protocol.order[misses:] == [b"first", "loop", b"next"]


@pytest.mark.skipif(udpio.IO_CORE != "compiled", reason="sendmmsg is the compiled core's")
def test_held_writes_to_many_peers_go_out_in_one_batch(reactor: UdpioReactor, host: str) -> None:
    """With the compiled core the replies of a read event leave through one ``send_batch`` (one sendmmsg),
    whatever their destinations."""
    peers = [Recorder() for _ in range(3)]
    peer_ports = [reactor.listenUDP(0, peer, interface=host) for peer in peers]
    plan = [(b"%d" % i, (host, peer_ports[i % 3].getHost().port)) for i in range(9)]
    server = reactor.listenUDP(0, Replier(lambda addr: plan), interface=host)
    transport = server._transport
    assert transport is not None
    batches: list[int] = []
    send_batch = transport.send_batch

    def spy(batch: Any) -> None:
        batches.append(len(batch))
        send_batch(batch)

    transport.send_batch = spy  # type: ignore[method-assign]

    async def body() -> list[Any]:
        peer_ports[0].write(b"go", (host, server.getHost().port))
        got: list[Any] = []
        for peer in peers:  # not a nested comprehension: Python 3.10 refuses await in the inner one
            got.append([(await peer.next())[0] for _ in range(3)])
        return got

    got = run(reactor, body)
    assert got == [[b"0", b"3", b"6"], [b"1", b"4", b"7"], [b"2", b"5", b"8"]]
    assert batches == [9]
    assert server.counters.datagrams_out == 9


async def _loop_turn(reactor: UdpioReactor) -> None:
    """Let the reactor run one iteration (a Deferred fired by ``callLater(0)``)."""
    turned: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, turned.callback, None)
    await turned


async def _reply(reactor: UdpioReactor, sock: socket.socket) -> bytes:
    """The next datagram on a plain blocking socket, read without blocking the reactor."""
    sock.setblocking(False)
    while True:
        try:
            return sock.recv(100)
        except BlockingIOError:
            await _loop_turn(reactor)


# -- multicast, on lo only -----------------------------------------------------------------------------


def test_multicast_on_loopback(reactor: UdpioReactor) -> None:
    receiver = Recorder()
    first = reactor.listenMulticast(0, receiver, interface="0.0.0.0", listenMultiple=True)
    number = first.getHost().port
    other = Recorder()
    second = reactor.listenMulticast(number, other, interface="0.0.0.0", listenMultiple=True)
    sender = reactor.listenMulticast(0, DatagramProtocol(), interface="127.0.0.1")
    sender_port = sender.getHost().port
    assert (sender.getTTL(), sender.getLoopbackMode(), sender.getOutgoingInterface()) == (1, True, "0.0.0.0")

    async def body() -> list[Any]:
        assert await sender.setOutgoingInterface("127.0.0.1") == 1  # before any send: never the default route
        assert sender.getOutgoingInterface() == "127.0.0.1"
        await first.joinGroup(GROUP, "127.0.0.1")
        await second.joinGroup(GROUP, "lo")  # udpio also takes an interface name
        sender.write(b"to the group", (GROUP, number))
        got = [await receiver.next(), await other.next()]
        await first.leaveGroup(GROUP, "127.0.0.1")
        return got

    got = run(reactor, body)
    assert [data for data, _ in got] == [b"to the group", b"to the group"]
    assert {addr for _, addr in got} == {("127.0.0.1", sender_port)}


def test_multicast_errors_are_multicast_join_errors(reactor: UdpioReactor) -> None:
    port = reactor.listenMulticast(0, DatagramProtocol(), interface="0.0.0.0")

    async def failure(deferred: defer.Deferred[Any]) -> BaseException:
        try:
            await deferred
        except terror.MulticastJoinError as exc:
            return exc
        raise AssertionError("the Deferred did not fail")

    async def body() -> list[BaseException]:
        await port.joinGroup(GROUP, "127.0.0.1")
        return [
            await failure(port.joinGroup(GROUP, "127.0.0.1")),  # joined twice
            await failure(port.leaveGroup("239.255.77.80", "127.0.0.1")),  # never joined
            await failure(port.joinGroup("127.0.0.1", "127.0.0.1")),  # not a group
            await failure(port.joinGroup(GROUP, "::1")),  # interface of the other family
        ]

    causes = [type(exc.__cause__) for exc in run(reactor, body)]
    assert causes == [
        udpio.AlreadyJoinedError,
        udpio.NotJoinedError,
        udpio.InvalidGroupError,
        udpio.InvalidArgumentError,
    ]


def test_multicast_options(reactor: UdpioReactor) -> None:
    port = reactor.listenMulticast(0, DatagramProtocol(), interface="127.0.0.1")
    port.setTTL(5)
    assert port.getTTL() == 5
    with pytest.raises(udpio.InvalidArgumentError, match="256"):
        port.setTTL(256)
    port.setLoopbackMode(0)
    assert port.getLoopbackMode() is False
    port.setBroadcastAllowed(True)
    assert port.getBroadcastAllowed() is True


# -- entry points, each in a fresh interpreter ---------------------------------------------------------


def _python(code: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_install_picks_the_loop_and_shares_it_with_asyncio() -> None:
    proc = _python(
        """
        import asyncio, udpio.compat
        installed = udpio.compat.install(loop="asyncio")
        from twisted.internet import reactor
        assert reactor is installed, reactor
        assert asyncio.get_event_loop() is reactor._asyncioEventloop
        print(repr(reactor))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "<udpio.compat.UdpioReactor on asyncio>"


@pytest.mark.skipif(not udpio._loop.uvloop_available(), reason="uvloop is not installed")
def test_install_defaults_to_uvloop() -> None:
    proc = _python("import udpio.compat; print(repr(udpio.compat.install()))", env={**os.environ, "UDPIO_LOOP": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "<udpio.compat.UdpioReactor on uvloop>"


def test_install_after_the_reactor_was_imported_says_so() -> None:
    proc = _python(
        """
        from twisted.internet import reactor
        from twisted.internet.error import ReactorAlreadyInstalledError
        import udpio.compat
        try:
            udpio.compat.install()
        except ReactorAlreadyInstalledError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "must run before anything imports twisted.internet.reactor" in proc.stdout
    assert re.search(r"is already installed \(twisted\.internet\.\w+\.\w+Reactor\)", proc.stdout), proc.stdout
    assert "python -m udpio.compat" in proc.stdout


def test_install_refuses_bad_arguments() -> None:
    proc = _python(
        """
        import asyncio, udpio, udpio.compat
        for kwargs in ({"loop": "tokio"}, {"eventloop": asyncio.new_event_loop(), "loop": "asyncio"}):
            try:
                udpio.compat.install(**kwargs)
            except udpio.InvalidArgumentError as exc:
                print(exc)
            finally:
                if "eventloop" in kwargs:
                    kwargs["eventloop"].close()
        import sys
        print("twisted.internet.reactor" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "'tokio'" in lines[0] and "'asyncio'" in lines[1]
    assert lines[2] == "False"  # nothing was installed


def test_python_m_udpio_compat_runs_a_script_unchanged(tmp_path: Path) -> None:
    script = tmp_path / "echo_once.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from twisted.internet import reactor
            from twisted.internet.protocol import DatagramProtocol

            class Once(DatagramProtocol):
                def datagramReceived(self, data, addr):
                    print(type(reactor).__name__, __name__, sys.argv, data)
                    reactor.stop()

            port = reactor.listenUDP(0, Once(), interface="127.0.0.1")
            reactor.callWhenRunning(port.write, b"hello", ("127.0.0.1", port.getHost().port))
            reactor.run()
            sys.exit(3)
            """
        )
    )
    proc = _python("", "-m", "udpio.compat", "--loop", "asyncio", str(script), "--loop", "x")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == f"UdpioReactor __main__ ['{script}', '--loop', 'x'] b'hello'"
    missing = _python("", "-m", "udpio.compat", str(tmp_path / "missing.py"))
    assert missing.returncode == 2 and "no such script" in missing.stderr


def test_trial_lists_the_plugin_from_a_checkout() -> None:
    """The dropin is found by Twisted's plugin search with the checkout's root as the working directory (as
    with ``python -m`` from the root) too: it comes from the install (compat/twisted_plugin/__init__.py says
    how); tests/test_packaging.py runs trial and twistd from elsewhere."""
    proc = _python("", "-m", "twisted.trial", "--help-reactors", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+udpio\s+udpio's drop-in reactor", proc.stdout, re.MULTILINE), proc.stdout


def test_twistd_runs_an_application_on_the_udpio_reactor(tmp_path: Path) -> None:
    tac = tmp_path / "app.tac"
    tac.write_text(
        textwrap.dedent(
            """
            from twisted.application import internet, service
            from twisted.internet import reactor
            from twisted.internet.protocol import DatagramProtocol

            class Once(DatagramProtocol):
                def startProtocol(self):
                    self.transport.write(b"ping", ("127.0.0.1", self.transport.getHost().port))

                def datagramReceived(self, data, addr):
                    print("received", data, flush=True)
                    reactor.stop()

            application = service.Application("udpio-twistd-test")
            internet.UDPServer(0, Once(), interface="127.0.0.1").setServiceParent(application)
            """
        )
    )
    proc = _python(
        "from twisted.scripts.twistd import run; run()",
        "--reactor=udpio",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "-y",
        str(tac),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reactor class: udpio.compat._reactor.UdpioReactor" in proc.stdout, proc.stdout
    assert "received b'ping'" in proc.stdout, proc.stdout
