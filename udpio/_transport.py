"""udpio's datagram transport: an :class:`asyncio.DatagramTransport` that drains a socket per readiness event.

The standard loop's own datagram transport makes one ``recvfrom`` per readiness event and so pays a full trip
through the selector for every datagram; this one reads up to :data:`MAX_DATAGRAMS_PER_EVENT` datagrams per
event (Twisted's epoll reactor does the same, up to 256 KiB). It runs on any loop with ``add_reader`` (the
standard selector loop and uvloop); measured on uvloop it is faster than uvloop's own UDP transport too (see
``benchmarks/RESULTS.md``), so udpio uses it on both and every endpoint behaves the same on both.

Data flows one way: socket -> this transport -> ``protocol.datagram_received`` (or ``datagrams_received``
with a list, for handlers that take batches). Nothing a peer sends can raise out of the read loop: a
handler's exception is logged (rate-limited) with the peer and counted, and the endpoint keeps serving.

Not thread-safe: call every method from the loop's thread (use ``loop.call_soon_threadsafe`` from others).
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import logging
import os
import socket
import struct
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _sockopts
from ._addr import Address, check_port, family_name, format_address, ip_family
from ._counters import Counters, proc_net_drops
from ._errors import (
    DatagramTooLargeError,
    EndpointBrokenError,
    EndpointClosedError,
    InvalidAddressError,
    InvalidArgumentError,
)
from ._limits import (
    ADDRESS_CACHE_SIZE,
    BATCH_BYTES,
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_HIGH_WATER,
    GSO_MAX_BYTES,
    MAX_DATAGRAMS_PER_EVENT,
    RECV_BUFFER_SIZE,
    max_payload,
)
from ._limits import GSO_MAX_SEGMENTS as GSO_MAX_SEGMENTS  # noqa: PLC0414  # re-exported: udpio/bench imports it here

try:
    from fcntl import ioctl as _ioctl
except ImportError:  # pragma: no cover - Windows has no fcntl
    _ioctl = None  # type: ignore[assignment]  # checked before use

logger = logging.getLogger("udpio")

#: zero_copy: the preallocated receive arena: one batch plus one maximal receive (a GRO train), reused for
#: every batch, so it stays in cache.
ARENA_SIZE = BATCH_BYTES + RECV_BUFFER_SIZE
#: Room for the UDP_GRO (int) and SO_RXQ_OVFL (uint32) control messages.
_ANCILLARY_SPACE = socket.CMSG_SPACE(4) * 2
#: At most one handler-error log line per this many seconds (the rest are counted and summarised).
LOG_INTERVAL = 5.0

#: Errnos a send can meet that are the network's business, not the program's: reported to
#: ``error_received`` and counted, never raised. ECONNREFUSED: an earlier ICMP port-unreachable on a
#: connected socket (Linux reports it on the next call, udp(7)); ENOBUFS: the device queue is full
#: (Linux, BSD); EMSGSIZE: larger than the path MTU with DF set, or a GSO segment too large;
#: EHOSTUNREACH/ENETUNREACH: no route; EPERM: a firewall rule (netfilter) refused the datagram.
_SEND_ERRORS_REPORTED = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ENOBUFS,
        errno.EMSGSIZE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPERM,
        errno.EACCES,
        errno.EADDRNOTAVAIL,
    }
)


class _RateLimitedLog:
    """Logs the first event, then at most one line per :data:`LOG_INTERVAL`, saying how many were skipped."""

    def __init__(self) -> None:
        self._next = 0.0
        self._skipped = 0

    def __call__(self, message: str, *args: object, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += f" ({self._skipped} similar messages suppressed)"
            self._skipped = 0
        self._next = now + LOG_INTERVAL
        logger.error(message, *args, exc_info=exc)


class DatagramTransport(asyncio.DatagramTransport):
    """A UDP transport for one socket, created by :func:`udpio.listen`, :func:`udpio.connect` or
    :func:`udpio.adopt` (not meant to be built directly).

    Besides asyncio's ``DatagramTransport`` methods it offers :attr:`counters`, :meth:`send_many` (GSO on
    Linux) and the extra infos ``"socket"``, ``"sockname"``, ``"peername"``, ``"counters"``, ``"gro"``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        *,
        remote: Address | None = None,
        max_size: int | None = None,
        gro: bool = False,
        track_kernel_drops: bool = False,
        zero_copy: bool = False,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        super().__init__(extra=None)
        self._loop = loop
        self._sock: socket.socket = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._family = sock.family
        self._remote = remote
        self._counters = Counters()
        self._max_payload = max_payload(sock.family)
        # Reading one byte more than max_size tells an oversized datagram from one that fits exactly.
        self._recv_size = RECV_BUFFER_SIZE if max_size is None else max_size + 1
        self._max_size = max_size
        self._gro = _sockopts.enable_gro(sock) if gro else False
        self._rxq_ovfl = _sockopts.enable_rxq_ovfl(sock) if track_kernel_drops else False
        # zero_copy: datagrams land in one preallocated arena and are delivered as memoryview slices of it.
        self._arena = memoryview(bytearray(ARENA_SIZE)) if zero_copy else None
        self._use_recvmsg = self._gro or self._rxq_ovfl or zero_copy
        # Decided when the protocol is set, not per readiness event: batch reader or per-datagram reader.
        self._batched = self._use_recvmsg or hasattr(protocol, "datagrams_received")
        self._gso: bool | None = None  # probed on first send_many
        self._buffer: collections.deque[tuple[bytes, Address | None]] = collections.deque()
        self._buffer_size = 0
        self._buffer_limit = buffer_limit
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._protocol_paused = False
        self._closing = False
        self._closed = False
        self._reading = False
        # libuv stops a uv_poll watcher after a POLLERR event (src/unix/poll.c, uv__poll_io) and uvloop then
        # drops its poll handle silently, so on uvloop an ICMP error (POLLERR) would end all reading after
        # the first one. Re-registering the reader after each error restores it (errors are rare: no cost
        # on the datagram path). The selector loop keeps watching by itself.
        self._rearm_after_error = type(loop).__module__.startswith("uvloop")
        self._ok_addresses: set[Any] = set()
        self._pending = array.array("i", [0])  # FIONREAD's answer, reused
        self._probe = False  # the previous read event carried one datagram: see _queue_empty
        self._log = _RateLimitedLog()
        self._extra = {
            "socket": sock,
            "sockname": sock.getsockname(),
            "peername": remote,
            "counters": self._counters,
            "gro": self._gro,
        }

    # -- start and stop ---------------------------------------------------------------------------

    def _start(self, waiter: asyncio.Future[None]) -> None:
        """Called soon after construction: ``connection_made``, then start reading."""
        if waiter.cancelled():
            self._force_close(None)
            return
        try:
            self._protocol.connection_made(self)
            if not self._closing:
                self._loop.add_reader(self._fileno, self._read_ready)
                self._reading = True
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
        """``True`` once :meth:`close` or :meth:`abort` was called."""
        return self._closing

    def close(self) -> None:
        """Stop receiving, send what is buffered, then close the socket and call ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once; buffered datagrams are dropped and counted in ``dropped_on_close``."""
        self._force_close(None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fileno)

    def _force_close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        if self._buffer:
            self._counters.dropped_on_close += len(self._buffer)
            self._buffer.clear()
            self._buffer_size = 0
            self._loop.remove_writer(self._fileno)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._closed = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        """The socket itself failed (e.g. closed underneath): close the endpoint, tell the protocol why."""
        broken = EndpointBrokenError("UDP endpoint")
        broken.__cause__ = exc
        logger.debug("%s on %r: %r", message, self, exc)
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

    # -- protocol and info ----------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives datagrams."""
        self._protocol = protocol
        self._batched = self._use_recvmsg or hasattr(protocol, "datagrams_received")

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol datagrams are delivered to."""
        return self._protocol

    @property
    def counters(self) -> Counters:
        """This endpoint's :class:`~udpio.Counters`; ``kernel_drops`` is refreshed on each read here."""
        if not self._rxq_ovfl and not self._closed:
            drops = proc_net_drops(self._sock)
            if drops is not None:
                self._counters.kernel_drops = drops
        return self._counters

    def connect(self, addr: Address) -> None:
        """Restrict this endpoint to one peer from now on, as ``connect(2)`` on a UDP socket does.

        Afterwards the kernel delivers only the peer's datagrams, :meth:`sendto` takes no address (or the
        peer's), and an ICMP port-unreachable from the peer reaches ``error_received`` as
        :class:`ConnectionRefusedError`. ``addr`` must be an IP literal of the socket's family (Twisted's
        ``connect`` has the same rule); a connected endpoint cannot be connected again.
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        if self._remote is not None:
            raise InvalidAddressError(
                "addr", f"nothing: already connected to {format_address(self._remote)}", addr
            )
        self._check_destination(addr)
        self._sock.connect(addr)
        self._remote = self._sock.getpeername()
        self._extra["peername"] = self._remote
        self._ok_addresses.clear()

    # -- receiving ----------------------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._batched:
            self._read_batch()
            return
        recvfrom = self._sock.recvfrom
        size = self._recv_size
        deliver = self._protocol.datagram_received  # type: ignore[attr-defined]  # a DatagramProtocol
        count = nbytes = 0
        probe = self._probe
        try:
            for _ in range(MAX_DATAGRAMS_PER_EVENT):
                try:
                    data, addr = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if self._receive_error(exc):
                        break
                    continue
                length = len(data)
                if length >= size:
                    self._counters.dropped_oversize += 1
                    continue
                count += 1
                nbytes += length
                try:
                    deliver(data, addr)
                except Exception as exc:
                    self._handler_failed(exc, addr)
                if self._closing:
                    break
                if probe:
                    probe = False
                    if self._queue_empty():
                        break
        finally:
            self._counters.datagrams_in += count
            self._counters.bytes_in += nbytes
            self._probe = count == 1

    def _queue_empty(self) -> bool:
        """Whether the socket's receive queue is empty, without a failing receive.

        Draining a socket ends with a receive that fails with EAGAIN, and in Python that costs a system
        call plus an exception: measured here 1.85 us, about what a successful receive costs. ``FIONREAD``
        (``SIOCINQ``, udp(7)) answers in 0.76 us without an exception. When the previous read event carried
        a single datagram (request/response traffic), udpio asks it after the first datagram and ends the
        event when nothing follows: measured 3.4-3.9 us per event instead of 4.1-5.0 us. When events carry
        several datagrams the question would be wasted (0.6-0.8 us more per event), so it is not asked.
        FIONREAD reports the size of the *next* datagram, so a queued zero-length datagram also reads as 0:
        the event ends, and the still-readable socket brings the loop straight back (level-triggered
        readiness on both loops), so nothing is lost.
        """
        if _ioctl is None or _sockopts.FIONREAD is None:  # pragma: no cover - Windows
            return False
        try:
            _ioctl(self._fileno, _sockopts.FIONREAD, self._pending, True)
        except OSError:
            return False  # let the receive loop meet the error itself
        return self._pending[0] == 0

    def _read_batch(self) -> None:
        """Read up to :data:`MAX_DATAGRAMS_PER_EVENT` datagrams and deliver them in lists of about
        :data:`BATCH_BYTES`.

        Used when the protocol has ``datagrams_received(list)``; the list holds ``(data, addr)`` tuples exactly
        as ``recvfrom`` returns them (no repacking). GRO, kernel-drop tracking and zero copy go through
        :meth:`_read_batch_msg` instead.
        """
        if self._use_recvmsg:
            self._read_batch_msg()
            return
        batch: list[tuple[bytes, Address]] = []
        append = batch.append
        recvfrom = self._sock.recvfrom
        size = self._recv_size
        chunk = oversize = 0
        probe = self._probe
        received = 0
        try:
            for _ in range(MAX_DATAGRAMS_PER_EVENT):
                try:
                    item = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if self._receive_error(exc):
                        break
                    continue
                length = len(item[0])
                if length >= size:
                    oversize += 1
                    continue
                append(item)
                chunk += length
                received += 1
                if probe:
                    # After the first datagram of an event, ask whether another is queued: when none is,
                    # this ends the event without the failing receive (see _queue_empty).
                    probe = False
                    if self._queue_empty():
                        break
                if chunk >= BATCH_BYTES:
                    self._flush_batch(batch, chunk)
                    batch = []
                    append = batch.append
                    chunk = 0
                    if self._closing:
                        return
        finally:
            self._counters.dropped_oversize += oversize
            self._probe = received == 1
        if batch:
            self._flush_batch(batch, chunk)

    def _read_batch_msg(self) -> None:
        """The ``recvmsg`` variant: reads control messages for UDP GRO (splitting coalesced buffers at the
        segment size the kernel reports, udp(7)) and ``SO_RXQ_OVFL`` (the kernel's drop count, socket(7)).

        With ``zero_copy`` the datagrams are received with ``recvmsg_into`` into the transport's arena and
        delivered as ``memoryview`` slices of it: no copy at all, but a slice is only valid until the handler
        returns (the arena is reused for the next list); copy with ``bytes(view)`` to keep one.
        """
        batch: list[tuple[Any, Address]] = []
        append = batch.append
        sock = self._sock
        arena = self._arena
        offset = 0
        size = RECV_BUFFER_SIZE if self._gro else self._recv_size
        limit = self._recv_size - 1
        chunk = oversize = gro_batches = 0
        data: Any  # bytes, or a memoryview slice of the arena with zero_copy
        try:
            for _ in range(MAX_DATAGRAMS_PER_EVENT):
                segment = 0
                try:
                    if arena is None:
                        data, ancdata, flags, addr = sock.recvmsg(size, _ANCILLARY_SPACE)
                        length = len(data)
                    else:
                        data = arena[offset : offset + size]
                        length, ancdata, flags, addr = sock.recvmsg_into([data], _ANCILLARY_SPACE)
                        data = data[:length]
                        offset += length
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if self._receive_error(exc):
                        break
                    continue
                for level, kind, cdata in ancdata:
                    if level == _sockopts.SOL_UDP and kind == _sockopts.UDP_GRO:
                        segment = struct.unpack("=i", cdata[:4])[0]
                    elif level == socket.SOL_SOCKET and kind == _sockopts.SO_RXQ_OVFL:
                        self._counters.kernel_drops = _sockopts.parse_rxq_ovfl(cdata)
                if flags & socket.MSG_TRUNC:
                    oversize += 1
                elif segment and length > segment:
                    gro_batches += 1
                    for start in range(0, length, segment):
                        piece = data[start : start + segment]
                        if len(piece) > limit:
                            oversize += 1
                        else:
                            append((piece, addr))
                            chunk += len(piece)
                elif length > limit:
                    oversize += 1
                else:
                    append((data, addr))
                    chunk += length
                if chunk >= BATCH_BYTES or (arena is not None and len(arena) - offset < RECV_BUFFER_SIZE):
                    if batch:
                        self._flush_batch(batch, chunk)
                        batch = []
                        append = batch.append
                    chunk = offset = 0  # the handler has returned: the arena may be reused
                    if self._closing:
                        return
        finally:
            self._counters.dropped_oversize += oversize
            self._counters.gro_batches += gro_batches
        if batch:
            self._flush_batch(batch, chunk)

    def _flush_batch(self, batch: list[tuple[Any, Address]], nbytes: int) -> None:
        """Count a list of received datagrams, then hand it to the protocol."""
        counters = self._counters
        counters.datagrams_in += len(batch)
        counters.bytes_in += nbytes
        self._deliver_batch(batch)

    def _deliver_batch(self, batch: list[tuple[Any, Address]]) -> None:
        protocol = self._protocol
        many = getattr(protocol, "datagrams_received", None)
        if many is not None:
            try:
                many(batch)
            except Exception as exc:
                self._handler_failed(exc, batch[-1][1])
            return
        deliver = protocol.datagram_received  # type: ignore[attr-defined]  # a DatagramProtocol
        for data, addr in batch:
            try:
                deliver(data, addr)
            except Exception as exc:
                self._handler_failed(exc, addr)
            if self._closing:
                return

    def _receive_error(self, exc: OSError) -> bool:
        """Route a receive error; ``True`` if reading must stop for this event."""
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            self._fatal_error(exc, "socket closed underneath the transport")
            return True
        # ICMP errors queued on the socket (ECONNREFUSED on a connected socket, and everything with
        # IP_RECVERR): the error is consumed by this call, so reading may go on. With IP_RECVERR the same
        # event also sits on the error queue: report it from there (once), and empty the queue.
        if not self._drain_error_queue():
            self._counters.errors_received += 1
            self._report(exc)
        self._rearm_reader()
        return self._closing

    def _drain_error_queue(self) -> list[int]:
        """Read the socket's error queue empty (IP_RECVERR); count and report each ICMP error in it, skip the
        local ones (their send call failed and was reported). Returns the errnos of the ICMP errors."""
        found: list[int] = []
        if not _sockopts.IS_LINUX:
            return found
        for _ in range(MAX_DATAGRAMS_PER_EVENT):
            try:
                _, ancdata, _, _ = self._sock.recvmsg(1, _sockopts.ERRQUEUE_SPACE, _sockopts.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: empty (the usual case, without IP_RECVERR); anything else: give up
                break
            for level, kind, cdata in ancdata:
                code = _sockopts.parse_icmp_error(level, kind, cdata)
                if code:
                    found.append(code)
                    self._counters.errors_received += 1
                    # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError...).
                    self._report(OSError(code, os.strerror(code)))
        return found

    def _rearm_reader(self) -> None:
        if self._rearm_after_error and self._reading:
            self._loop.remove_reader(self._fileno)
            self._loop.add_reader(self._fileno, self._read_ready)

    def _report(self, exc: OSError) -> None:
        try:
            self._protocol.error_received(exc)  # type: ignore[attr-defined]  # a DatagramProtocol
        except Exception as handler_exc:
            self._handler_failed(handler_exc, self._remote)

    def _handler_failed(self, exc: Exception, addr: object) -> None:
        self._counters.handler_errors += 1
        self._log(
            "udpio: exception in %s handling datagram from %s (endpoint keeps serving)",
            type(self._protocol).__name__,
            format_address(addr),
            exc=exc,
        )

    # -- sending ----------------------------------------------------------------------------

    def _check_destination(self, addr: Any) -> Address | None:
        """Validate a destination once; remembered so the hot path is a set lookup."""
        if self._remote is not None:
            if addr is None or addr == self._remote:
                return None
            raise InvalidAddressError(
                "addr", f"None or the connected peer {format_address(self._remote)}", addr
            )
        if addr is None:
            raise InvalidAddressError("addr", "a (host, port) destination on an unconnected endpoint", None)
        if addr in self._ok_addresses:
            return addr  # type: ignore[no-any-return]  # validated earlier
        if not isinstance(addr, tuple) or len(addr) not in (2, 4):
            raise InvalidAddressError("addr", "a (host, port) tuple", addr)
        check_port(addr[1])
        fam = ip_family(addr[0])
        if fam == socket.AF_INET6 and self._family == socket.AF_INET:
            raise InvalidAddressError("addr", "an IPv4 destination", addr)
        if fam == socket.AF_INET and self._family == socket.AF_INET6:
            raise InvalidAddressError(
                "addr",
                "an IPv6 destination (write IPv4 peers as ::ffff:a.b.c.d on an IPv6 socket)",
                addr,
            )
        if len(self._ok_addresses) >= ADDRESS_CACHE_SIZE:
            self._ok_addresses.clear()
        self._ok_addresses.add(addr)
        return addr

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (``None`` or omitted on a connected endpoint).

        Sent at once when the kernel has room, else buffered; past :meth:`get_write_buffer_limits`'s high
        mark the protocol's ``pause_writing`` is called, and past the hard ``buffer_limit`` the datagram is
        dropped and counted (``dropped_send_buffer``). Raises :class:`EndpointClosedError` once closing,
        :class:`DatagramTooLargeError` for a datagram the family cannot carry, :class:`InvalidAddressError`
        for a destination that is not an IP literal of the socket's family. Network errors (ICMP refused,
        ENOBUFS, EMSGSIZE...) go to ``error_received``, never raised.
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > self._max_payload:
            raise DatagramTooLargeError(size, self._max_payload, family_name(self._family))
        dest = addr if addr is not None and addr in self._ok_addresses else self._check_destination(addr)
        if not self._buffer:
            try:
                if dest is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fileno, self._write_ready)
            except OSError as exc:
                self._send_failed(exc)
                return
            else:
                self._counters.datagrams_out += 1
                self._counters.bytes_out += size
                return
        self._queue(bytes(data), dest, size)

    def _queue(self, data: bytes, dest: Address | None, size: int) -> None:
        if self._buffer_size + size > self._buffer_limit:
            self._counters.dropped_send_buffer += 1
            return
        self._buffer.append((data, dest))
        self._buffer_size += size
        self._maybe_pause_protocol()

    def _send_failed(self, exc: OSError) -> None:
        self._counters.send_errors += 1
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            self._fatal_error(exc, "socket closed underneath the transport")
            return
        if exc.errno not in _SEND_ERRORS_REPORTED:
            logger.debug("udpio: unexpected send error %r on %r", exc, self)
        # With IP_RECVERR an earlier ICMP error fails the next send with its errno (on any socket) and sits on
        # the error queue too: report it once, from the queue; this datagram is counted as not sent above.
        if exc.errno not in self._drain_error_queue():
            self._report(exc)
        self._rearm_reader()

    def _write_ready(self) -> None:
        buffer = self._buffer
        sock = self._sock
        while buffer:
            data, dest = buffer[0]
            try:
                if dest is None:
                    sock.send(data)
                else:
                    sock.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                buffer.popleft()
                self._buffer_size -= len(data)
                self._send_failed(exc)
                if self._closed:
                    return
                continue
            buffer.popleft()
            self._buffer_size -= len(data)
            self._counters.datagrams_out += 1
            self._counters.bytes_out += len(data)
        self._loop.remove_writer(self._fileno)
        self._maybe_resume_protocol()
        if self._closing and not self._closed:
            self._closed = True
            self._call_connection_lost(None)

    def send_batch(self, batch: Iterable[tuple[bytes | bytearray | memoryview, Any]]) -> None:
        """Send ``(data, addr)`` pairs, e.g. replies built from a ``datagrams_received`` batch.

        The same as calling :meth:`sendto` for each pair, with the per-call checks hoisted out of the loop
        (one address validation per distinct destination, counters updated once).
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        if self._buffer or self._remote is not None:
            for data, addr in batch:
                self.sendto(data, addr)
            return
        sendto = self._sock.sendto
        ok = self._ok_addresses
        top = self._max_payload
        sent = nbytes = 0
        pending = iter(batch)
        try:
            for data, addr in pending:
                if addr not in ok:
                    self._check_destination(addr)
                size = len(data)
                if size > top:
                    raise DatagramTooLargeError(size, top, family_name(self._family))
                try:
                    sendto(data, addr)
                except (BlockingIOError, InterruptedError):
                    # Kernel buffer full: this one and the rest go through the buffer, in order.
                    self._loop.add_writer(self._fileno, self._write_ready)
                    self._queue(bytes(data), addr, size)
                    for rest, rest_addr in pending:
                        self.sendto(rest, rest_addr)
                    return
                except OSError as exc:
                    self._send_failed(exc)
                    if self._closing:
                        # The socket failed under us (EBADF): the rest can never go out; count, not lose.
                        self._counters.dropped_on_close += sum(1 for _ in pending)
                        return
                    continue
                sent += 1
                nbytes += size
        finally:
            self._counters.datagrams_out += sent
            self._counters.bytes_out += nbytes

    def send_many(self, datagrams: Sequence[bytes | bytearray | memoryview], addr: Any = None) -> None:
        """Send several datagrams to one destination, with as few system calls as the platform allows.

        On Linux with UDP GSO (``UDP_SEGMENT``), runs of equal-sized datagrams (the last of a run may be
        shorter) go out as one ``sendmsg`` each, up to :data:`GSO_MAX_SEGMENTS`; elsewhere, or when the
        kernel refuses GSO, each datagram is sent with :meth:`sendto`. Same errors as :meth:`sendto`.
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        dest = self._check_destination(addr)
        if self._gso is None:
            self._gso = _sockopts.gso_supported(self._sock)
        if not self._gso or self._buffer:
            for datagram in datagrams:
                self.sendto(datagram, dest)
            return
        for run, segment in _gso_runs(datagrams, self._max_payload, family_name(self._family)):
            if len(run) == 1:
                self.sendto(run[0], dest)
                continue
            payload = b"".join(run)
            try:
                if dest is None:
                    self._sock.sendmsg([payload], [_sockopts.gso_cmsg(segment)])
                else:
                    self._sock.sendmsg([payload], [_sockopts.gso_cmsg(segment)], 0, dest)
            except (BlockingIOError, InterruptedError):
                for datagram in run:
                    self._queue(bytes(datagram), dest, len(datagram))
                self._loop.add_writer(self._fileno, self._write_ready)
            except OSError as exc:
                if exc.errno in _sockopts._OPTION_MISSING or exc.errno == errno.EIO:
                    # The device cannot segment (EIO from drivers without GSO): stop trying.
                    self._gso = False
                    for datagram in run:
                        self.sendto(datagram, dest)
                else:
                    self._send_failed(exc)
            else:
                self._counters.datagrams_out += len(run)
                self._counters.bytes_out += len(payload)

    # -- flow control ----------------------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be sent."""
        return self._buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)`` water marks for ``resume_writing`` / ``pause_writing``."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks as asyncio does (``low`` defaults to ``high // 4``); ``high`` must not exceed
        the hard buffer limit."""
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise InvalidArgumentError("write buffer limits", "0 <= low <= high", (low, high))
        if high > self._buffer_limit:
            raise InvalidArgumentError("high water mark", f"at most buffer_limit={self._buffer_limit}", high)
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._buffer_size <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except Exception as exc:
            self._handler_failed(exc, None)

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffer_size <= self._low_water:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._handler_failed(exc, None)


def _gso_runs(
    datagrams: Iterable[bytes | bytearray | memoryview], max_payload: int, fam: str
) -> Iterable[tuple[list[bytes | bytearray | memoryview], int]]:
    """Group datagrams into GSO runs: equal sizes, at most the segment limits, the last may be shorter."""
    run: list[bytes | bytearray | memoryview] = []
    segment = 0
    total = 0
    for datagram in datagrams:
        size = len(datagram)
        if size > max_payload:
            raise DatagramTooLargeError(size, max_payload, fam)
        if run and (
            size > segment
            or len(run) >= GSO_MAX_SEGMENTS
            or total + size > GSO_MAX_BYTES
            or len(run[-1]) < segment
        ):
            yield run, segment
            run, total = [], 0
        if not run:
            segment = size
        if size == 0:
            # A zero-length datagram cannot be a GSO segment; send it on its own.
            if run:
                yield run, segment
            yield [datagram], 0
            run, total = [], 0
            continue
        run.append(datagram)
        total += size
    if run:
        yield run, segment
