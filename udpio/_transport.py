"""udpio's datagram transport: an :class:`asyncio.DatagramTransport` that drains a socket per readiness event.

The standard loop's own datagram transport makes one ``recvfrom`` per readiness event and so pays a full trip
through the selector for every datagram; this one reads up to
:data:`~udpio._limits.MAX_DATAGRAMS_PER_EVENT` datagrams per event (Twisted's epoll reactor does the same, up
to 256 KiB). It runs on any loop with ``add_reader`` (the standard selector loop and uvloop); measured on
uvloop it is faster than uvloop's own UDP transport too (see ``benchmarks/RESULTS.md``), so udpio uses it on
both and every endpoint behaves the same on both.

Data flows one way: socket -> receive strategy (``_receive/``) -> ``protocol.datagram_received`` (or
``datagrams_received`` with a list). Sends go the other way through the send path (``_send.py``), the only
code that sends data, to destinations checked by ``_destinations.py``. Errors, and every protocol callback
that may raise, go through ``_error_routes.py``: nothing a peer sends can raise out of the read loop, a
handler's exception is counted and logged (rate-limited) with the peer, and the endpoint keeps serving. This
class holds the rest: the lifecycle, the protocol, reading, the extra infos, ``connect``, and the public
extension surface that layers built on udpio (``udpio.compat``) use instead of its private parts.

Not thread-safe: call every method from the loop's thread (use ``loop.call_soon_threadsafe`` from others).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from . import _receive, _sockopts
from ._addr import Address, Source, check_destination_port, format_address
from ._counters import Counters, proc_net_drops
from ._destinations import Destinations
from ._error_routes import ErrorRoutes, HandlerErrorHook
from ._errors import EndpointBrokenError, EndpointClosedError, InvalidAddressError
from ._limits import ReceiveLimits
from ._options import TransportOptions
from ._receive._seam import has_local_handler
from ._send import SendPath
from ._send_from import Buffer

logger = logging.getLogger("udpio")

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: A read-event wrapper: ``wrapper(read_event)`` (see :meth:`DatagramTransport.set_read_event_wrapper`).
ReadEventWrapper = Callable[[Callable[[], None]], None]


class DatagramTransport(asyncio.DatagramTransport):
    """A UDP transport for one socket, made by :func:`udpio.listen`, :func:`udpio.connect`, :func:`udpio.adopt`
    (and the endpoints built on them).

    Besides asyncio's ``DatagramTransport`` methods it offers :attr:`counters`, :meth:`send_batch`,
    :meth:`send_many` (GSO on Linux), :meth:`connect`, and the extra infos ``"socket"``, ``"sockname"``,
    ``"peername"``, ``"counters"``, ``"gro"`` and ``"receive_strategy"`` (the name of the receive strategy
    serving the protocol, once reading has started).

    **Extension surface**, for layers that build on udpio (``udpio.compat`` uses exactly this): the
    constructor with :meth:`start` (serve a socket the layer made, starting now), :meth:`set_handler_error_hook`,
    :meth:`set_read_event_wrapper`, :meth:`sendto_or_raise`, :meth:`pause_reading` / :meth:`resume_reading` /
    :meth:`is_reading`, :meth:`get_write_buffer_size` and :meth:`connect`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions | None = None,
        *,
        remote: Address | None = None,
    ) -> None:
        """Serve ``sock`` (bound, non-blocking, UDP; the transport owns it from now on) with ``protocol``.
        Nothing happens until :meth:`start` (or the factories' own start) calls ``connection_made``."""
        super().__init__(extra=None)
        options = TransportOptions() if options is None else options
        options.check_family(sock.family)
        self._loop = loop
        self._sock: socket.socket = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._remote = remote
        self._counters = Counters()
        gro = _sockopts.enable_gro(sock) if options.gro else False
        self._rxq_ovfl = _sockopts.enable_rxq_ovfl(sock) if options.track_kernel_drops else False
        self._receive_config = _receive.ReceiveConfig(
            ReceiveLimits.for_max_size(options.max_size), gro, self._rxq_ovfl, options.zero_copy
        )
        self._routes = ErrorRoutes(
            sock, self._counters, protocol, broken=self._broken, rearm=self._rearm_reader, closing=self.is_closing
        )
        self._routes.peer = remote
        self._destinations = Destinations(sock.family, remote, functools.partial(_sockopts.get_v6only, sock))
        self._send = SendPath(
            loop,
            sock,
            self._counters,
            self._destinations,
            buffer_limit=options.buffer_limit,
            on_error=self._routes.send_failed,
            pause=self._routes.pause_writing,
            resume=self._routes.resume_writing,
            flushed=self._flushed,
        )
        # The send path's methods, bound on the instance: a send costs no extra Python call through here.
        self.sendto = self._send.sendto  # type: ignore[method-assign]
        self.sendto_or_raise = self._send.sendto_or_raise  # type: ignore[method-assign]
        self.send_batch = self._send.send_batch  # type: ignore[method-assign]
        self.send_many = self._send.send_many  # type: ignore[method-assign]
        self._closing = False
        self._closed = False
        self._reading = False
        # libuv stops a uv_poll watcher after a POLLERR event (src/unix/poll.c, uv__poll_io) and uvloop then
        # drops its poll handle silently, so on uvloop an ICMP error (POLLERR) would end all reading after
        # the first one. Re-registering the reader after each error restores it (errors are rare: no cost
        # on the datagram path). The selector loop keeps watching by itself.
        self._rearm_after_error = type(loop).__module__.startswith("uvloop")
        self._read_wrapper: ReadEventWrapper | None = None
        self._extra: dict[str, Any] = {
            "socket": sock,
            "sockname": sock.getsockname(),
            "peername": remote,
            "counters": self._counters,
            "gro": gro,
        }
        # Chosen when reading starts, after connection_made (which may rebind the protocol's handlers, as
        # udpio.compat's bridge does), and again by set_protocol.
        self._strategy: _receive.ReceiveStrategy | None = None

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Call ``connection_made`` and start reading, now (the factories do it in the loop's next step).
        If ``connection_made`` raises, the transport is closed and the exception re-raised."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._begin(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]  # checked: an exception

    def _begin(self, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():
            self._force_close(None)
            return
        try:
            self._protocol.connection_made(self)
            if not self._closing:
                self.resume_reading()
        except BaseException as exc:
            self._force_close(None)
            if not waiter.done():
                waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not waiter.done():
            waiter.set_result(None)

    def is_closing(self) -> bool:
        """``True`` once :meth:`close` or :meth:`abort` was called (or the socket failed)."""
        return self._closing

    def close(self) -> None:
        """Stop receiving, send what is buffered, then close the socket and call ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        self._stop_receiving()
        if self._send.close():
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once; buffered datagrams are dropped and counted in ``dropped_on_close``."""
        self._force_close(None)

    def _stop_receiving(self) -> None:
        self.pause_reading()
        if self._strategy is not None:
            self._strategy.stop()

    def _force_close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._send.abort()
        if not self._closing:
            self._closing = True
            self._stop_receiving()
        self._closed = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _flushed(self) -> None:
        """The send path sent its queue after :meth:`close`: finish closing."""
        if not self._closed:
            self._closed = True
            self._call_connection_lost(None)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    def _broken(self, exc: OSError) -> None:
        """The socket itself failed (closed underneath): close the endpoint, tell the protocol why."""
        broken = EndpointBrokenError("UDP endpoint")
        broken.__cause__ = exc
        logger.debug("socket failed under %r: %r", self, exc)
        self._force_close(broken)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and sock.fileno() != -1 and not getattr(self, "_closed", True):
            _warn(f"unclosed udpio transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        where = format_address(self._extra.get("sockname"))
        peer = f" peer={format_address(self._remote)}" if self._remote else ""
        return f"<udpio.DatagramTransport {state} {where}{peer} fd={self._fileno}>"

    # -- protocol, info, reading -------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives datagrams (from the next read event on)."""
        self._protocol = protocol
        self._routes.protocol = protocol
        self._strategy = self._choose_strategy(protocol)
        if self._reading:
            self._loop.add_reader(self._fileno, self._reader())

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol datagrams are delivered to."""
        return self._protocol

    def _choose_strategy(self, protocol: asyncio.BaseProtocol) -> _receive.ReceiveStrategy:
        config = self._receive_config
        local = has_local_handler(protocol)
        if local != config.pktinfo:
            # The protocol takes local addresses (datagram(s)_received_on): the kernel must say, per datagram,
            # where it was sent; the option costs a control message per datagram, so it is on only then.
            if self._sock.fileno() != -1:  # a closed transport (set_protocol after close) reads nothing
                _sockopts.set_pktinfo(self._sock, local)
            config = self._receive_config = dataclasses.replace(config, pktinfo=local)
        spec = _receive.choose(config, protocol)
        self._extra["receive_strategy"] = spec.name
        return spec.build(self._sock, protocol, config, self._routes)

    def _reader(self) -> Callable[[], None]:
        """The callable the loop runs on each readiness event (choosing the strategy the first time)."""
        if self._strategy is None:
            self._strategy = self._choose_strategy(self._protocol)
        if self._read_wrapper is None:
            return self._strategy.read_event
        return functools.partial(self._read_wrapper, self._strategy.read_event)

    @property
    def counters(self) -> Counters:
        """This endpoint's :class:`~udpio.Counters`; ``kernel_drops`` is refreshed on each read here."""
        if not self._rxq_ovfl and not self._closed:
            drops = proc_net_drops(self._sock)
            if drops is not None:
                self._counters.kernel_drops = drops
        return self._counters

    def is_reading(self) -> bool:
        """Whether the socket is watched for datagrams (``False`` once paused or closing)."""
        return self._reading

    def pause_reading(self) -> None:
        """Stop watching the socket (datagrams wait in the kernel's buffer); the endpoint stays open."""
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fileno)

    def resume_reading(self) -> None:
        """Watch the socket again after :meth:`pause_reading` (nothing happens once closing)."""
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fileno, self._reader())

    def connect(self, addr: Address) -> None:
        """Restrict this endpoint to one peer from now on, as ``connect(2)`` on a UDP socket does.

        Afterwards the kernel delivers only the peer's datagrams, :meth:`sendto` takes no address (or the
        peer's), and an ICMP port-unreachable from the peer reaches ``error_received`` as
        :class:`ConnectionRefusedError`. ``addr`` must be an IP literal of the socket's family with a port
        other than 0 (Twisted's ``connect`` has the same rule); a connected endpoint cannot be connected again.
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        if self._remote is not None:
            raise InvalidAddressError("addr", f"nothing: already connected to {format_address(self._remote)}", addr)
        self._destinations.check(addr)  # validated before anything changes
        check_destination_port(addr[1])
        self._sock.connect(addr)
        self._remote = self._routes.peer = self._sock.getpeername()
        self._destinations.connected(self._remote)
        self._extra["peername"] = self._remote

    # -- extension surface --------------------------------------------------------------------------

    def set_handler_error_hook(self, hook: HandlerErrorHook | None) -> None:
        """Call ``hook(exc, addr)`` instead of udpio's rate-limited log line when a handler (``datagram_received``,
        ``error_received``, ``pause_writing``...) raises; the error is counted in ``handler_errors`` either
        way and delivery goes on. ``addr`` is the datagram's sender (``None`` when there is none). ``None``
        restores udpio's logging."""
        self._routes.hook = hook

    def set_read_event_wrapper(self, wrapper: ReadEventWrapper | None) -> None:
        """Run every readiness event as ``wrapper(read_event)``: the wrapper must call ``read_event()`` once
        and may do work around it (a logging context; writes held during the event and sent after it). It
        may call it again in the same event (read what came while it worked) as long as :meth:`is_reading`
        is still true: each call is one more readiness event's worth of reading.
        ``None`` removes it: the loop then calls the receive strategy directly."""
        self._read_wrapper = wrapper
        if self._reading:
            self._loop.add_reader(self._fileno, self._reader())

    def sendto_or_raise(self, data: Buffer, addr: Any = None) -> None:
        """As :meth:`sendto`, counted the same way, but a send error (an :class:`OSError` other than
        ``EAGAIN``) is counted in ``send_errors`` and raised to the caller instead of going to
        ``error_received``: what Twisted's ``write`` does. A datagram too large for the family is refused
        the same way, with ``OSError(EMSGSIZE)`` (the kernel's answer, given at once). A full socket buffer
        still queues the datagram."""
        self._send.sendto_or_raise(data, addr)  # bound on the instance by __init__

    def _rearm_reader(self) -> None:
        """After a socket error on uvloop (see ``_rearm_after_error``)."""
        if self._rearm_after_error and self._reading:
            self._loop.remove_reader(self._fileno)
            self._loop.add_reader(self._fileno, self._reader())

    # -- sending (the send path's methods are bound on each instance; these are their documentation) ------

    def sendto(self, data: Buffer, addr: Any = None, *, source: Source | None = None) -> None:
        """Send one datagram to ``addr`` (``None`` or omitted on a connected endpoint).

        ``source``: the address of this host to send from (a :class:`~udpio.LocalAddress`, as
        ``datagram_received_on`` hands one with each datagram, or an IP literal); by default the kernel picks
        it by route. On a socket bound to the wildcard address, answering from the ``LocalAddress`` a request
        came with makes the reply leave from the address the client sent to (a service address on ``lo``
        behind anycast or direct server return, or one of several links). Sent with ``sendmsg`` and an
        ``IP_PKTINFO`` / ``IPV6_PKTINFO`` control message; :class:`InvalidAddressError` for a source that is
        not an address of the socket's family (or, on a dual-stack socket, not of the peer's); an address
        that is not this host's is refused by the kernel (``error_received``).

        Sent at once when the kernel has room, else buffered; past :meth:`get_write_buffer_limits`'s high
        mark the protocol's ``pause_writing`` is called, and past the hard ``buffer_limit`` the datagram is
        dropped and counted (``dropped_send_buffer``). Raises :class:`EndpointClosedError` once closing,
        :class:`DatagramTooLargeError` for a datagram the family cannot carry, :class:`InvalidAddressError`
        for a destination that is not an IP literal tuple of the socket's family. Network errors (ICMP
        refused, ENOBUFS, EMSGSIZE...) go to ``error_received``, never raised.
        """
        self._send.sendto(data, addr, source=source)

    def send_batch(
        self, batch: Iterable[tuple[Buffer, Any]] | Iterable[tuple[Buffer, Any, Source | None]]
    ) -> None:
        """Send ``(data, addr)`` pairs in order, e.g. replies built from a ``datagrams_received`` batch.

        As :meth:`sendto` for each pair, with the per-call checks hoisted: every pair is checked before the
        first is sent (so a bad one raises with nothing sent), then the pairs go through one batch backend.
        ``(data, addr, source)`` triples (a batch is all pairs or all triples), as a ``datagrams_received_on``
        batch is, are sent as ``sendto(data, addr, source=source)`` each, after the same checks.
        """
        self._send.send_batch(batch)

    def send_many(self, datagrams: Sequence[Buffer], addr: Any = None) -> None:
        """Send several datagrams to one destination, with as few system calls as the platform allows.

        On Linux with UDP GSO (``UDP_SEGMENT``), runs of equal-sized datagrams (the last of a run may be
        shorter) go out as one ``sendmsg`` each, up to ``GSO_MAX_SEGMENTS``; elsewhere, or when the kernel
        refuses GSO, each datagram is sent with :meth:`sendto`. Same errors as :meth:`sendto`.
        """
        self._send.send_many(datagrams, addr)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be sent."""
        return self._send.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)`` water marks for ``resume_writing`` / ``pause_writing``."""
        return self._send.limits

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks as asyncio does (``low`` defaults to ``high // 4``); ``high`` must not exceed
        the hard buffer limit."""
        self._send.set_limits(high, low)


#: Loop classes already probed: whether ``add_reader`` works on them (a class either implements it or not).
_READERS: dict[type, bool] = {}


def _noop() -> None:
    """A reader registered and removed at once, only to probe the loop."""


def loop_has_readers(loop: asyncio.AbstractEventLoop, fileno: int) -> bool:
    """Whether ``loop`` watches descriptors with ``add_reader`` (probed once per loop class, on ``fileno``).
    A proactor loop (Windows' default) raises :class:`NotImplementedError` instead: it completes I/O rather
    than reporting readiness."""
    kind = type(loop)
    known = _READERS.get(kind)
    if known is None:
        try:
            loop.add_reader(fileno, _noop)
        except NotImplementedError:
            known = False
        else:
            loop.remove_reader(fileno)
            known = True
        _READERS[kind] = known
    return known


async def start_transport(
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    options: TransportOptions,
    *,
    remote: Address | None = None,
) -> tuple[DatagramTransport, P]:
    """Serve a ready (bound, non-blocking) socket owned by udpio with ``protocol_factory()``: the building
    block of every factory. ``connection_made`` runs in the loop's next step, as asyncio's own transports
    do; the socket is closed if anything fails. On a loop without ``add_reader`` the endpoint is served by
    ``_fallback.LoopTransport`` instead (same surface, received through the loop's own datagram transport)."""
    loop = asyncio.get_running_loop()
    if not loop_has_readers(loop, sock.fileno()):
        # No add_reader (a proactor loop): serve through the loop's own datagram transport (_fallback.py).
        from . import _fallback  # noqa: PLC0415  # here, not at the top: _fallback subclasses DatagramTransport

        return await _fallback.start(sock, protocol_factory, options, remote=remote)
    try:
        protocol = protocol_factory()
        transport = DatagramTransport(loop, sock, protocol, options, remote=remote)
    except BaseException:
        sock.close()
        raise
    waiter: asyncio.Future[None] = loop.create_future()
    loop.call_soon(transport._begin, waiter)
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return transport, protocol
