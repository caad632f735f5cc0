"""Ready asyncio protocols for the tutorial's modes, and the periodic sender rebuilt as a task.

These are plain :class:`asyncio.DatagramProtocol` subclasses: they run on udpio's transport, on the loop's
own ``create_datagram_endpoint`` transport, and on Twisted through :mod:`udpio.compat`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable

from ._addr import Address, format_address

logger = logging.getLogger("udpio")


@dataclasses.dataclass(frozen=True, slots=True)
class PeerRefused:
    """The connected peer answered with ICMP port-unreachable (nobody listens there, yet)."""

    peer: Address | None
    error: ConnectionRefusedError


class ConnectedProtocol(asyncio.DatagramProtocol):
    """Base for a protocol on a connected endpoint (:func:`udpio.connect`).

    ICMP port-unreachable from the peer arrives as :meth:`connection_refused` (Twisted's
    ``connectionRefused``) instead of a generic ``error_received``; the endpoint stays open and usable,
    so a peer that starts listening later is reached by the next send. Other errors go to
    :meth:`error_received` as usual.
    """

    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; send with ``self.transport.sendto(data)``."""
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport

    def error_received(self, exc: Exception) -> None:
        """Route ``ConnectionRefusedError`` to :meth:`connection_refused`; log anything else."""
        if isinstance(exc, ConnectionRefusedError):
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            self.connection_refused(PeerRefused(peer, exc))
        else:
            logger.warning("udpio: error on connected endpoint: %r", exc)

    def connection_refused(self, event: PeerRefused) -> None:
        """Called each time the peer refuses a datagram. Override; the default does nothing."""


def hello_message() -> bytes:
    """The tutorial's periodic message: ``b"hello, i am <timestamp>"``."""
    return f"hello, i am {datetime.datetime.now().isoformat(sep=' ')}".encode()


def start_periodic_sender(
    transport: asyncio.DatagramTransport,
    interval: float = 5.0,
    message: Callable[[], bytes] = hello_message,
    addr: Address | None = None,
) -> asyncio.Task[None]:
    """Send ``message()`` to ``addr`` (``None`` on a connected endpoint) every ``interval`` seconds.

    The tutorial did this from a thread writing to the transport, which is not thread-safe; this is a task
    on the transport's own loop. Cancel the task to stop it; it also ends when the transport closes.
    Must be called from the loop's thread.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")

    async def periodic() -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not transport.is_closing():
            transport.sendto(message(), addr)
            # Scheduled on a fixed grid so the period does not drift by the send's own duration.
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    return asyncio.get_running_loop().create_task(periodic(), name=f"udpio-periodic-{format_address(addr)}")
