"""The send path of a transport: the only code that sends data on a udpio socket.

One :class:`SendPath` per transport owns the send queue (bounded by ``buffer_limit``, overflow counted in
``dropped_send_buffer``), the write-buffer water marks and the calls to ``pause_writing``/``resume_writing``,
destination validation (with a bounded cache), GSO runs (:meth:`SendPath.send_many`) and the send counters
(``datagrams_out``, ``bytes_out``, ``send_errors``). Batches to many destinations go through one backend
function, :func:`send_pairs` (SEAMS.md): this module's is a loop over ``sendto``; a compiled one uses
``sendmmsg(2)``.

A datagram sent with a ``source`` (the local address to send from, :class:`~udpio.LocalAddress`), and a
batch of ``(data, addr, source)`` triples, go out through the part of the path in ``_send_from.py``.

Invariants a reader can rely on:

* a writer is registered with the loop exactly while the queue is not empty and the path is not aborted;
* once the path is closing, no datagram is queued or sent any more: each one handed to a call already under
  way when :meth:`SendPath.close` or :meth:`SendPath.abort` ran (say, from ``pause_writing`` or
  ``error_received``) is counted in ``dropped_on_close``; new calls raise :class:`EndpointClosedError`.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import _io_core, _sockopts
from ._addr import Address, family_name
from ._counters import Counters
from ._destinations import Destinations
from ._errors import DatagramTooLargeError, EndpointClosedError, InvalidAddressError, InvalidArgumentError
from ._limits import DEFAULT_HIGH_WATER, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, max_payload
from ._send_from import Buffer, SourcedSends, _nbytes, _sendmsg_from, _Sourced

if TYPE_CHECKING:
    from ._addr import Source

def send_pairs(
    sock: socket.socket, pairs: Sequence[tuple[Buffer, Address | None]], start: int, *, gso: bool = True
) -> int:
    """Send ``pairs[start:]`` in order, as many as the kernel takes without blocking; return the index of the
    first pair not sent (``len(pairs)`` when all went).

    It never raises for the datagram at the returned index: the caller retries that one through its
    ordinary single-datagram path, which routes ``EAGAIN`` (queue it and the rest) and errors
    (``error_received``, counters) exactly as ``sendto`` does. Destinations are validated before they get
    here. The pure-Python backend of SEAMS.md (``gso`` is the compiled backend's; this one sends one by one);
    the send path itself uses :func:`pairs_until_error`, which also hands back the error.
    """
    return pairs_until_error(sock, pairs, start)[0]


def pairs_until_error(
    sock: socket.socket, pairs: Sequence[tuple[Buffer, Address | None]], start: int
) -> tuple[int, Exception | None]:
    """:func:`send_pairs` that also returns the exception that stopped it (``None`` when all went).

    The send path needs it: an error pending on the socket (an ICMP error on a connected socket, udp(7)) is
    consumed by the ``sendto`` that raises it, so retrying that pair would succeed and lose the error. With
    the exception in hand the send path reports it once and moves on (SEAMS.md, amendment 3 of ``core``).
    """
    sendto = sock.sendto
    send = sock.send
    index = start
    try:
        for data, dest in pairs if start == 0 else itertools.islice(pairs, start, None):
            if dest is None:
                send(data)
            else:
                sendto(data, dest)
            index += 1
    except Exception as exc:  # any failure: the caller routes it, or retries this pair through sendto
        return index, exc
    return index, None


#: The compiled batch backend with :func:`send_pairs`'s contract (``udpio._core.send_pairs``: ``sendmmsg(2)``,
#: consecutive pairs to one destination joined into GSO runs), used instead of :func:`pairs_until_error`;
#: ``None`` on the pure-Python path (``udpio.IO_CORE``).
BACKEND: Callable[..., int] | None = _io_core.send_pairs


class SendPath(SourcedSends):
    """Queue, water marks, destinations, GSO and counters of one transport's sends (see the module doc).

    The transport hands in what it owns: ``on_error(exc)`` routes a send error it has counted (report it,
    or close the transport if the socket is gone); ``pause``/``resume`` call the protocol's
    ``pause_writing``/``resume_writing``; ``flushed()`` is called when a closing path has sent its queue.
    Not thread-safe (the loop's thread only), like the transport.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        counters: Counters,
        destinations: Destinations,
        *,
        buffer_limit: int,
        on_error: Callable[[OSError], None],
        pause: Callable[[], None],
        resume: Callable[[], None],
        flushed: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fileno = sock.fileno()
        self._family = sock.family
        self._counters = counters
        self._destinations = destinations
        self._ok = destinations.cache  # the same set: the hot path's lookup is inlined below
        self._max_payload = max_payload(sock.family)
        self._buffer: collections.deque[tuple[bytes, Address | _Sourced | None]] = collections.deque()
        self._buffer_size = 0
        self._buffer_limit = buffer_limit
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._paused = False
        self._closing = False
        self._aborted = False
        self._gso: bool | None = None  # probed on the first send_many or compiled batch
        self._on_error = on_error
        self._pause = pause
        self._resume = resume
        self._flushed = flushed
        self._backend = BACKEND
        self._sources = {}  # SourcedSends' state
        self._dual_stack = None

    # -- state -------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes waiting in the queue."""
        return self._buffer_size

    @property
    def limits(self) -> tuple[int, int]:
        """``(low, high)`` water marks."""
        return (self._low_water, self._high_water)

    def set_limits(self, high: int | None, low: int | None) -> None:
        """Set the water marks as asyncio does (``low`` defaults to ``high // 4``), at most ``buffer_limit``."""
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise InvalidArgumentError("write buffer limits", "0 <= low <= high", (low, high))
        if high > self._buffer_limit:
            raise InvalidArgumentError("high water mark", f"at most buffer_limit={self._buffer_limit}", high)
        self._high_water, self._low_water = high, low
        self._maybe_pause()

    def close(self) -> bool:
        """Accept no more sends; what is queued still goes out. ``True`` when nothing is queued."""
        self._closing = True
        return not self._buffer

    def abort(self) -> None:
        """Accept no more sends and drop the queue, counted in ``dropped_on_close``; unregister the writer."""
        self._closing = True
        if self._aborted:
            return
        self._aborted = True
        if self._buffer:
            self._counters.dropped_on_close += len(self._buffer)
            self._buffer.clear()
            self._buffer_size = 0
            self._loop.remove_writer(self._fileno)

    # -- one datagram --------------------------------------------------------------------------------

    def sendto(self, data: Buffer, addr: Any = None, *, source: Source | None = None) -> None:
        """One datagram: sent now when the kernel has room and nothing is queued, else queued (see the
        transport's ``sendto`` for the contract)."""
        if source is not None:
            self._sendto_from(data, addr, source)
            return
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        size = len(data) if type(data) is bytes else _nbytes(data)
        if size > self._max_payload:
            raise DatagramTooLargeError(size, self._max_payload, family_name(self._family))
        try:  # the cache, inlined: a hit needs an exact-int port (see _destinations.py)
            dest = addr if addr in self._ok and type(addr[1]) is int else self._destinations.check(addr)
        except TypeError:  # unhashable (a list): refused by name
            dest = self._destinations.check(addr)
        if self._buffer:
            self._queue(bytes(data), dest, size)
            return
        try:
            if dest is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, dest)
        except (BlockingIOError, InterruptedError):
            self._queue(bytes(data), dest, size)
        except OSError as exc:
            self._counters.send_errors += 1
            self._on_error(exc)
        except TypeError as exc:  # the socket module refused a field of a cached address (a float flowinfo)
            raise InvalidAddressError("addr", "a (host, port) tuple of a str and ints", addr) from exc
        else:
            self._counters.datagrams_out += 1
            self._counters.bytes_out += size

    def sendto_or_raise(self, data: Buffer, addr: Any = None) -> None:
        """As :meth:`sendto`, but what the kernel refuses is counted in ``send_errors`` and raised to the
        caller instead of routed to ``error_received`` (``EAGAIN`` still queues): a datagram too large for
        the family is refused at once with the kernel's own ``OSError(EMSGSIZE)``."""
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        size = len(data) if type(data) is bytes else _nbytes(data)
        if size > self._max_payload:
            self._counters.send_errors += 1
            too_large = DatagramTooLargeError(size, self._max_payload, family_name(self._family))
            raise OSError(errno.EMSGSIZE, str(too_large))
        try:  # the cache, inlined: a hit needs an exact-int port (see _destinations.py)
            dest = addr if addr in self._ok and type(addr[1]) is int else self._destinations.check(addr)
        except TypeError:  # unhashable (a list): refused by name
            dest = self._destinations.check(addr)
        if self._buffer:
            self._queue(bytes(data), dest, size)
            return
        try:
            if dest is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, dest)
        except (BlockingIOError, InterruptedError):
            self._queue(bytes(data), dest, size)
        except OSError:
            self._counters.send_errors += 1
            raise
        except TypeError as exc:  # the socket module refused a field of a cached address (a float flowinfo)
            raise InvalidAddressError("addr", "a (host, port) tuple of a str and ints", addr) from exc
        else:
            self._counters.datagrams_out += 1
            self._counters.bytes_out += size

    def _queue(self, data: bytes, dest: Address | _Sourced | None, size: int) -> None:
        """Queue one datagram behind the others (the writer is registered with the first). Once the path is
        closing (a callback closed it during the call under way) the datagram is counted, never queued."""
        if self._closing:
            self._counters.dropped_on_close += 1
            return
        if self._buffer_size + size > self._buffer_limit:
            self._counters.dropped_send_buffer += 1
            return
        if not self._buffer:
            self._loop.add_writer(self._fileno, self._write_ready)
        self._buffer.append((data, dest))
        self._buffer_size += size
        self._maybe_pause()

    def _write_ready(self) -> None:
        buffer = self._buffer
        sock = self._sock
        counters = self._counters
        while buffer:
            data, dest = buffer[0]
            try:
                if dest is None:
                    sock.send(data)
                elif type(dest) is _Sourced:
                    _sendmsg_from(sock, data, dest.address, dest.ancillary)
                else:
                    sock.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                buffer.popleft()
                self._buffer_size -= len(data)
                counters.send_errors += 1
                self._on_error(exc)  # may close or abort the transport
                if self._aborted:
                    return
                continue
            buffer.popleft()
            self._buffer_size -= len(data)
            counters.datagrams_out += 1
            counters.bytes_out += len(data)
        self._loop.remove_writer(self._fileno)
        self._maybe_resume()
        if self._closing and not self._aborted and not self._buffer:
            self._flushed()

    def _maybe_pause(self) -> None:
        if self._buffer_size > self._high_water and not self._paused:
            self._paused = True
            self._pause()

    def _maybe_resume(self) -> None:
        if self._paused and self._buffer_size <= self._low_water:
            self._paused = False
            self._resume()

    def _each(self, pairs: Iterable[tuple[Buffer, Any]]) -> None:
        """:meth:`sendto` each pair in order; once a callback has closed the path during the call, the rest
        are counted in ``dropped_on_close`` (the slow paths of the batch calls)."""
        for data, addr in pairs:
            if self._closing:
                self._counters.dropped_on_close += 1
            else:
                self.sendto(data, addr)

    # -- many datagrams ------------------------------------------------------------------------------

    def send_batch(self, batch: Iterable[tuple[Buffer, Any]] | Iterable[tuple[Buffer, Any, Source | None]]) -> None:
        """``(data, addr)`` pairs in order, as :meth:`sendto` each, through :func:`send_pairs`; or
        ``(data, addr, source)`` triples (all of them, when the first is one), as ``sendto(data, addr,
        source=source)`` each.

        Every pair is checked (destination, size) before the first is sent, so a bad one raises with
        nothing of the batch sent.
        """
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        pairs: list[Any] = batch if type(batch) is list else list(batch)
        if pairs and len(pairs[0]) == 3:
            self._send_batch_from(pairs)
            return
        if len(pairs) == 1:
            # One reply (request/response traffic): sendto makes the same checks with less around them.
            data, addr = pairs[0]
            self.sendto(data, addr)
            return
        if self._buffer or self._destinations.peer is not None:
            # Behind a queue each one queues in order; a connected socket takes no address: one by one.
            self._each(pairs)
            return
        ok = self._ok
        top = self._max_payload
        total = 0
        for data, addr in pairs:
            try:
                if addr not in ok or type(addr[1]) is not int:
                    self._destinations.check(addr)
            except TypeError:  # an unhashable address (a list)
                self._destinations.check(addr)
            size = len(data) if type(data) is bytes else _nbytes(data)
            if size > top:
                raise DatagramTooLargeError(size, top, family_name(self._family))
            total += size
        count = len(pairs)
        stop, exc = self._send_pairs(pairs, 0)
        counters = self._counters
        if stop == count:  # the usual case: every pair went
            counters.datagrams_out += count
            counters.bytes_out += total
            return
        start = 0
        while True:
            counters.datagrams_out += stop - start
            counters.bytes_out += sum(_nbytes(data) for data, _ in pairs[start:stop])
            if stop == count:
                return
            data, addr = pairs[stop]
            if isinstance(exc, OSError) and not isinstance(exc, (BlockingIOError, InterruptedError)):
                # Not sent, and the error was consumed by that call: report it once, do not resend.
                counters.send_errors += 1
                self._on_error(exc)
            else:
                # Kernel full (it queues), or anything else (a named error): the ordinary path decides.
                self.sendto(data, addr)
            if self._closing or self._buffer:
                # Closed under us (EBADF, or error_received / pause_writing closed it): the rest are counted;
                # or the kernel is full: the rest queue behind it, in order.
                for rest, rest_addr in pairs[stop + 1 :]:
                    self._queue(bytes(rest), rest_addr, _nbytes(rest))
                return
            start = stop + 1
            stop, exc = self._send_pairs(pairs, start)

    def _send_pairs(self, pairs: list[tuple[Buffer, Any]], start: int) -> tuple[int, Exception | None]:
        # One pair left: a plain sendto is one system call, where the compiled backend makes two (it asks
        # poll(2) whether an error is pending before its sendmmsg, see SEAMS.md, core's amendment 3).
        if BACKEND is None or len(pairs) - start < 2:
            return pairs_until_error(self._sock, pairs, start)
        return BACKEND(self._sock, pairs, start, gso=self._gso_probed()), None

    def _gso_probed(self) -> bool:
        """Whether the compiled backend may send GSO runs (asked of the kernel once per transport)."""
        if self._gso is None:  # GSO runs only where the kernel has UDP_SEGMENT
            try:
                self._gso = _sockopts.gso_supported(self._sock)
            except OSError:  # the socket failed under us: the sends below meet the error and route it
                self._gso = False
        return self._gso

    def send_many(self, datagrams: Sequence[Buffer], addr: Any = None) -> None:
        """Several datagrams to one destination: runs of equal sizes as one GSO ``sendmsg`` each where the
        kernel supports ``UDP_SEGMENT``, else one :meth:`sendto` each."""
        if self._closing:
            raise EndpointClosedError("UDP endpoint")
        dest = self._destinations.check(addr)
        if self._gso is None:
            self._gso = _sockopts.gso_supported(self._sock)
        if not self._gso or self._buffer:
            self._each((datagram, dest) for datagram in datagrams)
            return
        for run, segment in gso_runs(datagrams, self._max_payload, family_name(self._family)):
            if self._closing:  # closed by a callback of an earlier run: this run is counted, not sent
                self._counters.dropped_on_close += len(run)
            elif len(run) == 1 or self._buffer:
                self._each((datagram, dest) for datagram in run)
            else:
                self._send_run(run, segment, dest)

    def _send_run(self, run: list[Buffer], segment: int, dest: Address | None) -> None:
        payload = b"".join(run)
        try:
            if dest is None:
                self._sock.sendmsg([payload], [_sockopts.gso_cmsg(segment)])
            else:
                self._sock.sendmsg([payload], [_sockopts.gso_cmsg(segment)], 0, dest)
        except (BlockingIOError, InterruptedError):
            for datagram in run:  # counted, not queued, once pause_writing closed the path
                self._queue(bytes(datagram), dest, _nbytes(datagram))
        except OSError as exc:
            if exc.errno in _sockopts.OPTION_MISSING or exc.errno == errno.EIO:
                # The device cannot segment (EIO from drivers without GSO): stop trying, send one by one.
                self._gso = False
                self._each((datagram, dest) for datagram in run)
            else:
                self._counters.send_errors += 1
                self._on_error(exc)
        else:
            self._counters.datagrams_out += len(run)
            self._counters.bytes_out += len(payload)


def gso_runs(
    datagrams: Iterable[Buffer], max_payload: int, fam: str
) -> Iterable[tuple[list[Buffer], int]]:
    """Group datagrams into GSO runs: equal sizes, at most the segment limits, the last may be shorter."""
    run: list[Buffer] = []
    segment = 0
    total = 0
    last = 0  # size of run[-1]
    for datagram in datagrams:
        size = len(datagram) if type(datagram) is bytes else _nbytes(datagram)
        if size > max_payload:
            raise DatagramTooLargeError(size, max_payload, fam)
        if run and (size > segment or len(run) >= GSO_MAX_SEGMENTS or total + size > GSO_MAX_BYTES or last < segment):
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
        last = size
    if run:
        yield run, segment
