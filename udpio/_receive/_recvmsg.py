"""The two ``recvmsg`` strategies, for sockets whose receives carry control messages: :class:`Recvmsg` (UDP
GRO, ``SO_RXQ_OVFL``, local addresses) and :class:`ZeroCopy` (the same, received into a reused arena and
delivered as views).

GRO: the kernel may hand several equal-sized datagrams from one sender as one buffer, with the segment size
in a ``UDP_GRO`` control message (udp(7)); they are split again here, so handlers never see the difference.
``SO_RXQ_OVFL`` (socket(7)): each receive carries the kernel's running drop count for the socket.
Local addresses (``pktinfo`` in the configuration): each receive carries an ``IP_PKTINFO`` / ``IPV6_PKTINFO``
message (ip(7), ipv6(7)); the datagrams go to the protocol's ``datagrams_received_on`` as ``(data, addr,
local)`` (or one ``datagram_received_on(data, addr, local)`` call each), every piece of a GRO train with the
train's local address (one sender, one destination: the kernel coalesces one flow only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

from .. import _sockopts
from .._limits import BATCH_BYTES, RECV_BUFFER_SIZE
from ._seam import ReceiveConfig, ReceiveSink, StrategyBase

logger = logging.getLogger("udpio")

#: Room for the UDP_GRO (int) and SO_RXQ_OVFL (uint32) control messages; local addresses need
#: ``_sockopts.PKTINFO_SPACE`` more (a datagram without room for its messages would come with MSG_CTRUNC).
ANCILLARY_SPACE = socket.CMSG_SPACE(4) * 2
#: zero_copy: the receive arena: one batch plus one maximal receive (a GRO train), reused for every list
#: while no view of it survives its handler, so it stays in cache.
ARENA_SIZE = BATCH_BYTES + RECV_BUFFER_SIZE
_GRO_SEGMENT = struct.Struct("=i")


_IPPROTO_IP = socket.IPPROTO_IP
_IPPROTO_IPV6 = socket.IPPROTO_IPV6


class _ControlMessages(StrategyBase):
    """What both ``recvmsg`` strategies share: the ancillary room they ask for, and how one receive is read
    (:meth:`_take`)."""

    def __init__(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, config: ReceiveConfig, sink: ReceiveSink
    ) -> None:
        super().__init__(sock, protocol, config, sink)
        self._local = config.pktinfo
        self._ancillary = ANCILLARY_SPACE + (_sockopts.PKTINFO_SPACE if config.pktinfo else 0)
        # An IPv4 address seen on an IPv6 (dual-stack) socket is written mapped, as its peers are.
        self._mapped = sock.family == socket.AF_INET6
        # Stands in when a receive carries no address (none is expected: the option is on before reading).
        self._unknown = _sockopts.UNKNOWN_LOCAL[sock.family]

    def _take(self, data: Any, flags: int, ancdata: list[tuple[int, int, bytes]], addr: Any, append: Any) -> int:
        """One receive, read the same way by both strategies: its control messages (GRO segment size, drop
        count, local address), then what it brought appended to the list being filled: one datagram, or each
        piece of a GRO train, as ``(data, addr)`` or ``(data, addr, local)``. A truncated or oversize datagram
        is counted in ``dropped_oversize`` instead. Returns the payload bytes appended."""
        counters = self._counters
        segment = 0
        local = unknown = self._unknown
        for level, kind, cdata in ancdata:
            if level == _sockopts.SOL_UDP and kind == _sockopts.UDP_GRO:
                segment = _GRO_SEGMENT.unpack_from(cdata)[0]
            elif level == socket.SOL_SOCKET and kind == _sockopts.SO_RXQ_OVFL:
                counters.kernel_drops = _sockopts.parse_rxq_ovfl(cdata)
            elif level == _IPPROTO_IP and kind == _sockopts.IP_PKTINFO:
                # Wins over IPV6_PKTINFO (an IPv4 peer of a dual-stack socket brings both): only it carries
                # ipi_spec_dst (see _sockopts.local_address).
                local = _sockopts.local_address(level, cdata, self._mapped) or local
            elif level == _IPPROTO_IPV6 and kind == _sockopts.IPV6_PKTINFO and local is unknown:
                local = _sockopts.local_address(level, cdata) or local
        if flags & socket.MSG_TRUNC:
            counters.dropped_oversize += 1
            return 0
        length = len(data)
        top = self._max_size
        with_local = self._local
        if segment and length > segment:
            counters.gro_batches += 1
            added = 0
            for start in range(0, length, segment):
                piece = data[start : start + segment]
                if len(piece) > top:
                    counters.dropped_oversize += 1
                else:
                    append((piece, addr, local) if with_local else (piece, addr))
                    added += len(piece)
            return added
        if length > top:
            counters.dropped_oversize += 1
            return 0
        append((data, addr, local) if with_local else (data, addr))
        return length


class Recvmsg(_ControlMessages):
    """``recvmsg`` with control messages: GRO trains split at the segment size, the kernel drop count kept
    in ``counters.kernel_drops``, local addresses delivered with each datagram; lists of about ``batch_bytes``
    (one call per item without ``datagrams_received`` / ``datagrams_received_on``)."""

    def __init__(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, config: ReceiveConfig, sink: ReceiveSink
    ) -> None:
        super().__init__(sock, protocol, config, sink)
        # With GRO a receive may hold a whole train: ask for the largest buffer, and apply max_size per piece.
        self._size = RECV_BUFFER_SIZE if config.gro else self._recv_size

    def read_event(self) -> None:
        if self._stopped:
            return
        batch: list[Any] = []
        append = batch.append
        recvmsg = self._sock.recvmsg
        size = self._size
        ancillary = self._ancillary
        limit = self._batch_bytes
        sink = self._sink
        take = self._take
        flush = self._flush
        chunk = 0
        for _ in range(self._per_event):
            try:
                data, ancdata, flags, addr = recvmsg(size, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if sink.receive_error(exc):
                    break
                continue
            chunk += take(data, flags, ancdata, addr, append)
            if chunk >= limit:
                flush(batch, chunk)
                batch = []
                append = batch.append
                chunk = 0
                if self._stopped:
                    return
        if batch:
            if self._stopped:
                self._drop_unsent(batch, chunk)
            else:
                flush(batch, chunk)


class ZeroCopy(_ControlMessages):
    """``recvmsg_into`` a preallocated arena, delivering ``memoryview`` slices of it: no copy at all.

    A view is valid during the handler call only, and that is enforced rather than hoped for:

    * when the handler returns, every view of its list is released, so a view (or list) kept past the call
      raises :class:`ValueError` on use instead of silently showing later datagrams;
    * then the arena is reused only if nothing of it survives: a sub-slice or a buffer export the handler
      made (``view[2:]``, ``numpy.frombuffer(view)``) keeps the old arena alive for itself, unchanged for
      ever, and the strategy takes a fresh one. The check is one failed-or-not resize of the arena's
      ``bytearray``, which refuses to resize while any view of it exists.

    Without ``zero_copy`` in its configuration (forced for tests on an ordinary endpoint) it delivers
    ``bytes`` copies, so its read loop runs under every receive test.
    """

    def __init__(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, config: ReceiveConfig, sink: ReceiveSink
    ) -> None:
        super().__init__(sock, protocol, config, sink)
        self._size = RECV_BUFFER_SIZE if config.gro else self._recv_size
        self._bytes = bytearray(ARENA_SIZE)
        self._arena = memoryview(self._bytes)
        self._views = config.zero_copy

    def read_event(self) -> None:
        if self._stopped:
            return
        batch: list[Any] = []
        append = batch.append
        recvmsg_into = self._sock.recvmsg_into
        arena = self._arena
        room = ARENA_SIZE - RECV_BUFFER_SIZE  # a list is closed before the arena's tail is too short
        offset = 0
        size = self._size
        ancillary = self._ancillary
        limit = self._batch_bytes
        sink = self._sink
        take = self._take
        chunk = 0
        view: Any = None  # this loop's own views of the arena, dropped before the arena is checked
        for _ in range(self._per_event):
            view = arena[offset : offset + size]
            try:
                length, ancdata, flags, addr = recvmsg_into([view], ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if sink.receive_error(exc):
                    break
                continue
            chunk += take(view[:length], flags, ancdata, addr, append)
            offset += length
            if chunk >= limit or offset > room:
                view = None
                if batch:
                    arena = self._deliver(batch, chunk, arena)
                    batch = []
                    append = batch.append
                chunk = offset = 0
                if self._stopped:
                    return
        view = None
        if batch:
            if self._stopped:
                self._drop_unsent(batch, chunk)
            else:
                self._deliver(batch, chunk, arena)

    def _deliver(self, batch: list[Any], nbytes: int, arena: memoryview) -> memoryview:
        """Deliver a list; returns the arena for the next one (the same, or a fresh one, see the class doc)."""
        if not self._views:
            self._flush([(bytes(item[0]), *item[1:]) for item in batch], nbytes)
            return arena
        try:
            self._flush(batch, nbytes)
        finally:
            for item in batch:
                # BufferError: the handler made an export of it; the arena check below sees it.
                with contextlib.suppress(BufferError):
                    item[0].release()
            arena.release()
            try:
                self._bytes.append(0)  # refused while any view of the arena is alive
            except BufferError:
                logger.debug("udpio: a zero_copy handler kept a view of the receive arena; taking a fresh one")
                self._bytes = bytearray(ARENA_SIZE)
            else:
                del self._bytes[-1]
            self._arena = memoryview(self._bytes)
        return self._arena
