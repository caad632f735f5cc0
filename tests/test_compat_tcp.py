"""TCP on the drop-in reactor: Twisted's own transports, on udpio's loop, behaving as on a selector loop.

A fresh :class:`UdpioReactor` per test on each loop (the ``loop_kind`` fixture), run until the test's
coroutine ends, as Twisted's ReactorBuilder does. Twisted's whole ``test_tcp`` suite runs against the reactor
in CI (``tests/run_twisted_suites.py``); the tests here pin the one behaviour udpio had to repair.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

pytest.importorskip("twisted")

from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from udpio.compat import UdpioReactor

import udpio

#: What the peer sends before it resets the connection, and how much the server reads per event: many reads
#: stand between the first read event and the reset, as with a large request cut off by a crashing client.
SENT = 32 * 1024
READ_SIZE = 1024


@pytest.fixture
def reactor(loop_kind: str) -> Iterator[UdpioReactor]:
    loop = udpio.new_event_loop(loop_kind)
    built = UdpioReactor(loop)
    try:
        yield built
    finally:
        # What Twisted's ReactorBuilder does for the reactors it made: connections, timers, the waker.
        built.disconnectAll()
        for call in built.getDelayedCalls():
            call.cancel()
        for reader in list(built._internalReaders):
            built.removeReader(reader)
            reader.connectionLost(None)
        loop.close()


def run(reactor: UdpioReactor, body: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 20.0) -> Any:
    """Run ``reactor`` until ``body()`` ends; return or raise its outcome (an AssertionError on timeout)."""
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


class PausedServer(Protocol):
    """Reads nothing until told (``pauseProducing`` in ``connectionMade``), says one byte, records the rest."""

    def __init__(self, connected: defer.Deferred[PausedServer], lost: defer.Deferred[BaseException]) -> None:
        self.made = connected
        self.lost = lost
        self.received = 0

    def connectionMade(self) -> None:
        self.transport.bufferSize = READ_SIZE  # type: ignore[union-attr]  # tcp.Connection's read size
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.transport.write(b"x")  # type: ignore[union-attr]
        self.made.callback(self)  # not self.connected: Twisted sets that attribute to 1

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = terror.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)  # the exception: a Failure given to callback() would errback


def _send_then_reset(reactor: UdpioReactor, port: int, done: defer.Deferred[None]) -> None:
    """A peer (in a thread: it blocks) that sends ``SENT`` bytes and closes with the server's byte unread,
    which makes the kernel answer with a reset (RST) instead of a FIN (RFC 2525 section 2.17; tcp(7));
    ``done`` fires in the reactor once the reset is sent, or fails with what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as peer:
            peer.sendall(b"y" * SENT)
            peer.recv(1, socket.MSG_PEEK)  # waits for the byte without reading it
    except OSError:
        reactor.callFromThread(done.errback, Failure())
    else:
        reactor.callFromThread(done.callback, None)


def test_reset_behind_unread_bytes_ends_the_connection(reactor: UdpioReactor) -> None:
    """Regression (issue 14, Twisted's ``AbortConnectionTests.test_resumeProducingThrows`` hung on uvloop):
    a reset that arrives behind unread bytes makes epoll report POLLERR, and libuv stops watching a
    descriptor after POLLERR; uvloop ran the reader once and closed its handle, so the connection read one
    buffer and never another, and never learnt it was lost. On a selector loop, and now on uvloop, every
    byte is read, then the reset ends the connection."""
    connected: defer.Deferred[PausedServer] = defer.Deferred()
    lost: defer.Deferred[BaseException] = defer.Deferred()
    reset: defer.Deferred[None] = defer.Deferred()
    factory = ServerFactory.forProtocol(lambda: PausedServer(connected, lost))  # type: ignore[arg-type]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = threading.Thread(target=_send_then_reset, args=(reactor, port.getHost().port, reset))
    peer.start()

    async def body() -> tuple[int, BaseException]:
        server = await connected
        await reset  # the reset is queued behind the peer's bytes before the server reads any of them
        server.transport.resumeProducing()  # type: ignore[union-attr]
        reason = await lost
        return server.received, reason

    try:
        received, reason = run(reactor, body)
    finally:
        peer.join(20)
        port.stopListening()
    assert received == SENT
    assert isinstance(reason, terror.ConnectionLost), reason  # ECONNRESET, as Twisted reports a reset
