"""Twisted's UDP ports on udpio's transport: what the drop-in reactor's ``listenUDP``, ``listenMulticast`` and
``adoptDatagramPort`` return.

A port presents Twisted's API exactly (``IListeningPort``, ``IUDPTransport``, ``IMulticastTransport``,
``ISystemHandle``, ``ILoggingContext``, with the semantics of ``twisted.internet.udp.Port``), while the I/O is
udpio's :class:`~udpio.DatagramTransport`, used through its public extension surface only (SEAMS.md). Data
flows one way::

    socket -> udpio's receive strategy, inside the port's read-event wrapper (Twisted's log context)
           -> _Bridge.datagram_received -> protocol.datagramReceived

and ``_Bridge.datagram_received`` *is* the Twisted protocol's bound ``datagramReceived`` (IPv4), so a datagram
costs no more Python calls on this path than on udpio's own. ``write`` sends through the transport's counted
``sendto_or_raise`` (Twisted's errors, raised), except that what a protocol writes while a read event is
delivered is held and sent at the end of the event, each run to one peer in one GSO system call
(``_MAX_HELD_WRITES``); the rare ``EAGAIN`` makes the transport buffer the datagram (Twisted raises it to the
caller instead).

Where Twisted's ports are wrong, these are not (docs/twisted.md lists each difference):

* ICMP port-unreachable on a connected port calls ``connectionRefused`` every time and the port stays open
  (Twisted's epoll and poll reactors close it silently: Twisted #5377, #6287, #6467). On uvloop the
  transport re-arms its reader after each such error (libuv stops polling an fd after ``POLLERR``).
* A datagram larger than ``maxPacketSize`` is dropped and counted (``transport.counters.dropped_oversize``),
  not truncated silently.
* An IPv6 link-local sender keeps its scope: Twisted's ``addr[:2]`` drops it and replies fail; here the host
  reads ``"fe80::1%2"``, still a ``(host, port)`` pair.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from twisted.internet import address as taddress
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IListeningPort,
    ILoggingContext,
    IMulticastTransport,
    ISystemHandle,
    IUDPTransport,
)
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]  # zope ships no type information

from udpio import IO_CORE, _membership, _sockopts
from udpio._addr import Address, check_destination_port, check_port
from udpio._errors import EndpointClosedError, InvalidArgumentError, InvalidSocketError
from udpio._factories import validated_duplicate
from udpio._interfaces import Interface, check_group, resolve_interface
from udpio._limits import MAX_DATAGRAMS_PER_EVENT, max_payload
from udpio._options import TransportOptions
from udpio._transport import DatagramTransport

if TYPE_CHECKING:
    from ._reactor import UdpioReactor

#: What a Twisted protocol gets as the sender and passes to ``write``: ``(host, port)``.
TwistedAddress: TypeAlias = tuple[str, int]
_Socket: TypeAlias = socket.socket
_Receiver: TypeAlias = Callable[[bytes, Any], None]

#: Twisted's default ``maxPacketSize`` for ``listenUDP``/``listenMulticast``/``adoptDatagramPort``.
DEFAULT_MAX_PACKET_SIZE = 8192
#: Destinations ``write`` has validated, remembered so the hot path is one dict lookup; cleared when full,
#: so a protocol writing to ever new peers cannot grow it without bound (as udpio's transport does).
_DESTINATION_CACHE_SIZE = 1024
#: Writes a protocol makes while it handles one read event are held and sent when the event's datagrams are all
#: delivered: with udpio's compiled core, all of them in one ``sendmmsg`` through the transport's
#: ``send_batch`` (replies to one peer joined into GSO runs inside it); on the pure-Python path the replies to
#: one peer leave in one GSO ``sendmsg`` (``send_many``). Either way far fewer system calls than one ``sendto``
#: each, the largest saving left on a UDP server's path. At most this many are held (one read event delivers at
#: most 256 datagrams); more are sent at once. It also bounds the rounds of :meth:`UDPPort._holdingWrites`.
_MAX_HELD_WRITES = MAX_DATAGRAMS_PER_EVENT
#: Reading again after the held replies are out (see :meth:`UDPPort._holdingWrites`) costs one receive and
#: pays off when it finds the peer's next request already queued; it is done while the recent share of such
#: rounds that found something to answer (a running average in 1/256ths, each round weighing 1/8) is at least
#: one half, where it saves a readiness wait for every receive it costs...
_REREAD_FULL = 256
_REREAD_WORTH = _REREAD_FULL // 2
#: ... and otherwise tried once every this many read events, so that a change of traffic is noticed.
_REREAD_PROBE_EVENTS = 16
#: Held writes go out in one ``sendmmsg`` (``send_batch`` with the compiled core's batch backend); without it
#: ``send_batch`` is a loop of ``sendto`` and the per-peer GSO runs of ``send_many`` save more.
_SENDMMSG = IO_CORE == "compiled"
#: Twisted accepts this name for the IPv4 limited broadcast address in ``write``.
_BROADCAST = "<broadcast>"
#: Joining or leaving with ``interface=""`` means "the interface the kernel's route for the group picks", as
#: on Twisted (``INADDR_ANY`` / index 0). udpio's own API never does this; the drop-in reactor must, or an
#: existing Twisted program would silently stop hearing its LAN groups.
_ANY_INTERFACE = Interface(0, "any (routed)", None)

_LOG_CONTEXT_KEY: Any = log.ILogContext

# -- Twisted's unannotated callables, typed once here -------------------------------------------------------


def _invalid_address(value: object, message: str) -> terror.InvalidAddressError:
    return terror.InvalidAddressError(value, message)  # type: ignore[no-untyped-call]  # unannotated in Twisted


def _cannot_listen(interface: str, port: int | None, reason: object) -> terror.CannotListenError:
    return terror.CannotListenError(interface, port, reason)  # type: ignore[no-untyped-call]  # unannotated


def _log_failure(exc: BaseException | None, why: str | None = None) -> None:
    """``log.err``: a failure in Twisted's log (where trial sees it), ``exc=None`` for the one being handled."""
    failure = None if exc is None else Failure(exc)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    log.err(failure, why)  # type: ignore[no-untyped-call]  # unannotated in Twisted


def _call_in_context(ctx: dict[Any, Any], function: Callable[[], None]) -> None:
    context.call(ctx, function)  # type: ignore[no-untyped-call]  # unannotated in Twisted


def _log_context(system: str) -> dict[Any, Any]:
    """The context ``callWithLogger`` sets for a reader: Twisted's log context with ``system`` replaced."""
    current = context.get(_LOG_CONTEXT_KEY)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    base: dict[str, Any] = dict(current or {})
    base["system"] = system
    return {_LOG_CONTEXT_KEY: base}


def _ipv6_receiver(receive: _Receiver) -> Callable[[bytes, Any], None]:
    """Deliver IPv6 senders as Twisted does, ``(host, port)``, keeping a link-local scope in the host."""

    def deliver(data: bytes, addr: Any) -> None:
        scope = addr[3]
        receive(data, (f"{addr[0]}%{scope}", addr[1]) if scope else (addr[0], addr[1]))

    return deliver


def _maybe_resolve(reactor: UdpioReactor, name: str) -> defer.Deferred[str]:
    """An IP literal as it is, a name through the reactor's resolver (as Twisted's multicast mixin does)."""
    if isIPAddress(name) or isIPv6Address(name):
        return defer.succeed(name)
    resolved: defer.Deferred[str] = reactor.resolve(name)
    return resolved


class _Bridge(asyncio.DatagramProtocol):
    """The asyncio protocol udpio's transport drives; every callback goes to the port that made it.

    ``datagram_received`` is replaced per instance by the Twisted protocol's own ``datagramReceived`` when
    the port starts, so no frame of this class runs per datagram.
    """

    def __init__(
        self,
        made: Callable[[], None],
        receive: _Receiver,
        error: Callable[[Exception], None],
        lost: Callable[[Exception | None], None],
    ) -> None:
        self._made = made
        self._receive = receive
        self._error = error
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)


@implementer(IListeningPort, IUDPTransport, ISystemHandle, ILoggingContext)
class UDPPort:
    """A UDP port of the udpio reactor: Twisted's ``udp.Port`` API on udpio's transport.

    Made by ``reactor.listenUDP`` and ``reactor.adoptDatagramPort``; the protocol's ``transport``. Attributes
    Twisted programs read are kept: ``port``, ``interface``, ``protocol``, ``maxPacketSize``,
    ``addressFamily``, ``socket``, ``connected``, ``reactor`` and ``_realPortNumber``. :attr:`counters` is
    udpio's (datagrams in and out, drops, errors).
    """

    addressFamily: socket.AddressFamily = socket.AF_INET
    socketType: socket.SocketKind = socket.SOCK_DGRAM

    def __init__(
        self,
        port: int | None,
        proto: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = DEFAULT_MAX_PACKET_SIZE,
        reactor: UdpioReactor | None = None,
    ) -> None:
        if reactor is None:
            raise InvalidArgumentError("reactor", "the udpio reactor that owns this port", reactor)
        self.reactor = reactor
        self.port = port
        self.protocol = proto
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.connected = False
        self.disconnected = False
        self.socket: _Socket | None = None
        self._realPortNumber: int | None = None
        self._connectedAddr: TwistedAddress | None = None
        self._preexistingSocket: _Socket | None = None
        self._transport: DatagramTransport | None = None
        self._bridge = _Bridge(self._transportMade, self._receiveUnbound, self._errorReceived, self._transportLost)
        self._protocolStarted = False
        self._adopted = False
        self._stopped: list[defer.Deferred[None]] = []
        self._destinations: dict[Any, Any] = {}
        # The transport's counted send (udpio's extension surface), bound while listening: None once closed.
        self._sendNow: Callable[[bytes, Any], None] | None = None
        self._held: list[tuple[bytes, Any]] | None = None  # a list during a read event, see _MAX_HELD_WRITES
        self._rereadHits = _REREAD_FULL  # see _REREAD_WORTH: start by reading again, as Twisted does
        self._rereadSkipped = 0
        self._logContext: dict[Any, Any] = {}
        self._setAddressFamily()
        self._maxPayload = max_payload(self.addressFamily)
        self.setLogStr()

    @classmethod
    def _fromListeningDescriptor(
        cls,
        reactor: UdpioReactor,
        fd: int,
        addressFamily: int,
        protocol: AbstractDatagramProtocol,
        maxPacketSize: int,
    ) -> UDPPort:
        """A port for a socket built elsewhere (``adoptDatagramPort``): udpio checks it (bound, non-blocking,
        UDP, of ``addressFamily``) and serves a duplicate; the caller still owns ``fd``, as on Twisted."""
        sock = validated_duplicate(fd)
        try:
            if sock.family != addressFamily:
                raise InvalidSocketError(fd, f"a socket of family {addressFamily!r} (it is {sock.family!r})")
            self = cls(None, protocol, sock.getsockname()[0], maxPacketSize, reactor)
        except BaseException:
            sock.close()
            raise
        self._preexistingSocket = sock
        self._adopted = True
        return self

    # -- identity -------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        if self._realPortNumber is not None:
            return f"<{self.protocol.__class__} on {self._realPortNumber}>"
        return f"<{self.protocol.__class__} not connected>"

    def _setAddressFamily(self) -> None:
        interface: object = self.interface
        if not isinstance(interface, str):
            raise _invalid_address(interface, "not an IPv4 or IPv6 address.")
        if isIPv6Address(interface):
            self.addressFamily = socket.AF_INET6
        elif isIPAddress(interface) or not interface:
            self.addressFamily = socket.AF_INET
        else:
            raise _invalid_address(interface, "not an IPv4 or IPv6 address.")

    def _getLogPrefix(self, applicationObject: object) -> str:
        if ILoggingContext.providedBy(applicationObject):
            return str(applicationObject.logPrefix())  # type: ignore[attr-defined]  # provided, checked above
        return applicationObject.__class__.__name__

    def setLogStr(self) -> None:
        """Set ``logstr`` from the protocol (``"<prefix> (UDP)"``), as Twisted's port does."""
        self.logstr = f"{self._getLogPrefix(self.protocol)} (UDP)"

    def logPrefix(self) -> str:
        """The log prefix (``system``) of everything this port and its protocol log."""
        return self.logstr

    def getHandle(self) -> _Socket:
        """The socket (udpio's: do not close it; ``stopListening`` does)."""
        return self._live_socket()

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return -1 if self.socket is None else self.socket.fileno()

    @property
    def counters(self) -> Any:
        """udpio's :class:`~udpio.Counters` for this port (``None`` before it listens)."""
        return None if self._transport is None else self._transport.counters

    def _live_socket(self) -> _Socket:
        if self.socket is None or not self.connected:
            raise terror.NotListeningError(f"{self!r} is closed")
        return self.socket

    # -- start ----------------------------------------------------------------------------------------------

    def createInternetSocket(self) -> _Socket:
        """A new non-blocking UDP socket of the port's family (IPv6: dual-stack, as Twisted's on Linux)."""
        sock = _sockopts.open_socket(self.addressFamily)
        try:
            if self.addressFamily == socket.AF_INET6:
                _sockopts.set_v6only(sock, False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _bindSocket(self) -> _Socket:
        if self._preexistingSocket is not None:
            sock, self._preexistingSocket = self._preexistingSocket, None
            return sock
        if self._adopted:
            raise _cannot_listen(self.interface, self.port, "an adopted port cannot listen again")
        check_port(self.port)
        try:
            sock = self.createInternetSocket()
        except OSError as exc:
            raise _cannot_listen(self.interface, self.port, exc) from exc
        try:
            sock.bind((self.interface, self.port))
        except OSError as exc:
            sock.close()
            raise _cannot_listen(self.interface, self.port, exc) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _maxSize(self, family: int) -> int | None:
        size: object = self.maxPacketSize
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgumentError("maxPacketSize", "an int >= 0 (bytes)", size)
        return None if size >= max_payload(family) else size

    def startListening(self) -> None:
        """Bind (or take the adopted socket), log ``"<prefix> starting on <port>"``, start the protocol
        (``makeConnection``, hence ``startProtocol``) and start reading. Does nothing if already listening.

        Raises Twisted's ``CannotListenError`` when the address cannot be bound, udpio's
        :class:`~udpio.InvalidPortError` for a port outside 0..65535, and whatever ``startProtocol`` raised
        (the port is then closed again).
        """
        if self.connected:
            return
        sock = self._bindSocket()
        try:
            max_size = self._maxSize(sock.family)
            remote: Address | None
            try:
                remote = sock.getpeername()
            except OSError:
                remote = None  # ENOTCONN: an unconnected socket, the usual case
            self._realPortNumber = sock.getsockname()[1]
            log.msg(f"{self._getLogPrefix(self.protocol)} starting on {self._realPortNumber}")
            loop = self.reactor._asyncioEventloop  # Twisted's AsyncioSelectorReactor keeps its loop here
            transport = DatagramTransport(
                loop, sock, self._bridge, TransportOptions(max_size=max_size), remote=remote
            )
        except BaseException:
            self._realPortNumber = None
            sock.close()
            raise
        if remote is not None:  # an adopted connected socket is a connected port
            self._connectedAddr = (remote[0], remote[1])
        self.socket = sock
        self._transport = transport
        self._sendNow = transport.sendto_or_raise
        self._logContext = _log_context(self.logstr)
        # Every readiness event runs in the port's log context, as callWithLogger runs a Twisted reader
        # (log.msg from datagramReceived carries the port's "system"), with the protocol's writes held
        # (see _MAX_HELD_WRITES); a handler's exception goes to log.err as on Twisted, where trial sees it.
        transport.set_read_event_wrapper(self._readEvent)
        transport.set_handler_error_hook(self._handlerFailed)
        self._destinations.clear()
        self.connected = True
        self.disconnected = False
        self.reactor._portStarted(self)
        try:
            # Now, not in the loop's next step: Twisted's listenUDP starts the protocol before it returns,
            # and the reactor may not be running yet.
            transport.start()
        except BaseException:
            self._abandon()
            raise

    def _receiveUnbound(self, data: bytes, addr: Any) -> None:
        """Delivery before :meth:`_transportMade` binds the protocol's own method (not reached in practice)."""
        self.protocol.datagramReceived(data, addr)

    def _readEvent(self, readEvent: Callable[[], None]) -> None:
        """The transport's read-event wrapper: the port's log context, and writes held when the reactor says so."""
        if self.reactor.hold_writes:
            _call_in_context(self._logContext, functools.partial(self._holdingWrites, readEvent))
        else:
            _call_in_context(self._logContext, readEvent)

    def _holdingWrites(self, readEvent: Callable[[], None]) -> None:
        """One readiness event: deliver what is queued on the socket, holding the protocol's writes, then
        send them (see :data:`_MAX_HELD_WRITES`).

        When the protocol answered, it may read again before going back to the loop, as Twisted's ``doRead``
        does (it reads until ``EAGAIN``, sending each reply as it is written): a request/response peer that
        answers fast has its next request queued by the time the replies are out, and reading it now costs one
        receive where going back to the loop costs a readiness wait as well (issue 14: one request in flight
        made more system calls per request here than on Twisted's epoll reactor). When the peer is slower
        than that, the extra receive finds nothing and is one system call wasted per request (Twisted's
        reactor pays it every time, in its final ``EAGAIN`` receive), so it is done only while it pays off
        (:data:`_REREAD_WORTH`). A round that answers nothing ends the event, as does the transport pausing or
        closing; at most ``_MAX_HELD_WRITES`` replies per event, so one busy port cannot keep the loop from
        its timers and other sockets.
        """
        transport = self._transport
        answered = 0
        rereading = False
        while True:
            self._held = []
            try:
                readEvent()
            finally:
                held, self._held = self._held, None
                if held:
                    self._sendHeld(held)
            if rereading:  # running average of the rounds that found something to answer
                hits = self._rereadHits
                self._rereadHits = hits + ((_REREAD_FULL - hits) >> 3) if held else hits - (hits >> 3)
            answered += len(held)
            if not held or answered >= _MAX_HELD_WRITES or transport is None or not transport.is_reading():
                return
            if not rereading and self._rereadHits < _REREAD_WORTH:
                self._rereadSkipped += 1
                if self._rereadSkipped < _REREAD_PROBE_EVENTS:
                    return
            self._rereadSkipped = 0
            rereading = True

    def _handlerFailed(self, exc: Exception, addr: object) -> None:
        """A handler raised (counted by the transport): Twisted logs it with ``log.err``."""
        _log_failure(exc)

    def _transportMade(self) -> None:
        receive: _Receiver = self.protocol.datagramReceived
        # The hot path: udpio's read loop calls the Twisted protocol's own bound method (IPv4), so nothing of
        # this module runs per datagram. Bound once here: replacing datagramReceived on a running protocol
        # is not seen (Twisted looks it up per datagram).
        deliver = _ipv6_receiver(receive) if self.addressFamily == socket.AF_INET6 else receive
        # A per-instance attribute over the method: the fast path (mypy sees a method, hence the codes).
        self._bridge.datagram_received = deliver  # type: ignore[method-assign,assignment]
        self.protocol.makeConnection(self)  # type: ignore[arg-type]  # zope's @implementer is invisible to mypy
        self._protocolStarted = True

    def _abandon(self) -> None:
        """``startProtocol`` failed: the transport closed itself; close the socket now and forget the port."""
        self.connected = False
        self.disconnected = True
        self._realPortNumber = None
        if self.protocol.transport is self:
            self.protocol.transport = None
        if self.socket is not None:
            self.socket.close()
        self.reactor._portStopped(self)

    # -- stop -----------------------------------------------------------------------------------------------

    def stopListening(self) -> defer.Deferred[None] | None:
        """Stop reading, send what is still buffered, close the socket, call ``stopProtocol``; the Deferred
        fires after that (the port number is free by then). ``None`` when the port is not listening, as on
        Twisted; called again before the port closed, it returns another Deferred for the same close.
        """
        if not self.connected or self._transport is None:
            return None
        stopped: defer.Deferred[None] = defer.Deferred()
        self._stopped.append(stopped)
        self._sendHeldNow()
        self._transport.pause_reading()
        # Closed in the reactor's next iteration, as Twisted's port calls connectionLost with callLater(0):
        # until then write() still sends (on the udpio transport, a closing endpoint refuses sends).
        self.reactor.callLater(0, self._transport.close)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return stopped

    def loseConnection(self) -> defer.Deferred[None] | None:
        """Deprecated by Twisted in favour of :meth:`stopListening` (same warning); does the same."""
        warnings.warn("Please use stopListening() to disconnect port", DeprecationWarning, stacklevel=2)
        return self.stopListening()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Close the port now: log ``"(UDP Port <n> Closed)"``, close the socket (dropping what is buffered,
        counted in ``dropped_on_close``), call the protocol's ``doStop`` and fire :meth:`stopListening`'s
        Deferreds. The reactor calls it at shutdown; :meth:`stopListening` is the way to stop a port."""
        if not self.connected:
            return
        self._sendHeldNow()  # what the protocol wrote before closing goes out, as it would on Twisted
        log.msg(f"(UDP Port {self._realPortNumber} Closed)")
        self._realPortNumber = None
        self.connected = False
        self.disconnected = True
        self._held = None
        self._sendNow = None
        self._destinations.clear()
        if self._transport is not None:
            self._transport.abort()  # stops reading now; connection_lost follows and finds the port closed
        if self.socket is not None:
            # Now, not when the transport gets round to it: whoever the Deferred wakes may bind this port.
            self.socket.close()
        self.reactor._portStopped(self)
        stopped, self._stopped = self._stopped, []
        try:
            if self._protocolStarted:
                self._protocolStarted = False
                self.protocol.doStop()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        finally:
            for deferred in stopped:
                deferred.callback(None)

    def _transportLost(self, exc: Exception | None) -> None:
        try:
            self.connectionLost(None if exc is None else Failure(exc))  # type: ignore[no-untyped-call]  # unannotated
        except Exception:
            _log_failure(None, f"{self.logstr}: error while stopping the protocol")

    def _pauseReading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    @property
    def reading(self) -> bool:
        """Whether the port is listening and its socket watched for datagrams."""
        return self.connected and self._transport is not None and self._transport.is_reading()

    # -- errors from the transport ----------------------------------------------------------------------

    def _errorReceived(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            # ICMP port-unreachable: Twisted calls connectionRefused on a connected port and ignores it on an
            # unconnected one (udp.Port.doRead). Every time, and the port stays open.
            if self._connectedAddr is not None:
                self.protocol.connectionRefused()  # type: ignore[attr-defined]  # DatagramProtocol has it
            return
        # Anything else (ICMP unreachable host/net on a connected socket, a held or buffered send that failed):
        # on Twisted it is raised out of doRead (or write), and the reactor logs it with log.err, as here; its
        # reactor then closes the port, udpio keeps serving.
        _log_failure(exc, f"{self.logstr}: {exc!r} (the port keeps serving)")

    # -- IUDPTransport ----------------------------------------------------------------------------------

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """Send ``datagram`` to ``addr``, an IP ``(host, port)`` (``None``, or the peer, once connected).

        As on Twisted: a host name raises ``InvalidAddressError``, as does an address of the other family; a
        datagram too long for UDP raises ``MessageLengthError``; ICMP refused reported by the send calls
        ``connectionRefused`` on a connected port and is ignored otherwise; other ``OSError`` propagate.

        Two differences, both about when the datagram leaves: written from ``datagramReceived``, it is sent
        when the read event's datagrams are all delivered (replies to one peer go out together, in one GSO
        system call), and an error of that send is logged as Twisted logs what ``datagramReceived`` raises;
        and a full socket buffer (``EAGAIN``, which Twisted raises) queues the datagram in udpio's transport
        (bounded, drops counted) until the socket is writable.
        """
        if self._connectedAddr is None:
            dest = self._destinations.get(addr)
            if dest is None:
                dest = self._destination(addr)
        else:
            if addr is not None:
                self._checkConnectedAddress(addr)
            dest = None
        held = self._held
        if held is None:
            send = self._sendNow
            if send is None:
                raise terror.NotListeningError(f"{self!r} is closed")
            try:
                send(datagram, dest)
            except OSError as exc:
                self._writeFailed(exc)
            return
        if type(datagram) is not bytes:
            if not isinstance(datagram, (bytes, bytearray, memoryview)):
                raise TypeError(f"write() takes bytes, not {type(datagram).__name__}")
            datagram = bytes(datagram)  # a copy: the caller may reuse its buffer before the held send
        if len(datagram) > self._maxPayload:
            raise terror.MessageLengthError("message too long")  # the kernel's EMSGSIZE, said at once
        held.append((datagram, dest))
        if len(held) >= _MAX_HELD_WRITES:
            self._sendHeldNow()

    def _checkConnectedAddress(self, addr: Any) -> None:
        if not isinstance(addr, tuple) or tuple(addr[:2]) != self._connectedAddr:
            raise _invalid_address(addr, f"this port is connected to {self._connectedAddr}; write() without an address")

    def _send(self, datagram: bytes, dest: Any) -> None:
        """Send one datagram now, counted by the transport (queued behind what it already queued, or on
        ``EAGAIN``); a send error is raised as Twisted's ``write`` raises it."""
        send = self._sendNow
        if send is None:
            raise terror.NotListeningError(f"{self!r} is closed")
        try:
            send(datagram, dest)
        except OSError as exc:
            self._writeFailed(exc)

    def _sendHeldNow(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._sendHeld(held)

    def _sendHeld(self, held: list[tuple[bytes, Any]]) -> None:
        """Send held writes in order. With the compiled core (:data:`_SENDMMSG`), an unconnected port sends
        them all with the transport's ``send_batch``: one ``sendmmsg``, runs to one peer as GSO runs; an error
        the kernel returns for one of them goes to ``error_received`` (logged, or ``connectionRefused``, as for
        any error the transport reports) and the others still go. Otherwise, or when ``send_batch`` refuses the
        list before sending any of it, each run to one destination goes with udpio's ``send_many`` (one GSO
        ``sendmsg`` per run of equal-sized datagrams), a lone datagram with one send. A failure there is logged,
        as Twisted logs an exception ``write`` raises inside ``datagramReceived``, and the rest still go."""
        transport = self._transport
        count = len(held)
        if _SENDMMSG and count > 1 and self._connectedAddr is None and transport is not None:
            try:
                transport.send_batch(held)
            except (ValueError, TypeError, EndpointClosedError):
                pass  # checked before anything was sent: one run at a time below, each failure on its own
            else:
                return
        start = 0
        while start < count:
            dest = held[start][1]
            end = start + 1
            while end < count and held[end][1] == dest:
                end += 1
            try:
                if end - start == 1 or transport is None or transport.is_closing():
                    for datagram, _ in held[start:end]:
                        self._send(datagram, dest)
                else:
                    transport.send_many([datagram for datagram, _ in held[start:end]], dest)
            except Exception:
                _log_failure(None, f"{self.logstr}: sending a datagram written in datagramReceived failed")
            start = end

    def _destination(self, addr: Any) -> Any:
        """Validate an unconnected port's destination the way Twisted does; remember it for the fast path."""
        self._live_socket()
        if addr is None:
            raise _invalid_address(addr, "write() needs an address on an unconnected port")
        if not isinstance(addr, tuple) or len(addr) not in (2, 4):
            raise _invalid_address(addr, "write() takes a (host, port) tuple")
        host = addr[0]
        if not isinstance(host, str) or (not isIPAddress(host) and not isIPv6Address(host) and host != _BROADCAST):
            raise _invalid_address(host, "write() only accepts IP addresses, not hostnames")
        if self.addressFamily == socket.AF_INET6 and (isIPAddress(host) or host == _BROADCAST):
            raise _invalid_address(host, "IPv6 port write() called with IPv4 or broadcast address")
        if self.addressFamily == socket.AF_INET and isIPv6Address(host):
            raise _invalid_address(host, "IPv4 port write() called with IPv6 address")
        check_port(addr[1])
        dest = ("255.255.255.255", addr[1]) if host == _BROADCAST else addr
        if len(self._destinations) >= _DESTINATION_CACHE_SIZE:
            self._destinations.clear()
        self._destinations[addr] = dest
        return dest

    def _writeFailed(self, exc: OSError) -> None:
        """A send error (counted by the transport), as Twisted's ``write`` reports it."""
        if exc.errno == errno.EMSGSIZE:
            raise terror.MessageLengthError("message too long") from exc
        if exc.errno == errno.ECONNREFUSED:
            # An earlier ICMP port-unreachable, reported by this send (udp(7)).
            if self._connectedAddr is not None:
                self.protocol.connectionRefused()  # type: ignore[attr-defined]  # DatagramProtocol has it
            return
        raise exc

    def writeSequence(self, seq: Iterable[bytes], addr: Any = None) -> None:
        """Send the concatenation of ``seq`` as one datagram."""
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        """Connect to ``(host, port)`` (UDP "connect"): only that peer is heard, ``write`` needs no address, and ICMP
        port-unreachable from it calls ``connectionRefused`` (every time; the port stays open).

        IP addresses only (``InvalidAddressError`` for a name) and once (``RuntimeError`` the second time),
        as on Twisted; a port outside 1..65535 raises :class:`~udpio.InvalidPortError`. Everything is checked
        before the port changes state.
        """
        if self._connectedAddr is not None:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        if not isinstance(host, str) or (not isIPAddress(host) and not isIPv6Address(host)):
            raise _invalid_address(host, "not an IPv4 or IPv6 address.")
        check_destination_port(port)
        self._live_socket()
        transport = self._transport
        assert transport is not None  # live socket, live transport
        self._sendHeldNow()  # written before connecting: sent before connecting
        transport.connect((host, port))
        self._connectedAddr = (host, port)

    def getHost(self) -> taddress.IPv4Address | taddress.IPv6Address:
        """The bound address as Twisted's ``IPv4Address``/``IPv6Address`` with type ``"UDP"``."""
        addr = self._live_socket().getsockname()
        if self.addressFamily == socket.AF_INET6:
            return taddress.IPv6Address("UDP", addr[0], addr[1], addr[2], addr[3])
        return taddress.IPv4Address("UDP", addr[0], addr[1])

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow or forbid sending to broadcast addresses (``SO_BROADCAST``; off by default)."""
        _sockopts.set_broadcast(self._live_socket(), bool(enabled))

    def getBroadcastAllowed(self) -> bool:
        """Whether this port may send to broadcast addresses."""
        return _sockopts.get_broadcast(self._live_socket())


@implementer(IMulticastTransport)
class MulticastPort(UDPPort):
    """A multicast port of the udpio reactor (``reactor.listenMulticast``): Twisted's ``MulticastPort`` API.

    Socket options go through udpio's ``_membership`` module. Semantics are Twisted's, including
    ``interface=""`` meaning "whatever interface the kernel routes the group to" in ``joinGroup`` and
    ``leaveGroup``, and the kernel's defaults on a new socket (TTL 1, loopback on, ``IP_MULTICAST_ALL`` on).
    Unlike Twisted, ``setTTL``/``getTTL`` set the hop limit on an IPv6 port (Twisted sets an IPv4 option).
    """

    def __init__(  # noqa: PLR0917  # Twisted's MulticastPort signature, called positionally as Twisted does
        self,
        port: int | None,
        proto: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = DEFAULT_MAX_PACKET_SIZE,
        reactor: UdpioReactor | None = None,
        listenMultiple: bool = False,
    ) -> None:
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.listenMultiple = listenMultiple

    def createInternetSocket(self) -> _Socket:
        """As :meth:`UDPPort.createInternetSocket`, sharing the port when ``listenMultiple`` was given
        (``SO_REUSEADDR``, and ``SO_REUSEPORT`` where it exists)."""
        sock = _sockopts.open_socket(
            self.addressFamily,
            reuse_addr=bool(self.listenMultiple),
            reuse_port=bool(self.listenMultiple) and hasattr(socket, "SO_REUSEPORT"),
        )
        try:
            if self.addressFamily == socket.AF_INET6:
                _sockopts.set_v6only(sock, False)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- outgoing options -------------------------------------------------------------------------------

    def getOutgoingInterface(self) -> str | int:
        """IPv4: the outgoing interface's address (``"0.0.0.0"``: the kernel's choice); IPv6: its index (0)."""
        interface = _membership.get_interface(self._live_socket())
        if self.addressFamily == socket.AF_INET6:
            return 0 if interface is None else interface.index
        return "0.0.0.0" if interface is None or interface.address is None else interface.address

    def setOutgoingInterface(self, addr: str | int) -> defer.Deferred[int]:
        """Send multicast out of ``addr``: IPv4 an address (or a name the reactor resolves), IPv6 an interface
        index, as on Twisted. The Deferred fires with 1, or fails (unknown interface, wrong type)."""

        async def change() -> int:
            interface: Interface
            if self.addressFamily == socket.AF_INET:
                if not isinstance(addr, str):
                    raise InvalidArgumentError("interface", "an IPv4 address (str) on an IPv4 port", addr)
                address = await _maybe_resolve(self.reactor, addr)
                interface = _ANY_INTERFACE if address == "0.0.0.0" else resolve_interface(address, socket.AF_INET)
            else:
                if isinstance(addr, bool) or not isinstance(addr, int):
                    raise InvalidArgumentError("interface", "an interface index (int) on an IPv6 port", addr)
                interface = _ANY_INTERFACE if addr == 0 else resolve_interface(addr, socket.AF_INET6)
            _membership.set_interface(self._live_socket(), interface)
            return 1

        return defer.Deferred.fromCoroutine(change())

    def getLoopbackMode(self) -> bool:
        """Whether this host's members of a group receive what this port sends to it."""
        return _membership.get_loopback(self._live_socket())

    def setLoopbackMode(self, mode: int) -> None:
        """Turn multicast loopback on or off (any true/false value)."""
        _membership.set_loopback(self._live_socket(), bool(mode))

    def getTTL(self) -> int:
        """The TTL (IPv4) or hop limit (IPv6) of outgoing multicast."""
        return _membership.get_ttl(self._live_socket())

    def setTTL(self, ttl: int) -> None:
        """Set the TTL / hop limit of outgoing multicast, 0..255 (``InvalidArgumentError`` otherwise)."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 255:
            raise InvalidArgumentError("ttl", "an int in 0..255 (hops)", ttl)
        _membership.set_ttl(self._live_socket(), ttl)

    # -- memberships ------------------------------------------------------------------------------------

    def joinGroup(self, addr: str, interface: str = "") -> defer.Deferred[None]:
        """Join group ``addr`` on ``interface``: an address of the port's family, an interface name, or
        ``""`` for the kernel's choice (Twisted's meaning). Fails with ``MulticastJoinError``; the udpio
        error (``AlreadyJoinedError``, ``InvalidGroupError``, ``UnknownInterfaceError``...) is its cause."""
        return defer.Deferred.fromCoroutine(self._membershipChange(True, addr, interface))

    def leaveGroup(self, addr: str, interface: str = "") -> defer.Deferred[None]:
        """Leave what :meth:`joinGroup` joined (``MulticastJoinError``, caused by ``NotJoinedError``...)."""
        return defer.Deferred.fromCoroutine(self._membershipChange(False, addr, interface))

    async def _membershipChange(self, join: bool, addr: str, interface: str | int) -> None:
        try:
            group = await _maybe_resolve(self.reactor, addr) if isinstance(addr, str) else addr
            _, canonical = check_group(group, self.addressFamily)
            iface = await self._membershipInterface(interface)
            sock = self._live_socket()
            if join:
                _membership.join_group(sock, canonical, iface)
            else:
                _membership.leave_group(sock, canonical, iface)
        except (ValueError, OSError) as exc:
            raise terror.MulticastJoinError(addr, interface, str(exc)) from exc

    async def _membershipInterface(self, interface: str | int) -> Interface:
        """Twisted names the membership interface by address; udpio also takes a name or (IPv6) an index."""
        family = self.addressFamily
        if isinstance(interface, int) and not isinstance(interface, bool) and family == socket.AF_INET6:
            return _ANY_INTERFACE if interface == 0 else resolve_interface(interface, family)
        if not isinstance(interface, str):
            raise InvalidArgumentError("interface", "an interface address or name (str)", interface)
        if not interface or interface == ("::" if family == socket.AF_INET6 else "0.0.0.0"):
            return _ANY_INTERFACE
        wrong = isIPv6Address(interface) if family == socket.AF_INET else isIPAddress(interface)
        if wrong:
            raise InvalidArgumentError("interface", "an address of the port's family", interface)
        if isIPAddress(interface) or isIPv6Address(interface):
            return resolve_interface(interface, family)
        try:
            socket.if_nametoindex(interface)
        except OSError:
            # Not an interface name: a host name, resolved as Twisted does.
            return resolve_interface(await _maybe_resolve(self.reactor, interface), family)
        return resolve_interface(interface, family)
