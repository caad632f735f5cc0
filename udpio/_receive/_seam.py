"""The receive seam (SEAMS.md): what a strategy is given, what it must do, and the delivery every strategy
shares.

A strategy is built once per (transport, protocol) by its :data:`StrategyFactory` with the socket, the
protocol, a :class:`ReceiveConfig` and the transport's :class:`ReceiveSink`; the transport then calls
:meth:`ReceiveStrategy.read_event` on every readiness event and :meth:`ReceiveStrategy.stop` when it closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeAlias

from .._counters import Counters
from .._limits import ReceiveLimits

#: A socket feature a strategy must be able to read: coalesced GRO buffers (``gro``), the ``SO_RXQ_OVFL``
#: drop count on each receive (``kernel_drops``), delivery of views into a reused buffer (``zero_copy``), each
#: datagram's local address (``pktinfo``: ``IP_PKTINFO``/``IPV6_PKTINFO``, delivered to the protocol's
#: ``datagram_received_on`` / ``datagrams_received_on``).
Feature: TypeAlias = Literal["gro", "kernel_drops", "zero_copy", "pktinfo"]


class ReceiveSink(Protocol):
    """The transport's side of the seam, handed to the strategy."""

    #: Strategies add to ``datagrams_in``, ``bytes_in``, ``dropped_oversize``, ``dropped_on_close``,
    #: ``gro_batches`` (accumulated, once per event or per list) and set ``kernel_drops``.
    counters: Counters

    def receive_error(self, exc: OSError) -> bool:
        """Route a receive error other than EAGAIN/EINTR; ``True``: end this read event."""
        ...

    def handler_failed(self, exc: Exception, addr: object) -> None:
        """A handler raised: count and log it (delivery goes on)."""
        ...


class ReceiveStrategy(Protocol):
    """Drains the socket on each readiness event and delivers to the protocol."""

    def read_event(self) -> None:
        """One readiness event: read at most ``limits.per_event`` datagrams and deliver them."""
        ...

    def stop(self) -> None:
        """The transport is closing: deliver nothing more, return at the next handler boundary, never read
        again."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiveConfig:
    """What a transport asks of its strategy besides the protocol: sizes, and the socket features on."""

    limits: ReceiveLimits
    #: ``UDP_GRO`` is on: a receive may hold several datagrams, split at the size a control message gives.
    gro: bool = False
    #: ``SO_RXQ_OVFL`` is on: each receive carries the kernel's drop count.
    kernel_drops: bool = False
    #: Deliver ``memoryview`` slices of a reused buffer, valid only during the handler call.
    zero_copy: bool = False
    #: The protocol takes each datagram's local address (:func:`has_local_handler`); ``IP_PKTINFO`` /
    #: ``IPV6_RECVPKTINFO`` is on: deliver ``(data, addr, local)`` to ``datagram(s)_received_on``.
    pktinfo: bool = False

    @property
    def features(self) -> frozenset[Feature]:
        """The features a strategy must support to serve this configuration."""
        wanted: list[Feature] = []
        if self.gro:
            wanted.append("gro")
        if self.kernel_drops:
            wanted.append("kernel_drops")
        if self.zero_copy:
            wanted.append("zero_copy")
        if self.pktinfo:
            wanted.append("pktinfo")
        return frozenset(wanted)


#: Builds a strategy: ``factory(sock, protocol, config, sink)``.
StrategyFactory: TypeAlias = Callable[
    [socket.socket, asyncio.BaseProtocol, ReceiveConfig, ReceiveSink], ReceiveStrategy
]


@dataclasses.dataclass(frozen=True, slots=True)
class StrategySpec:
    """A registered strategy: its name, its factory, the features it can read, and when it is the default.

    ``preferred(config, batch_handler)`` says whether the transport should pick this strategy on its own for
    that configuration and a protocol with (``True``) or without ``datagrams_received``; among the
    registered strategies that say yes, the last registered wins, so a strategy registered later (the
    compiled one) takes over where it declares itself preferred.
    """

    name: str
    build: StrategyFactory
    features: frozenset[Feature]
    preferred: Callable[[ReceiveConfig, bool], bool]

    def can_serve(self, config: ReceiveConfig) -> bool:
        """Whether this strategy honours the delivery contract for ``config`` (it reads every feature on)."""
        return config.features <= self.features


def has_batch_handler(protocol: object) -> bool:
    """Whether ``protocol`` takes lists (``datagrams_received``, or ``datagrams_received_on`` when it takes
    local addresses)."""
    if has_local_handler(protocol):
        return getattr(protocol, "datagrams_received_on", None) is not None
    return hasattr(protocol, "datagrams_received")


def has_local_handler(protocol: object) -> bool:
    """Whether ``protocol`` takes each datagram's local address: it has ``datagram_received_on(data, addr,
    local)`` or ``datagrams_received_on(batch)`` (not ``None``: a protocol may bind one in ``connection_made``,
    when it knows its socket, as udpio's echo server does)."""
    return (
        getattr(protocol, "datagrams_received_on", None) is not None
        or getattr(protocol, "datagram_received_on", None) is not None
    )


class StrategyBase:
    """State and list delivery shared by udpio's own strategies (the compiled one need not use it)."""

    def __init__(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, config: ReceiveConfig, sink: ReceiveSink
    ) -> None:
        self._sock = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._config = config
        limits = config.limits
        self._recv_size = limits.recv_size
        self._max_size = limits.max_size
        self._per_event = limits.per_event
        self._batch_bytes = limits.batch_bytes
        self._sink = sink
        self._counters = sink.counters
        self._stopped = False
        # The handlers a list goes to: with local addresses (pktinfo), the ``_on`` pair and (data, addr, local).
        self._many, self._one = (
            ("datagrams_received_on", "datagram_received_on")
            if config.pktinfo
            else ("datagrams_received", "datagram_received")
        )

    def stop(self) -> None:
        """Deliver nothing more (checked after every handler call) and never read again."""
        self._stopped = True

    def _flush(self, batch: list[Any], nbytes: int) -> None:
        """Count a list of received datagrams, then deliver it: to ``datagrams_received`` whole, or item by
        item to ``datagram_received`` (the ``_on`` pair, items ``(data, addr, local)``, with local addresses).
        If the transport stops in the middle, the rest is counted as dropped on close (received, never
        delivered)."""
        counters = self._counters
        counters.datagrams_in += len(batch)
        counters.bytes_in += nbytes
        protocol = self._protocol
        many = getattr(protocol, self._many, None)
        if many is not None:
            try:
                many(batch)
            except Exception as exc:
                self._sink.handler_failed(exc, batch[-1][1])
            return
        deliver = getattr(protocol, self._one)  # a DatagramProtocol, or has_local_handler chose this
        for index, item in enumerate(batch):
            try:
                deliver(*item)
            except Exception as exc:
                self._sink.handler_failed(exc, item[1])
            if self._stopped:
                counters.dropped_on_close += len(batch) - index - 1
                return

    def _drop_unsent(self, batch: list[tuple[Any, Any]], nbytes: int) -> None:
        """The transport stopped while a list was being read: received, counted, never delivered."""
        counters = self._counters
        counters.datagrams_in += len(batch)
        counters.bytes_in += nbytes
        counters.dropped_on_close += len(batch)
