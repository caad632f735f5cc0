"""The two ``recvfrom`` strategies: :class:`PerDatagram` (one handler call per datagram) and :class:`Batch`
(lists of about ``batch_bytes`` for ``datagrams_received``).

Both end an event early with ``FIONREAD`` after a one-datagram event (see :meth:`_Probe.empty`), and both
count per event: the loops below are the hot path, so everything they touch is a local.
"""

from __future__ import annotations

import array
import asyncio
import socket
from typing import Any

from .. import _sockopts
from .._addr import Address
from ._seam import ReceiveConfig, ReceiveSink, StrategyBase


class _Probe(StrategyBase):
    """The empty-queue probe both ``recvfrom`` strategies share.

    Draining a socket ends with a receive that fails with EAGAIN, and in Python that costs a system call plus
    an exception: measured here 1.85 us, about what a successful receive costs. ``FIONREAD`` answers in
    0.76 us without an exception. When the previous read event carried a single datagram (request/response
    traffic), the strategy asks it after the first datagram and ends the event when nothing follows:
    measured 3.4-3.9 us per event instead of 4.1-5.0 us. When events carry several datagrams the question
    would be wasted (0.6-0.8 us more per event), so it is not asked. A queued zero-length datagram also
    reads as empty: the event ends, and the still-readable socket brings the loop straight back
    (level-triggered readiness on both loops), so nothing is lost.
    """

    def __init__(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, config: ReceiveConfig, sink: ReceiveSink
    ) -> None:
        super().__init__(sock, protocol, config, sink)
        self._recvfrom = sock.recvfrom
        self._probe = False  # the previous read event carried one datagram
        self._pending = array.array("i", [0])  # FIONREAD's answer, reused

    def _empty(self) -> bool:
        return _sockopts.receive_queue_empty(self._fileno, self._pending)


class PerDatagram(_Probe):
    """``recvfrom`` and one ``datagram_received`` call per datagram (a protocol with ``datagrams_received``
    gets lists of one: this strategy is only its default when it has none)."""

    def read_event(self) -> None:
        if self._stopped:
            return
        recvfrom = self._recvfrom
        size = self._recv_size
        top = self._max_size
        protocol = self._protocol
        many = getattr(protocol, "datagrams_received", None)
        deliver = protocol.datagram_received if many is None else _one_list(many)  # type: ignore[attr-defined]
        sink = self._sink
        count = nbytes = oversize = 0
        probe = self._probe
        try:
            for _ in range(self._per_event):
                try:
                    data, addr = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if sink.receive_error(exc):
                        break
                    continue
                length = len(data)
                if length > top:
                    oversize += 1
                    continue
                count += 1
                nbytes += length
                try:
                    deliver(data, addr)
                except Exception as exc:
                    sink.handler_failed(exc, addr)
                if self._stopped:
                    break
                if probe:
                    probe = False
                    if self._empty():
                        break
        finally:
            counters = self._counters
            counters.datagrams_in += count
            counters.bytes_in += nbytes
            counters.dropped_oversize += oversize
            self._probe = count == 1


def _one_list(many: Any) -> Any:
    def deliver(data: bytes, addr: Address) -> None:
        many([(data, addr)])

    return deliver


class Batch(_Probe):
    """``recvfrom`` into lists of about ``batch_bytes`` for ``datagrams_received`` (the tuples exactly as
    ``recvfrom`` returns them, no repacking); a protocol without it gets one call per item."""

    def read_event(self) -> None:
        if self._stopped:
            return
        batch: list[tuple[bytes, Address]] = []
        append = batch.append
        recvfrom = self._recvfrom
        size = self._recv_size
        top = self._max_size
        limit = self._batch_bytes
        sink = self._sink
        chunk = oversize = received = 0
        probe = self._probe
        try:
            for _ in range(self._per_event):
                try:
                    item = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if sink.receive_error(exc):
                        break
                    continue
                length = len(item[0])
                if length > top:
                    oversize += 1
                    continue
                append(item)
                chunk += length
                received += 1
                if probe:
                    # After the first datagram of an event, ask whether another is queued: when none is,
                    # this ends the event without the failing receive.
                    probe = False
                    if self._empty():
                        break
                if chunk >= limit:
                    self._flush(batch, chunk)
                    batch = []
                    append = batch.append
                    chunk = 0
                    if self._stopped:
                        return
        finally:
            self._counters.dropped_oversize += oversize
            self._probe = received == 1
        if batch:
            if self._stopped:  # a receive error closed the transport while this list was read
                self._drop_unsent(batch, chunk)
            else:
                self._flush(batch, chunk)
