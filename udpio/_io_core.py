"""Which I/O core drains udpio's sockets: the compiled one (``udpio._core``) or the pure-Python path.

The compiled core (``udpio/_core.c``, built by ``setup.py`` where a C compiler exists) runs the whole drain
loop of a readiness event in C (``recvmmsg``, one handler call per datagram or per list) and sends batches
of replies with ``sendmmsg``; it implements the same contracts as the Python path (SEAMS.md), which stays
complete. It is used when it was built and imports, unless ``UDPIO_NO_EXTENSIONS`` is set to any non-empty
value (aiohttp's, yarl's and multidict's convention), which forces the pure-Python path, e.g. to compare
the two or to rule the extension out while debugging.

The choice is made once, at import; :data:`IO_CORE` says which one runs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from ._addr import LocalAddress

#: The two I/O cores.
IoCore: TypeAlias = Literal["compiled", "python"]


class Limits(Protocol):
    """What the compiled receiver reads from the transport's ``ReceiveLimits`` (SEAMS.md)."""

    @property
    def recv_size(self) -> int: ...
    @property
    def max_size(self) -> int | None: ...
    @property
    def per_event(self) -> int: ...
    @property
    def batch_bytes(self) -> int: ...


class Config(Protocol):
    """What :func:`build_receiver` reads from the transport's receive configuration (``ReceiveConfig``)."""

    @property
    def limits(self) -> Limits: ...
    @property
    def gro(self) -> bool: ...
    @property
    def zero_copy(self) -> bool: ...
    @property
    def pktinfo(self) -> bool: ...


class ReceiveStrategy(Protocol):
    """SEAMS.md's receive strategy: one per (transport, protocol)."""

    def read_event(self) -> None: ...
    def stop(self) -> None: ...


#: ``send_pairs(sock, pairs, start) -> int``, SEAMS.md's batch send backend; ``pairs`` may also be
#: ``(data, dest, source)`` triples, ``source`` ``None`` or the control message of ``_sockopts.pktinfo_cmsg``.
SendPairs: TypeAlias = Callable[[socket.socket, Sequence[tuple[Any, ...]], int], int]


def _load() -> ModuleType | None:
    if os.environ.get("UDPIO_NO_EXTENSIONS"):
        return None
    try:
        from . import _core  # noqa: PLC0415  # optional: imported only when the environment allows it
    except ImportError:  # not built (no compiler, not Linux, not CPython): the Python path runs
        return None
    return _core


_core = _load()

#: ``"compiled"`` when udpio's compiled I/O core drains the sockets, ``"python"`` when the pure-Python
#: path does (the extension was not built, or ``UDPIO_NO_EXTENSIONS`` is set).
IO_CORE: IoCore = "python" if _core is None else "compiled"

#: The compiled batch send backend, or ``None`` on the Python path.
send_pairs: SendPairs | None = None if _core is None else _core.send_pairs


def compiled_receiver(
    sink: Any,
    fileno: int,
    limits: Limits,
    *,
    datagram_received: Callable[[bytes, Any], object] | None = None,
    datagrams_received: Callable[[list[tuple[bytes, Any]]], object] | None = None,
    datagram_received_on: Callable[[bytes, Any, LocalAddress], object] | None = None,
    datagrams_received_on: Callable[[list[tuple[bytes, Any, LocalAddress]]], object] | None = None,
    buffer_size: int | None = None,
) -> ReceiveStrategy | None:
    """The compiled receive strategy for one (transport, protocol), or ``None`` on the Python path.

    ``sink`` is the transport's ``ReceiveSink``; exactly one handler is given. The ``_on`` handlers also get
    each datagram's :class:`~udpio.LocalAddress`, read from ``IP_PKTINFO`` / ``IPV6_PKTINFO`` control messages
    (the caller turns the option on, ``_sockopts.set_pktinfo``). ``buffer_size`` is what each
    receive asks of the kernel (default ``limits.recv_size``); with UDP GRO on, pass ``RECV_BUFFER_SIZE``:
    trains are split at the segment size the kernel reports, and ``SO_RXQ_OVFL`` counts are read when the
    socket has that option on. Zero copy (memoryview delivery) has no compiled strategy: keep the Python one.
    The strategy does not own the descriptor.
    """
    if _core is None:
        return None
    receiver: ReceiveStrategy = _core.Receiver(
        sink,
        fileno,
        limits,
        datagram_received=datagram_received,
        datagrams_received=datagrams_received,
        datagram_received_on=datagram_received_on,
        datagrams_received_on=datagrams_received_on,
        buffer_size=buffer_size or 0,
    )
    return receiver


def build_receiver(sock: socket.socket, protocol: Any, config: Config, sink: Any) -> ReceiveStrategy:
    """The compiled strategy as a receive-strategy factory (``factory(sock, protocol, config, sink)``, the
    transport's registry shape): the handler is chosen here, once, as every strategy chooses it (lists for
    a protocol with ``datagrams_received``; with ``config.pktinfo``, ``datagrams_received_on`` or else
    ``datagram_received_on``, given each datagram's local address). It reads GRO trains, ``SO_RXQ_OVFL``
    counts and local addresses; it has no zero-copy mode. Only call it when :data:`IO_CORE` is
    ``"compiled"``."""
    if _core is None:
        raise RuntimeError("udpio's compiled I/O core is not in use (see udpio.IO_CORE)")
    if config.zero_copy:
        raise ValueError("the compiled receive strategy has no zero-copy mode; use the Python one")
    # The Python strategies' choice (_receive/_seam.py, StrategyBase): lists if the protocol takes them, else
    # one call per datagram; with local addresses, the _on pair.
    suffix = "_on" if config.pktinfo else ""
    many = getattr(protocol, "datagrams_received" + suffix, None)
    if many is not None:
        handlers = {"datagrams_received" + suffix: many}
    else:
        handlers = {"datagram_received" + suffix: getattr(protocol, "datagram_received" + suffix)}
    # A GRO train holds up to 64 KiB of payload (one UDP length field): receive into the largest buffer.
    buffer_size = _core.MAX_BUFFER_SIZE if config.gro else 0
    receiver: ReceiveStrategy = _core.Receiver(sink, sock.fileno(), config.limits, buffer_size=buffer_size, **handlers)
    return receiver
