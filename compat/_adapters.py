"""Handlers across stacks: asyncio datagram protocols on Twisted, and Twisted datagram protocols on udpio.

Two adapters, one per direction, each a thin translation with no protocol logic of its own:

* :class:`TwistedAdapter` is a Twisted ``DatagramProtocol`` that drives an asyncio ``DatagramProtocol``:
  ``reactor.listenUDP(0, TwistedAdapter(MyAsyncioProtocol()), interface="127.0.0.1")``. The asyncio
  protocol's ``connection_made`` receives a :class:`TwistedPortTransport`, which has asyncio's
  ``DatagramTransport`` interface on top of Twisted's port.
* :func:`listen_twisted` / :func:`adopt_twisted` / :func:`listen_multicast_twisted` run a Twisted
  ``DatagramProtocol`` on udpio's own transport, with no Twisted reactor doing the I/O:
  ``port = await listen_twisted(0, MyTwistedProtocol())``. The protocol's ``transport`` is a
  :class:`UdpioPort` (Twisted's ``IListeningPort`` and ``IUDPTransport``) or a :class:`UdpioMulticastPort`
  (plus ``IMulticastTransport``) on top of :class:`udpio.DatagramTransport`.

Every mapping rule (and where the stacks differ by design) is in docs/twisted.md, "Handlers across stacks"
table; the comments below say why each rule is what it is. Each side raises its own vocabulary: the
asyncio-facing objects raise udpio's exceptions, the Twisted-facing ones raise Twisted's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from twisted.internet import address as _taddress
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IListeningPort, IMulticastTransport, IUDPTransport
from twisted.internet.protocol import AbstractDatagramProtocol, DatagramProtocol
from zope.interface import implementer  # type: ignore[import-untyped]  # zope ships no type information

import udpio
from udpio import _sockopts
from udpio._addr import Address, check_destination_port, family_name, format_address
from udpio._counters import Counters
from udpio._errors import DatagramTooLargeError, EndpointClosedError, InvalidAddressError, InvalidArgumentError
from udpio._limits import DEFAULT_BUFFER_LIMIT, max_payload

logger = logging.getLogger("udpio.compat")

#: What Twisted hands to ``datagramReceived``: ``(host, port)``; udpio keeps IPv6 4-tuples where they matter.
TwistedAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]


def twisted_address(addr: Address) -> TwistedAddress:
    """The address a Twisted protocol sees for a datagram from ``addr``.

    Twisted reduces every IPv6 source to ``(host, port)`` (``udp.Port.doRead``: ``addr[:2]``, Twisted ticket
    6826), which loses the scope of a link-local peer so that replying to it fails. udpio gives Twisted's
    2-tuple whenever that loses nothing (IPv4, or IPv6 with flowinfo and scope 0, e.g. ``::1``) and the full
    4-tuple otherwise, so ``transport.write(reply, addr)`` always reaches the sender.
    """
    if len(addr) == 4 and (addr[2] or addr[3]):
        return addr
    return (addr[0], addr[1])


def _address_error(address: object, message: str) -> terror.InvalidAddressError:
    """Twisted's ``InvalidAddressError`` (a ValueError), as Twisted's own ports raise it."""
    return terror.InvalidAddressError(address, message)  # type: ignore[no-untyped-call]  # unannotated in Twisted


def _port_socket(port: Any) -> socket.socket | None:
    """The socket of a Twisted port (``ISystemHandle.getHandle``), or ``None`` for ports without one."""
    get_handle = getattr(port, "getHandle", None)
    if get_handle is None:
        return None
    sock = get_handle()
    return sock if isinstance(sock, socket.socket) else None


def _same_peer(addr: Any, peer: Address) -> bool:
    """Whether ``addr`` names ``peer`` (a 2-tuple matches a 4-tuple with the same host and port)."""
    return isinstance(addr, tuple) and len(addr) >= 2 and addr[0] == peer[0] and addr[1] == peer[1]


# --------------------------------------------------------------------------------------------------
# asyncio protocol on Twisted
# --------------------------------------------------------------------------------------------------


class TwistedPortTransport(asyncio.DatagramTransport):
    """asyncio's ``DatagramTransport`` interface over a Twisted UDP port (given by :class:`TwistedAdapter`).

    ``sendto`` sends at once through ``port.write``: Twisted's UDP ports have no write buffer, so the write
    buffer size is always 0, ``pause_writing`` is never called, and a datagram the kernel has no room for
    (``EAGAIN``) is dropped and counted in ``counters.dropped_send_buffer`` (udpio's own transport would
    buffer it). Errors follow udpio's transport: a datagram too large for the family raises
    :class:`udpio.DatagramTooLargeError`, a bad destination :class:`udpio.InvalidAddressError`, and network
    errors (ICMP refused, EMSGSIZE, no route) go to the protocol's ``error_received``.
    """

    def __init__(self, port: Any, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__(extra=None)
        self._port = port
        self._protocol: asyncio.BaseProtocol = protocol
        self._closing = False
        self._counters = Counters()
        sock = _port_socket(port)
        peer: Address | None = None
        if sock is not None:
            self._family = sock.family
            sockname: Address = sock.getsockname()
            with contextlib.suppress(OSError):  # ENOTCONN: an unconnected port
                peer = sock.getpeername()
        else:
            # A port without ISystemHandle (not Twisted's udp.Port): what IUDPTransport itself tells.
            host = port.getHost()
            self._family = socket.AF_INET6 if ":" in host.host else socket.AF_INET
            sockname = (host.host, host.port)
            connected = getattr(port, "_connectedAddr", None)
            peer = (connected[0], connected[1]) if connected else None
        self._max_payload = max_payload(self._family)
        self._peer = peer
        self._extra: dict[str, Any] = {
            "socket": sock,
            "sockname": sockname,
            "peername": peer,
            "counters": self._counters,
            "twisted_port": port,
        }

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        peer = f" peer={format_address(self._peer)}" if self._peer else ""
        return f"<udpio.compat.TwistedPortTransport {state} {format_address(self._extra['sockname'])}{peer}>"

    @property
    def counters(self) -> Counters:
        """Datagrams and bytes in and out, drops and errors, counted by the adapter (as udpio's transport)."""
        return self._counters

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"socket"``, ``"sockname"``, ``"peername"``, ``"counters"``, ``"twisted_port"`` (the port)."""
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        """``True`` once :meth:`close` was called or Twisted stopped the port."""
        return self._closing

    def close(self) -> None:
        """Stop the port (``stopListening``); ``connection_lost(None)`` follows when Twisted has closed it."""
        if self._closing:
            return
        self._closing = True
        self._port.stopListening()

    def abort(self) -> None:
        """As :meth:`close`: with no write buffer there is nothing to drop."""
        self.close()

    def port_stopped(self) -> None:
        """Twisted stopped the port (``stopProtocol``, called by :class:`TwistedAdapter`): from now on
        :meth:`is_closing` says so and nothing more can be sent."""
        self._closing = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives datagrams."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol datagrams are delivered to."""
        return self._protocol

    def get_write_buffer_size(self) -> int:
        """Always 0: Twisted's UDP ports send at once or not at all."""
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(0, 0)``: there is no write buffer."""
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Accepted for interface compatibility; nothing is ever buffered, so the marks are never reached."""
        if (high is not None and high < 0) or (low is not None and low < 0):
            raise InvalidArgumentError("write buffer limits", "None or >= 0", (low, high))

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (``None`` or the peer on a connected port)."""
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        payload = bytes(data)
        if len(payload) > self._max_payload:
            raise DatagramTooLargeError(len(payload), self._max_payload, family_name(self._family))
        dest: Any
        if self._peer is not None:
            if addr is not None and not _same_peer(addr, self._peer):
                raise InvalidAddressError(
                    "addr", f"None or the connected peer {format_address(self._peer)}", addr
                )
            dest = None  # Twisted asserts addr in (None, connectedAddr): give it None
        elif addr is None:
            raise InvalidAddressError("addr", "a (host, port) destination on an unconnected endpoint", None)
        elif not isinstance(addr, tuple) or len(addr) not in (2, 4):
            raise InvalidAddressError("addr", "a (host, port) tuple", addr)
        else:
            dest = addr
        try:
            self._port.write(payload, dest)
        except terror.InvalidAddressError as exc:
            raise InvalidAddressError("addr", f"an IP address of the port's family ({exc.message})", addr) from exc
        except terror.MessageLengthError:
            # EMSGSIZE below the family's maximum (path MTU with DF, a smaller device MTU): a network
            # condition, reported as udpio's transport reports it.
            self._send_failed(OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE)))
        except (BlockingIOError, InterruptedError):
            self._counters.dropped_send_buffer += 1
        except OSError as exc:
            self._send_failed(exc)
        else:
            self._counters.datagrams_out += 1
            self._counters.bytes_out += len(payload)

    def _send_failed(self, exc: OSError) -> None:
        self._counters.send_errors += 1
        self._protocol.error_received(exc)  # type: ignore[attr-defined]  # a DatagramProtocol


class TwistedAdapter(DatagramProtocol):
    """A Twisted ``DatagramProtocol`` that runs an asyncio ``DatagramProtocol``.

    ``reactor.listenUDP(port, TwistedAdapter(protocol), interface=...)`` (or ``listenMulticast``,
    ``adoptDatagramPort``) serves ``protocol`` on Twisted. Callbacks map one to one: ``startProtocol`` ->
    ``connection_made(transport)`` with a :class:`TwistedPortTransport`; ``datagramReceived`` ->
    ``datagram_received`` (or ``datagrams_received([(data, addr)])`` for a protocol that only takes
    batches); ``connectionRefused`` -> ``error_received(ConnectionRefusedError)``; ``stopProtocol`` ->
    ``connection_lost(None)``.

    ``connect=(host, port)`` connects the port before ``connection_made``, as a Twisted protocol would in
    ``startProtocol`` (an asyncio protocol never connects its own transport). The ``transport`` attribute is
    Twisted's port; ``asyncio_transport`` is the wrapper the asyncio protocol got.
    """

    noisy = False  # the asyncio protocol logs what it wants; Twisted's "Starting protocol" lines are noise

    def __init__(self, protocol: asyncio.DatagramProtocol, *, connect: tuple[str, int] | None = None) -> None:
        if not isinstance(protocol, asyncio.BaseProtocol):
            raise InvalidArgumentError("protocol", "an asyncio.DatagramProtocol", protocol)
        self.protocol = protocol
        self._connect = connect
        self.asyncio_transport: TwistedPortTransport | None = None
        # A protocol that only overrides the batch hook (like udpio's echo could) still gets its data.
        self._batch_only = type(protocol).datagram_received is asyncio.DatagramProtocol.datagram_received and hasattr(
            protocol, "datagrams_received"
        )

    def __repr__(self) -> str:
        return f"<udpio.compat.TwistedAdapter for {type(self.protocol).__name__}>"

    def startProtocol(self) -> None:
        """Connect if asked, then hand the wrapped port to ``connection_made``."""
        port: Any = self.transport  # Twisted's port, set by makeConnection (its interface stubs lack self)
        if self._connect is not None:
            port.connect(*self._connect)
        self.asyncio_transport = TwistedPortTransport(port, self.protocol)
        self.protocol.connection_made(self.asyncio_transport)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Deliver to ``datagram_received``; an exception is counted, then Twisted logs it (``log.err``)."""
        transport = self.asyncio_transport
        if transport is not None:
            counters = transport.counters
            counters.datagrams_in += 1
            counters.bytes_in += len(datagram)
        try:
            if self._batch_only:
                self.protocol.datagrams_received([(datagram, addr)])  # type: ignore[attr-defined]
            else:
                self.protocol.datagram_received(datagram, addr)
        except Exception:
            if transport is not None:
                transport.counters.handler_errors += 1
            raise

    def connectionRefused(self) -> None:
        """ICMP port-unreachable from the connected peer: ``error_received(ConnectionRefusedError)``."""
        transport = self.asyncio_transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if transport is not None:
            transport.counters.errors_received += 1
        self.protocol.error_received(
            ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused by {format_address(peer)}")
        )

    def stopProtocol(self) -> None:
        """The port is closed (stopped by us, or by Twisted): ``connection_lost(None)``.

        Twisted does not tell ``stopProtocol`` why the port stopped, so the asyncio protocol always gets
        ``None``, even when Twisted's epoll reactor closed the port on an ICMP error (see docs/twisted.md).
        """
        if self.asyncio_transport is not None:
            self.asyncio_transport.port_stopped()
        self.protocol.connection_lost(None)


# --------------------------------------------------------------------------------------------------
# Twisted protocol on udpio
# --------------------------------------------------------------------------------------------------


class _Bridge(asyncio.DatagramProtocol):
    """The asyncio protocol udpio's transport drives; it forwards every callback to its :class:`UdpioPort`
    (through the callables the port hands it)."""

    def __init__(
        self,
        attached: Callable[[udpio.DatagramTransport], None],
        protocol: AbstractDatagramProtocol,
        error: Callable[[Exception], None],
        lost: Callable[[Exception | None], None],
    ) -> None:
        self._attached = attached
        self._protocol = protocol
        self._error = error
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attached(transport)  # type: ignore[arg-type]  # udpio.listen gives its DatagramTransport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._protocol.datagramReceived(data, twisted_address(addr))  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        self._error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)


@implementer(IListeningPort, IUDPTransport)
class UdpioPort:
    """Twisted's UDP port interface (``IListeningPort``, ``IUDPTransport``) on udpio's transport.

    Made by :func:`listen_twisted` and :func:`adopt_twisted`; the Twisted protocol's ``transport``. Twisted's
    semantics are kept: ``write(datagram, addr)`` raises ``MessageLengthError`` for a datagram too long and
    ``InvalidAddressError`` for a host name or an address of the other family; ``connect(host, port)`` takes
    IP addresses only and only once; ``connectionRefused`` is called for every ICMP port-unreachable on a
    connected port, which stays open (as on Twisted's select and asyncio reactors; Twisted's epoll and poll
    reactors close the port instead, Twisted #5377/#6287/#6467, and that defect is not copied). Unlike
    Twisted, a datagram the kernel has no room for is buffered (with udpio's flow control) instead of
    ``write`` raising ``EAGAIN``.
    """

    def __init__(self, protocol: AbstractDatagramProtocol) -> None:
        self.protocol = protocol
        self.addressFamily: int = socket.AF_INET  # the real one is set when the transport is attached
        self._transport: udpio.DatagramTransport | None = None
        self._connected_addr: tuple[str, int] | None = None
        self._peer: Address | None = None
        self._listening = False
        self._stopped: defer.Deferred[None] | None = None
        # Set while write() is inside sendto: udpio reports send errors through error_received, and
        # Twisted's write raises (or calls connectionRefused) instead, so write() collects them here.
        self._send_errors: list[Exception] | None = None

    def _bridge(self) -> _Bridge:
        """The asyncio protocol to hand to udpio's factories for this port."""
        return _Bridge(self._attached, self.protocol, self._error, self._lost)

    def __repr__(self) -> str:
        state = "listening" if self._listening else "stopped"
        where = format_address(self._transport.get_extra_info("sockname")) if self._transport else "-"
        return f"<udpio.compat.UdpioPort {state} {where} for {type(self.protocol).__name__}>"

    # -- called by the bridge (udpio side) -----------------------------------------------------------------

    def _attached(self, transport: udpio.DatagramTransport) -> None:
        self._transport = transport
        self._listening = True
        self.addressFamily = transport.get_extra_info("socket").family
        peer = transport.get_extra_info("peername")
        if peer is not None:  # an adopted connected socket: Twisted-connected from the start
            self._peer = peer
            self._connected_addr = (peer[0], peer[1])
        self.protocol.makeConnection(self)  # type: ignore[arg-type]  # we provide IUDPTransport

    def _error(self, exc: Exception) -> None:
        if self._send_errors is not None:
            self._send_errors.append(exc)
            return
        if isinstance(exc, ConnectionRefusedError) and self._connected_addr is not None:
            self.protocol.connectionRefused()  # type: ignore[attr-defined]  # DatagramProtocol has it
            return
        # Twisted's doRead raises any other receive error out of the reactor, which then closes the port;
        # udpio keeps serving and logs it (the transport already counted it).
        logger.debug("udpio.compat: %r on %r (ignored, as udpio's transport does)", exc, self)

    def _lost(self, exc: Exception | None) -> None:
        was_listening = self._listening
        self._listening = False
        if exc is not None:
            logger.debug("udpio.compat: %r closed: %r", self, exc)
        if was_listening:
            self.protocol.doStop()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)

    # -- IUDPTransport (Twisted side) -------------------------------------------------------------------------

    def _live(self) -> udpio.DatagramTransport:
        if self._transport is None or not self._listening:
            raise terror.NotListeningError(repr(self))
        return self._transport

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """Send ``datagram`` to ``addr`` (an IP ``(host, port)``), or to the connected peer with ``addr=None``."""
        transport = self._live()
        dest: Any
        if self._connected_addr is not None:
            if addr is not None and not _same_peer(addr, self._connected_addr):
                raise _address_error(addr, f"connected to {self._connected_addr}, cannot write elsewhere")
            dest = self._peer
        else:
            if addr is None:
                raise _address_error(addr, "write() needs an address on an unconnected port")
            host = addr[0]
            if not isIPAddress(host) and not isIPv6Address(host) and host != "<broadcast>":
                raise _address_error(host, "write() only accepts IP addresses, not hostnames")
            if self.addressFamily == socket.AF_INET6 and (isIPAddress(host) or host == "<broadcast>"):
                raise _address_error(host, "IPv6 port write() called with IPv4 or broadcast address")
            if self.addressFamily == socket.AF_INET and isIPv6Address(host):
                raise _address_error(host, "IPv4 port write() called with IPv6 address")
            dest = ("255.255.255.255", addr[1]) if host == "<broadcast>" else addr
        errors: list[Exception] = []
        self._send_errors = errors
        try:
            transport.sendto(datagram, dest)
        except DatagramTooLargeError as exc:
            raise terror.MessageLengthError("message too long") from exc
        except InvalidAddressError as exc:
            raise _address_error(addr, str(exc)) from exc
        finally:
            self._send_errors = None
        for error in errors:
            if isinstance(error, OSError) and error.errno == errno.EMSGSIZE:
                raise terror.MessageLengthError("message too long") from error
            if isinstance(error, ConnectionRefusedError):
                # Twisted: connectionRefused on a connected port; on an unconnected one it is ignored.
                if self._connected_addr is not None:
                    self.protocol.connectionRefused()  # type: ignore[attr-defined]  # DatagramProtocol has it
                continue
            raise error

    def writeSequence(self, seq: Iterable[bytes], addr: Any = None) -> None:
        """Send the concatenation of ``seq`` as one datagram."""
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        """"Connect" to ``(host, port)``: only that peer is heard, and ``write`` needs no address.

        IP addresses only (``InvalidAddressError`` for a name), and once (``RuntimeError`` the second time),
        as on Twisted. ICMP port-unreachable from the peer then calls ``connectionRefused`` each time.
        """
        transport = self._live()
        if self._connected_addr is not None:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        if not isIPAddress(host) and not isIPv6Address(host):
            raise _address_error(host, "not an IPv4 or IPv6 address.")
        check_destination_port(port)
        try:
            transport.connect((host, port))
        except InvalidAddressError as exc:  # of the other family: Twisted's vocabulary on this side
            raise _address_error(host, str(exc)) from exc
        self._peer = transport.get_extra_info("peername")
        self._connected_addr = (host, port)

    def getHost(self) -> _taddress.IPv4Address | _taddress.IPv6Address:
        """The bound address as Twisted's ``IPv4Address`` / ``IPv6Address`` (``"UDP"``)."""
        sockname = self._live().get_extra_info("sockname")
        if self.addressFamily == socket.AF_INET6:
            return _taddress.IPv6Address("UDP", sockname[0], sockname[1], sockname[2], sockname[3])
        return _taddress.IPv4Address("UDP", sockname[0], sockname[1])

    def getHandle(self) -> socket.socket:
        """The socket (udpio's own; do not close it)."""
        sock: socket.socket = self._live().get_extra_info("socket")
        return sock

    def startListening(self) -> None:
        """Already listening once made by :func:`listen_twisted`; a stopped port cannot be restarted."""
        if not self._listening:
            raise terror.CannotListenError(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                None, None, "a stopped udpio port cannot listen again"
            )

    def stopListening(self) -> defer.Deferred[None] | None:
        """Stop reading and close the socket; ``stopProtocol`` is called, then the Deferred fires.

        Returns ``None`` when the port is already stopped (as Twisted's ``udp.Port`` does).
        """
        if not self._listening or self._transport is None:
            return None
        if self._stopped is None:
            self._stopped = defer.Deferred()
        stopped = self._stopped
        self._transport.close()
        return stopped

    def loseConnection(self) -> None:
        """Same as :meth:`stopListening` (Twisted's old spelling)."""
        self.stopListening()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow or forbid sending to broadcast addresses (``SO_BROADCAST``)."""
        _sockopts.set_broadcast(self.getHandle(), bool(enabled))

    def getBroadcastAllowed(self) -> bool:
        """Whether broadcast is allowed."""
        return _sockopts.get_broadcast(self.getHandle())

    def logPrefix(self) -> str:
        """Twisted's log prefix for this port."""
        return f"{type(self.protocol).__name__} (UDP)"

    @property
    def transport(self) -> udpio.DatagramTransport:
        """The udpio transport underneath (its ``counters`` are the port's)."""
        return self._live()


def _check_protocol(protocol: object) -> None:
    if not isinstance(protocol, AbstractDatagramProtocol):
        raise InvalidArgumentError("protocol", "a twisted DatagramProtocol instance", protocol)
    if protocol.transport is not None:
        raise InvalidArgumentError("protocol", "a protocol not yet attached to a port", protocol)


async def listen_twisted(
    port: int,
    protocol: AbstractDatagramProtocol,
    interface: str = "127.0.0.1",
    *,
    max_packet_size: int | None = None,
    family: int = 0,
    reuse_port: bool = False,
    reuse_addr: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> UdpioPort:
    """Serve a Twisted ``DatagramProtocol`` on udpio: ``await listen_twisted(0, MyProtocol())``.

    Like ``reactor.listenUDP(port, protocol, interface)``, but the I/O is udpio's (on the running asyncio
    loop, uvloop or not) and no Twisted reactor needs to run. ``interface`` defaults to loopback, as every
    udpio endpoint does (Twisted's ``""``, all IPv4 interfaces, is accepted and means ``0.0.0.0``).
    ``max_packet_size`` drops (and counts) larger datagrams where Twisted's ``maxPacketSize`` would truncate
    them silently; ``None`` delivers any size. The other options are :func:`udpio.listen`'s, but
    ``zero_copy``: Twisted protocols are handed ``bytes``, and many keep them.

    ``startProtocol`` runs before this returns; the Twisted protocol gets a :class:`UdpioPort` as its
    ``transport``. Protocols that use the global reactor (``reactor.callLater``, ``LoopingCall``) need a
    running reactor: use the drop-in reactor (``udpio.compat.install()``) for those.
    """
    _check_protocol(protocol)
    twisted_port = UdpioPort(protocol)
    host = interface or "0.0.0.0"  # Twisted's "" means every IPv4 interface
    await udpio.listen(
        twisted_port._bridge, host, port, family=family, reuse_port=reuse_port, reuse_addr=reuse_addr,
        broadcast=broadcast, rcvbuf=rcvbuf, sndbuf=sndbuf, max_size=max_packet_size, gro=gro,
        track_kernel_drops=track_kernel_drops, buffer_limit=buffer_limit,
    )
    return twisted_port


async def adopt_twisted(
    sock: socket.socket | int,
    protocol: AbstractDatagramProtocol,
    *,
    max_packet_size: int | None = None,
) -> UdpioPort:
    """Serve a Twisted ``DatagramProtocol`` on a socket built elsewhere (``adoptDatagramPort`` on udpio).

    ``sock`` is a bound, non-blocking UDP :class:`socket.socket` or file descriptor; as with
    :func:`udpio.adopt`, udpio works on a duplicate and **the caller keeps ownership of what it passed** (and
    may close it at once, as the Twisted tutorial does). An adopted connected socket gives a connected port.
    """
    _check_protocol(protocol)
    twisted_port = UdpioPort(protocol)
    await udpio.adopt(twisted_port._bridge, sock, max_size=max_packet_size)
    return twisted_port



@implementer(IMulticastTransport)
class UdpioMulticastPort(UdpioPort):
    """Twisted's ``IMulticastTransport`` on a udpio multicast endpoint (made by :func:`listen_multicast_twisted`).

    ``joinGroup``/``leaveGroup``/``setOutgoingInterface`` return Deferreds as on Twisted (already fired:
    udpio needs no resolver for IP literals); a failed join or leave fails its Deferred with Twisted's
    ``MulticastJoinError``, the udpio error (``AlreadyJoinedError``, ``NotJoinedError``,
    ``UnknownInterfaceError``...) as its ``__cause__``. One rule differs on purpose: an empty ``interface``
    means the endpoint's own multicast interface (loopback unless told otherwise), never "any interface"
    chosen by the kernel's route as on Twisted: udpio does not let multicast follow the default route.
    """

    def _control(self) -> udpio.MulticastControl:
        return udpio.multicast(self._live())

    def _membership(self, join: bool, addr: str, interface: str) -> defer.Deferred[None]:
        try:
            control = self._control()
            if join:
                control.join_group(addr, interface or None)
            else:
                control.leave_group(addr, interface or None)
        except (ValueError, OSError) as exc:
            error = terror.MulticastJoinError(addr, interface, str(exc))
            error.__cause__ = exc
            return defer.fail(error)
        return defer.succeed(None)

    def joinGroup(self, addr: str, interface: str = "") -> defer.Deferred[None]:
        """Join ``addr`` on ``interface`` (an address; ``""``: the endpoint's interface)."""
        return self._membership(True, addr, interface)

    def leaveGroup(self, addr: str, interface: str = "") -> defer.Deferred[None]:
        """Leave what :meth:`joinGroup` joined."""
        return self._membership(False, addr, interface)

    def setOutgoingInterface(self, addr: str | int) -> defer.Deferred[int]:
        """Send multicast through ``addr`` (IPv4: an address; IPv6: an interface index), as on Twisted."""
        try:
            self._control().interface = addr
        except (ValueError, OSError) as exc:
            return defer.fail(exc)
        return defer.succeed(1)

    def getOutgoingInterface(self) -> str | int:
        """IPv4: the interface's address (``"0.0.0.0"`` if none is set); IPv6: its index (0 if none)."""
        interface = self._control().interface
        if self.addressFamily == socket.AF_INET6:
            return interface.index if interface is not None else 0
        return (interface.address if interface is not None else None) or "0.0.0.0"

    def setLoopbackMode(self, mode: int) -> None:
        """Whether this host's members receive what this port sends."""
        self._control().loopback = bool(mode)

    def getLoopbackMode(self) -> bool:
        """The loopback mode the socket has."""
        return self._control().loopback

    def setTTL(self, ttl: int) -> None:
        """TTL (hop limit) of outgoing multicast, 0..255."""
        self._control().ttl = ttl

    def getTTL(self) -> int:
        """The TTL the socket has."""
        return self._control().ttl


async def listen_multicast_twisted(
    port: int,
    protocol: AbstractDatagramProtocol,
    interface: str = "",
    *,
    listen_multiple: bool = False,
    multicast_interface: str | int = "lo",
    max_packet_size: int | None = None,
) -> UdpioMulticastPort:
    """Serve a Twisted multicast ``DatagramProtocol`` on udpio (``reactor.listenMulticast`` without a reactor).

    ``interface`` is the address to bind, as on Twisted (``""``: the wildcard, needed to receive groups; a group
    address restricts the socket to that group). ``listen_multiple`` shares the port (``SO_REUSEADDR`` and
    ``SO_REUSEPORT``). ``multicast_interface`` is udpio's: the interface used for joins without an explicit
    one and for sending (loopback by default, so nothing leaves the host until the protocol says otherwise).
    The protocol joins groups itself, usually in ``startProtocol``, with ``self.transport.joinGroup(...)``.
    """
    _check_protocol(protocol)
    twisted_port = UdpioMulticastPort(protocol)
    await udpio.listen_multicast(
        twisted_port._bridge,
        port,
        host=interface or None,
        family=socket.AF_INET6 if ":" in interface else 0,
        interface=multicast_interface,
        listen_multiple=listen_multiple,
        max_size=max_packet_size,
    )
    return twisted_port
