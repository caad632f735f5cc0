"""Where a transport's errors go: errno routing at one boundary, and every call into the protocol that may raise.

:class:`ErrorRoutes` is the transport's ``ReceiveSink`` (SEAMS.md) and the send path's error route. It decides,
in one place, which errno closes the endpoint (the socket is gone), which ones are the network's business
(reported to ``error_received`` and counted, never raised), how ICMP errors queued with ``IP_RECVERR`` are read
and reported once, and what happens when a handler raises (counted; logged at a bounded rate, or handed to a
hook a layer on top installed). Nothing a peer sends can make an exception escape from here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from . import _sockopts
from ._addr import format_address
from ._counters import Counters
from ._limits import MAX_DATAGRAMS_PER_EVENT

logger = logging.getLogger("udpio")

#: At most one handler-error log line per this many seconds (the rest are counted and summarised).
LOG_INTERVAL = 5.0

#: Errnos a send can meet that are the network's business, not the program's: reported to
#: ``error_received`` and counted, never raised. ECONNREFUSED: an earlier ICMP port-unreachable on a
#: connected socket (Linux reports it on the next call, udp(7)); ENOBUFS: the device queue is full
#: (Linux, BSD); EMSGSIZE: larger than the path MTU with DF set, or a GSO segment too large;
#: EHOSTUNREACH/ENETUNREACH: no route; EPERM/EACCES: a firewall rule (netfilter), or a broadcast without
#: SO_BROADCAST; EADDRNOTAVAIL: the source address went away.
SEND_ERRORS_REPORTED = frozenset(
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
#: The socket itself is gone (closed underneath the transport): the endpoint is broken.
SOCKET_GONE = frozenset({errno.EBADF, errno.ENOTSOCK})

#: A handler-error hook: ``hook(exc, addr)`` (see ``DatagramTransport.set_handler_error_hook``).
HandlerErrorHook = Callable[[Exception, object], None]


class RateLimitedLog:
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


class ErrorRoutes:
    """The error routes of one transport (see the module doc).

    The transport keeps :attr:`protocol` and :attr:`peer` current and hands in three callables: ``broken(exc)``
    closes the endpoint because its socket failed, ``rearm()`` re-registers the reader after an error (needed
    on uvloop), ``closing()`` says whether the transport is closing.
    """

    def __init__(
        self,
        sock: socket.socket,
        counters: Counters,
        protocol: asyncio.BaseProtocol,
        *,
        broken: Callable[[OSError], None],
        rearm: Callable[[], None],
        closing: Callable[[], bool],
    ) -> None:
        self.counters = counters
        self.protocol = protocol
        self.peer: object = None
        self.hook: HandlerErrorHook | None = None
        self._sock = sock
        self._broken = broken
        self._rearm = rearm
        self._closing = closing
        self._log = RateLimitedLog()

    def receive_error(self, exc: OSError) -> bool:
        """Route a receive error (not EAGAIN/EINTR); ``True`` if the read event must end."""
        if exc.errno in SOCKET_GONE:
            self._broken(exc)
            return True
        # ICMP errors queued on the socket (ECONNREFUSED on a connected socket, and everything with
        # IP_RECVERR): the error is consumed by this call, so reading may go on. With IP_RECVERR the same
        # event also sits on the error queue: report it from there (once), and empty the queue.
        if not self._drain_error_queue():
            self.counters.errors_received += 1
            self.report(exc)
        self._rearm()
        return self._closing()

    def send_failed(self, exc: OSError) -> None:
        """Route a send error (the send path counted it in ``send_errors``)."""
        if exc.errno in SOCKET_GONE:
            self._broken(exc)
            return
        if exc.errno not in SEND_ERRORS_REPORTED:
            logger.debug("udpio: unexpected send error %r on %r", exc, self._sock)
        # With IP_RECVERR an earlier ICMP error fails the next send with its errno (on any socket) and sits on
        # the error queue too: report it once, from the queue; this datagram is counted as not sent.
        if exc.errno not in self._drain_error_queue():
            self.report(exc)
        self._rearm()

    def _drain_error_queue(self) -> list[int]:
        """Read the error queue empty; count and report each ICMP error in it. Returns their errnos."""
        found = _sockopts.read_icmp_errors(self._sock, MAX_DATAGRAMS_PER_EVENT)
        for code in found:
            self.counters.errors_received += 1
            # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError...).
            self.report(OSError(code, os.strerror(code)))
        return found

    def report(self, exc: OSError) -> None:
        """``error_received(exc)``; what the protocol raises there is a handler error."""
        try:
            self.protocol.error_received(exc)  # type: ignore[attr-defined]  # a DatagramProtocol
        except Exception as handler_exc:
            self.handler_failed(handler_exc, self.peer)

    def handler_failed(self, exc: Exception, addr: object) -> None:
        """A handler raised: count it, then the hook if one is set, else a rate-limited log line."""
        self.counters.handler_errors += 1
        if self.hook is not None:
            self.hook(exc, addr)
            return
        self._log(
            "udpio: exception in %s handling datagram from %s (endpoint keeps serving)",
            type(self.protocol).__name__,
            format_address(addr),
            exc=exc,
        )

    def pause_writing(self) -> None:
        """The protocol's ``pause_writing()``, its exceptions routed as handler errors."""
        try:
            self.protocol.pause_writing()
        except Exception as exc:
            self.handler_failed(exc, None)

    def resume_writing(self) -> None:
        """The protocol's ``resume_writing()``, its exceptions routed as handler errors."""
        try:
            self.protocol.resume_writing()
        except Exception as exc:
            self.handler_failed(exc, None)
