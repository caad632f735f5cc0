"""Sends from a chosen source address: the part of a transport's send path (:class:`~udpio._send.SendPath`)
behind ``sendto(..., source=)`` and ``send_batch`` of ``(data, addr, source)`` triples.

Such a datagram goes out through ``sendmsg`` with an ``IP_PKTINFO`` / ``IPV6_PKTINFO`` control message (built
once per source, see ``_sockopts.pktinfo_cmsg``); a batch of triples goes through the compiled backend where
it runs (``sendmmsg`` with that control message per message), else one ``sendmsg`` each. Queued, such a
datagram keeps its control message (:class:`_Sourced`), so it leaves from its source whenever it leaves.

:class:`SourcedSends` is a part of :class:`~udpio._send.SendPath`, not a class of its own: SendPath inherits
it, and it works on SendPath's state (the queue, the counters, the closing flag), declared below for mypy.
Also here: what both modules use (:data:`Buffer`, :func:`_nbytes`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from . import _sockopts
from ._addr import Address, family_name
from ._errors import DatagramTooLargeError, EndpointClosedError, InvalidAddressError, InvalidArgumentError
from ._limits import LOCAL_ADDRESS_CACHE_SIZE

if TYPE_CHECKING:
    from ._addr import Source
    from ._counters import Counters
    from ._destinations import Destinations

#: What ``sendto`` takes as data (``collections.abc.Buffer`` only exists from Python 3.12).
Buffer: TypeAlias = bytes | bytearray | memoryview
_Ancillary: TypeAlias = tuple[tuple[int, int, bytes]]


class _Sourced(NamedTuple):
    """A queued datagram's destination when it was sent with a ``source``: where to, and the control message
    that selects the source."""

    address: Address | None
    ancillary: _Ancillary


def _sendmsg_from(sock: socket.socket, data: Buffer, dest: Address | None, ancillary: _Ancillary) -> None:
    if dest is None:
        sock.sendmsg([data], ancillary)
    else:
        sock.sendmsg([data], ancillary, 0, dest)


def _nbytes(data: object) -> int:
    """The size of a datagram in bytes (a ``memoryview`` of multi-byte items: ``nbytes``, not ``len``)."""
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")


class SourcedSends:
    """SendPath's sends from a chosen source (see the module doc)."""

    # SendPath's state this part reads and writes (set in SendPath.__init__).
    _sock: socket.socket
    _family: int
    _counters: Counters
    _destinations: Destinations
    _max_payload: int
    _buffer: Any
    _closing: bool
    _backend: Callable[..., int] | None
    #: Sources seen: their control message and whether it carries an IPv4 source.
    _sources: dict[Any, tuple[_Ancillary, bool]]
    _dual_stack: bool | None  # asked on the first send with a source
    _on_error: Callable[[OSError], None]

    if TYPE_CHECKING:  # SendPath's methods this part calls

        def sendto(self, data: Buffer, addr: Any = None, *, source: Source | None = None) -> None: ...
        def _queue(self, data: bytes, dest: Address | _Sourced | None, size: int) -> None: ...
        def _gso_probed(self) -> bool: ...

    def _ancillary(self, source: Any, dest: Address | None) -> _Ancillary:
        """The control message that sends from ``source`` to ``dest`` (checked and built once per source)."""
        try:
            entry = self._sources.get(source)
        except TypeError:  # unhashable
            entry = None
        if entry is None:
            if self._dual_stack is None:
                self._dual_stack = _sockopts.is_dual_stack(self._sock)
            cmsg = _sockopts.pktinfo_cmsg(self._family, source, self._dual_stack)
            entry = ((cmsg,), _sockopts.is_mapped_source(cmsg))
            if len(self._sources) >= LOCAL_ADDRESS_CACHE_SIZE:
                self._sources.clear()
            self._sources[source] = entry
        ancillary, ipv4 = entry
        if self._dual_stack and dest is not None and ipv4 != _sockopts.is_mapped_host(dest[0]):
            # The kernel refuses the mix (EINVAL): an IPv4 peer is answered from an IPv4 address and back.
            raise InvalidAddressError(
                "source", f"an {'IPv6' if ipv4 else 'IPv4-mapped'} address for the peer {dest[0]}", source
            )
        return ancillary

    def _sendto_from(self, data: Buffer, addr: Any, source: Any) -> None:
        """:meth:`sendto` from ``source`` (``sendmsg`` with the control message; queued with it)."""
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        size = _nbytes(data)
        if size > self._max_payload:
            raise DatagramTooLargeError(size, self._max_payload, family_name(self._family))
        dest = self._destinations.check(addr)
        ancillary = self._ancillary(source, dest)
        self._send_from(data, dest, ancillary, size)

    def _send_from(self, data: Buffer, dest: Address | None, ancillary: _Ancillary, size: int) -> None:
        if self._buffer or self._closing:  # behind the queue, in order; or counted once closing
            self._queue(bytes(data), _Sourced(dest, ancillary), size)
            return
        try:
            _sendmsg_from(self._sock, data, dest, ancillary)
        except (BlockingIOError, InterruptedError):
            self._queue(bytes(data), _Sourced(dest, ancillary), size)
        except OSError as exc:
            self._counters.send_errors += 1
            self._on_error(exc)
        else:
            self._counters.datagrams_out += 1
            self._counters.bytes_out += size

    def _send_batch_from(self, batch: list[Any]) -> None:
        """:meth:`send_batch` of ``(data, addr, source)`` triples: all checked first, then each sent as
        :meth:`sendto` with its source would (``source`` ``None``: as plain :meth:`sendto`)."""
        checked: list[tuple[Buffer, Address | None, _Ancillary | None, int]] = []
        top = self._max_payload
        for item in batch:
            try:
                data, addr, source = item
            except (TypeError, ValueError):
                raise InvalidArgumentError("batch item", "a (data, addr, source) triple, as the first", item) from None
            size = _nbytes(data)
            if size > top:
                raise DatagramTooLargeError(size, top, family_name(self._family))
            dest = self._destinations.check(addr)
            checked.append((data, dest, None if source is None else self._ancillary(source, dest), size))
        backend = self._backend
        if backend is not None and len(checked) > 1 and not self._buffer and self._destinations.peer is None:
            self._send_checked_from(checked, backend)
            return
        for data, dest, ancillary, size in checked:
            self._send_one_from(data, dest, ancillary, size)

    def _send_one_from(self, data: Buffer, dest: Address | None, ancillary: _Ancillary | None, size: int) -> None:
        """One checked datagram of a batch of triples, as :meth:`sendto` (with its source) would send it."""
        if ancillary is None:
            if self._closing:
                self._counters.dropped_on_close += 1
            else:
                self.sendto(data, dest)
        else:
            self._send_from(data, dest, ancillary, size)

    def _send_checked_from(
        self, checked: list[tuple[Buffer, Address | None, _Ancillary | None, int]], backend: Callable[..., int]
    ) -> None:
        """Checked triples through the compiled backend (``sendmmsg``, each message with its source's control
        message), with :meth:`send_batch`'s rules: the one the backend stops at goes through the single path
        (which queues on EAGAIN, or meets and routes the error), then the backend takes the rest; once the
        kernel is full or the path closed, the rest queue behind it, or are counted."""
        items = [(data, dest, None if ancillary is None else ancillary[0]) for data, dest, ancillary, _ in checked]
        counters = self._counters
        count = len(items)
        start = 0
        while start < count:
            # One left: the single path's sendmsg is one system call, the backend's poll + sendmmsg two.
            stop = backend(self._sock, items, start, gso=self._gso_probed()) if count - start > 1 else start
            counters.datagrams_out += stop - start
            counters.bytes_out += sum(size for _, _, _, size in checked[start:stop])
            if stop == count:
                return
            self._send_one_from(*checked[stop])
            if self._closing or self._buffer:
                for data, dest, ancillary, size in checked[stop + 1 :]:
                    self._queue(bytes(data), dest if ancillary is None else _Sourced(dest, ancillary), size)
                return
            start = stop + 1
