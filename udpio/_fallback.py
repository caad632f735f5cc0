"""Endpoints on a loop that refuses ``add_reader``: received through the loop's own datagram transport.

udpio's :class:`~udpio.DatagramTransport` is built on ``loop.add_reader``/``add_writer`` and a non-blocking
socket. A proactor loop has neither (Windows' ``ProactorEventLoop``, the default there, raises
:class:`NotImplementedError` from both: it completes I/O instead of reporting readiness), yet asyncio's own
datagram transport works on it. On such a loop :func:`start` serves the endpoint with a :class:`LoopTransport`:

* **receiving** goes through the loop's own datagram transport (``loop.create_datagram_endpoint(sock=...)``),
  one ``datagram_received`` call per datagram, which this transport counts, checks against ``max_size`` and
  hands on (a protocol with ``datagrams_received`` gets one-item lists); errors it reports are routed by
  udpio's :class:`~udpio._error_routes.ErrorRoutes`, as on the fast path;
* **sending** stays udpio's own send path on the same socket (a non-blocking ``sendto`` is a plain system
  call on every platform): the same counters, checks, water marks, ``buffer_limit`` and GSO fallback. Only
  its wait for room is different: while datagrams are queued (the kernel's buffer is full), the queue is
  retried every :data:`WRITE_RETRY_INTERVAL` seconds instead of on a writability event. asyncio's own
  datagram sending is not used because it loses what udpio promises: before Python 3.13 it drops
  zero-length datagrams without a word, and from 3.12 its buffer size grows by 8 bytes for every datagram
  ever queued and never shrinks back (python/cpython#135444), so its flow control ends paused for good.

Why a subclass of :class:`~udpio.DatagramTransport`: every factory is typed to return one, ``udpio.multicast``
and user code check ``isinstance``, and the parts that make its behaviour (counters, destinations, send path,
error routes) are reused as they are; only reading and closing are replaced (``tests/test_fallback.py``
checks which methods this class overrides, so a method added to the base cannot silently run here).

What differs on this path, all of it documented in ``docs/fastpath.md`` ("Loops without add_reader"):
``gro`` and ``track_kernel_drops`` are ignored as where the kernel lacks them (``get_extra_info("gro")`` is
``False``; ``kernel_drops`` is read from ``/proc/net/udp`` where it exists); ``zero_copy=True`` is refused
(the handler would get ``bytes``, not the ``memoryview`` it was written for); the receive strategy is
``"loop_transport"``; a read-event wrapper runs around each datagram. ``pause_reading`` pauses the loop's
transport where it can pause (the selector loop from Python 3.11.3); where it cannot (the proactor loop,
earlier selector loops), datagrams that still arrive are held, at most :data:`MAX_HELD` of them, and
delivered on ``resume_reading``; past that they are dropped and counted in ``dropped_queue``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import socket
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ._addr import Address
from ._errors import InvalidArgumentError
from ._limits import MAX_DATAGRAMS_PER_EVENT
from ._options import TransportOptions
from ._transport import DatagramTransport

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: Seconds between two tries of a queued send when the loop cannot report that the socket is writable.
#: A UDP send only queues while the kernel's send buffer (or the device queue) is full, which drains in
#: well under a millisecond at link speed; polling more often would only spin, and the timer runs only
#: while something is queued.
WRITE_RETRY_INTERVAL = 0.001
#: Datagrams held while reading is paused on a loop whose datagram transport cannot pause: what one read
#: event delivers on the fast path; more are dropped and counted in ``dropped_queue``.
MAX_HELD = MAX_DATAGRAMS_PER_EVENT
#: ``get_extra_info("receive_strategy")`` on this path.
STRATEGY_NAME = "loop_transport"

def pausable(inner: asyncio.BaseTransport) -> bool:
    """Whether the loop's datagram transport can pause reading: the selector loop's can from Python 3.11.3
    (``pause_reading`` moved to its base transport class), the proactor loop's cannot. Before that, the
    selector's has ``asyncio.ReadTransport``'s placeholder, which raises :class:`NotImplementedError`."""
    method = getattr(type(inner), "pause_reading", None)
    return method is not None and method is not asyncio.ReadTransport.pause_reading


class _RetryingWriterLoop:
    """The loop as the send path sees it: every call goes to the real loop, except ``add_writer`` and
    ``remove_writer``, which retry the writer on a timer (the loop has no writability events)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def add_writer(self, fileno: int, callback: Callable[[], None]) -> None:
        self.remove_writer(fileno)

        def retry() -> None:
            # Re-armed before the call: the send path removes its writer once the queue is empty.
            self._timers[fileno] = self._loop.call_later(WRITE_RETRY_INTERVAL, retry)
            callback()

        self._timers[fileno] = self._loop.call_later(WRITE_RETRY_INTERVAL, retry)

    def remove_writer(self, fileno: int) -> bool:
        timer = self._timers.pop(fileno, None)
        if timer is None:
            return False
        timer.cancel()
        return True


class _Bridge(asyncio.DatagramProtocol):
    """The protocol of the loop's own transport: everything it reports goes to the :class:`LoopTransport`."""

    def __init__(self, transport: LoopTransport, waiter: asyncio.Future[None]) -> None:
        self._transport = transport
        self._waiter = waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            self._transport.inner_made(cast(asyncio.DatagramTransport, transport), self._waiter)
        except BaseException as exc:  # the starter awaits the waiter: it must hear of any failure here
            if not self._waiter.done():
                self._waiter.set_exception(exc)
            raise

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._transport.inner_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._transport.inner_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport.inner_lost(exc)


class LoopTransport(DatagramTransport):
    """udpio's transport on a loop without ``add_reader`` (see the module doc): the same public surface,
    receiving through the loop's own datagram transport."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions | None = None,
        *,
        remote: Address | None = None,
    ) -> None:
        options = TransportOptions() if options is None else options
        if options.zero_copy:
            raise InvalidArgumentError(
                "zero_copy", "False on a loop without add_reader (it receives through the loop's transport)", True
            )
        # gro and track_kernel_drops are best effort: off here, as where the kernel lacks them.
        options = dataclasses.replace(options, gro=False, track_kernel_drops=False)
        # The base builds the parts (counters, destinations, error routes, send path) around this loop view.
        super().__init__(cast(asyncio.AbstractEventLoop, _RetryingWriterLoop(loop)), sock, protocol, options,
                         remote=remote)
        self._inner: asyncio.DatagramTransport | None = None
        self._inner_pauses = False
        self._held: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._max_size = self._receive_config.limits.max_size
        self._extra["receive_strategy"] = STRATEGY_NAME

    # -- the loop's transport ------------------------------------------------------------------------

    def inner_made(self, inner: asyncio.DatagramTransport, waiter: asyncio.Future[None]) -> None:
        """The loop's transport is ready: call the protocol's ``connection_made`` and start reading."""
        self._inner = inner
        self._inner_pauses = pausable(inner)
        self._begin(waiter)

    def inner_received(self, data: bytes, addr: Any) -> None:
        """One datagram from the loop's transport: counted, checked against ``max_size``, delivered."""
        if self._closing:
            return
        if self._reading and not self._held:
            self._deliver(data, addr)
        elif self._reading or len(self._held) < MAX_HELD:
            # Paused, on a loop transport that cannot pause: held. Or resumed with held datagrams still to
            # deliver (their release is scheduled): behind them, so the order is kept.
            self._held.append((data, addr))
        else:
            self._counters.dropped_queue += 1

    def _deliver(self, data: bytes, addr: Any) -> None:
        size = len(data)
        if size > self._max_size:
            self._counters.dropped_oversize += 1
            return
        self._counters.datagrams_in += 1
        self._counters.bytes_in += size
        wrapper = self._read_wrapper
        if wrapper is None:
            self._handle(data, addr)
        else:
            wrapper(lambda: self._handle(data, addr))

    def _handle(self, data: bytes, addr: Any) -> None:
        protocol = self._protocol
        try:
            many = getattr(protocol, "datagrams_received", None)
            if many is not None:
                many([(data, addr)])
            else:
                protocol.datagram_received(data, addr)  # type: ignore[attr-defined]  # a DatagramProtocol
        except Exception as exc:
            self._routes.handler_failed(exc, addr)

    def inner_error(self, exc: Exception) -> None:
        """A receive error the loop's transport met: routed as on the fast path (it never sends)."""
        if self._closing:
            return
        if isinstance(exc, OSError):
            self._routes.receive_error(exc)
        else:  # pragma: no cover - asyncio passes OSErrors only
            self._routes.report(OSError(str(exc)))

    def inner_lost(self, exc: Exception | None) -> None:
        """The loop's transport closed: after this transport closed it, or by a fatal error of its own."""
        if exc is not None and not self._closed:
            self._broken(exc if isinstance(exc, OSError) else OSError(str(exc)))

    # -- reading -----------------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives datagrams (from the next datagram on)."""
        self._protocol = protocol
        self._routes.protocol = protocol

    def pause_reading(self) -> None:
        """Stop delivering datagrams (see the module doc for loops whose transport cannot pause)."""
        if self._reading:
            self._reading = False
            if self._inner_pauses and self._inner is not None and not self._inner.is_closing():
                self._inner.pause_reading()  # type: ignore[attr-defined]  # probed by pausable()

    def resume_reading(self) -> None:
        """Deliver datagrams again after :meth:`pause_reading` (nothing happens once closing)."""
        if self._reading or self._closing or self._inner is None:
            return
        self._reading = True
        if self._inner_pauses:
            self._inner.resume_reading()  # type: ignore[attr-defined]  # probed by pausable()
        elif self._held:
            self._loop.call_soon(self._release_held)

    def _release_held(self) -> None:
        while self._held and self._reading and not self._closing:
            self._deliver(*self._held.popleft())

    def set_read_event_wrapper(self, wrapper: Callable[[Callable[[], None]], None] | None) -> None:
        """Run the delivery of each datagram as ``wrapper(deliver)`` (each datagram is its own event here)."""
        self._read_wrapper = wrapper

    def start(self) -> None:
        """Not on this path: the loop's own transport starts asynchronously (:func:`start` does it)."""
        raise NotImplementedError("a LoopTransport is started by udpio._fallback.start()")

    def _rearm_reader(self) -> None:
        """Nothing to re-arm: the loop's transport keeps reading after an error."""

    # -- closing -------------------------------------------------------------------------------------

    def _call_connection_lost(self, exc: Exception | None) -> None:
        self._held.clear()
        if self._inner is not None:
            self._inner.abort()  # stops its reads; it closes the same socket object, which is idempotent
        super()._call_connection_lost(exc)

    def __repr__(self) -> str:
        return super().__repr__().replace("udpio.DatagramTransport", "udpio.DatagramTransport (loop transport)")


async def start(
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    options: TransportOptions,
    *,
    remote: Address | None = None,
) -> tuple[DatagramTransport, P]:
    """:func:`udpio._transport.start_transport` on a loop without ``add_reader``: the socket (bound,
    non-blocking, owned by udpio) served by a :class:`LoopTransport`; closed if anything fails."""
    loop = asyncio.get_running_loop()
    try:
        protocol = protocol_factory()
        transport = LoopTransport(loop, sock, protocol, options, remote=remote)
    except BaseException:
        sock.close()
        raise
    waiter: asyncio.Future[None] = loop.create_future()
    try:
        await loop.create_datagram_endpoint(lambda: _Bridge(transport, waiter), sock=sock)
        await waiter
    except BaseException:
        transport.abort()
        raise
    return transport, protocol
