"""The protocol base for a connected endpoint: :class:`ConnectedProtocol`, and :class:`PeerRefused`, the event
it reports when the peer refuses a datagram (the tutorial's "connected" mode).

A plain :class:`asyncio.DatagramProtocol` subclass: it runs on udpio's transport, on the loop's own
``create_datagram_endpoint`` transport, and on Twisted through :mod:`udpio.compat`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from ._addr import Address

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
