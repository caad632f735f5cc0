"""The tutorial's multicast scenario, rebuilt: one sends b"Notify" to a group, every member answers
b"Acknowledge" by unicast to the sender.

:class:`NotifyLogic` is the whole behaviour with no networking: fed ``(data, addr, now)`` it returns what to
send and what happened. :class:`NotifyProtocol` pumps it on any datagram transport. The tutorial compared
the received bytes with the str ``'Notify'`` and so never answered; here bytes are compared with bytes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeAlias

from ._addr import Address, format_address
from ._errors import InvalidArgumentError

logger = logging.getLogger("udpio")

#: The tutorial's messages.
NOTIFY = b"Notify"
ACKNOWLEDGE = b"Acknowledge"
#: Events kept by a :class:`NotifyProtocol` without an ``on_event`` callback (oldest dropped beyond).
MAX_EVENTS = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class NotifySent:
    """A Notify was sent to ``to`` (a group and port)."""

    to: Address
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyReceived:
    """A Notify arrived from ``sender``."""

    sender: Address
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class AcknowledgeSent:
    """This member answered a Notify with an Acknowledge to ``to``."""

    to: Address
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Acknowledged:
    """A member (``member``) acknowledged a Notify this endpoint sent."""

    member: Address
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class DatagramIgnored:
    """A datagram that is neither Notify nor Acknowledge arrived (``size`` bytes from ``sender``)."""

    sender: Address
    size: int
    at: float


NotifyEvent: TypeAlias = NotifySent | NotifyReceived | AcknowledgeSent | Acknowledged | DatagramIgnored


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyStep:
    """What one input asks for: datagrams to send (``(payload, address)``) and the events it caused."""

    sends: tuple[tuple[bytes, Address], ...] = ()
    events: tuple[NotifyEvent, ...] = ()


class NotifyLogic:
    """The Notify/Acknowledge behaviour, without sockets or clocks.

    ``answer``: answer each Notify with an Acknowledge to its sender (a member); off, only count them.
    Counters: :attr:`notifies_received`, :attr:`acknowledges_sent`, :attr:`acknowledgements`,
    :attr:`ignored`.
    """

    def __init__(self, *, answer: bool = True, notify: bytes = NOTIFY, acknowledge: bytes = ACKNOWLEDGE) -> None:
        if not isinstance(notify, bytes) or not isinstance(acknowledge, bytes) or notify == acknowledge:
            raise InvalidArgumentError("notify and acknowledge", "two different bytes values", (notify, acknowledge))
        self.answer = answer
        self.notify_message = notify
        self.acknowledge_message = acknowledge
        self.notifies_sent = 0
        self.notifies_received = 0
        self.acknowledges_sent = 0
        self.acknowledgements = 0
        self.ignored = 0

    def notify(self, to: Address, now: float) -> NotifyStep:
        """Send a Notify to ``to`` (the group and port)."""
        self.notifies_sent += 1
        return NotifyStep(((self.notify_message, to),), (NotifySent(to, now),))

    def feed(self, data: bytes, addr: Address, now: float) -> NotifyStep:
        """One datagram from the network (untrusted: anything but the two exact messages is ignored)."""
        if data == self.notify_message:
            self.notifies_received += 1
            received = NotifyReceived(addr, now)
            if not self.answer:
                return NotifyStep((), (received,))
            self.acknowledges_sent += 1
            return NotifyStep(((self.acknowledge_message, addr),), (received, AcknowledgeSent(addr, now)))
        if data == self.acknowledge_message:
            self.acknowledgements += 1
            return NotifyStep((), (Acknowledged(addr, now),))
        self.ignored += 1
        return NotifyStep((), (DatagramIgnored(addr, len(data), now),))


class NotifyProtocol(asyncio.DatagramProtocol):
    """A Notify/Acknowledge member on any datagram transport (use it with :func:`udpio.listen_multicast`).

    ``notify_to``: send a Notify there (``(group, port)``) as soon as the endpoint is up; :meth:`notify`
    sends more. ``answer``: answer Notify with Acknowledge. Events (:class:`NotifySent`,
    :class:`NotifyReceived`, :class:`AcknowledgeSent`, :class:`Acknowledged`, :class:`DatagramIgnored`) go to
    ``on_event``, or without it into :attr:`events` (the last :data:`MAX_EVENTS`).

    On a shared port the Notify this endpoint sends comes back to it too, and it answers it, as the
    tutorial's member did; bind the sender to its own port to avoid that.
    """

    def __init__(
        self,
        *,
        notify_to: Address | None = None,
        answer: bool = True,
        on_event: Callable[[NotifyEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        notify: bytes = NOTIFY,
        acknowledge: bytes = ACKNOWLEDGE,
    ) -> None:
        self.logic = NotifyLogic(answer=answer, notify=notify, acknowledge=acknowledge)
        self.transport: asyncio.DatagramTransport | None = None
        self.events: collections.deque[NotifyEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._notify_to = notify_to
        self._on_event = on_event if on_event is not None else self.events.append
        self._clock = clock
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; send the first Notify when ``notify_to`` was given."""
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport
        if self._notify_to is not None:
            self.notify(self._notify_to)

    def notify(self, to: Address) -> None:
        """Send a Notify to ``to`` now."""
        self._apply(self.logic.notify(to, self._clock()))

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed, send, report."""
        self._apply(self.logic.feed(data, addr, self._clock()))

    def _apply(self, step: NotifyStep) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            for payload, addr in step.sends:
                transport.sendto(payload, addr)
        for event in step.events:
            self._on_event(event)

    def error_received(self, exc: Exception) -> None:
        """A send failed or an ICMP error arrived: logged, the member keeps serving."""
        logger.debug("udpio: Notify/Acknowledge endpoint error: %r", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve :attr:`closed`."""
        if not self.closed.done():
            self.closed.set_result(exc)

    def __repr__(self) -> str:
        where = format_address(self.transport.get_extra_info("sockname")) if self.transport else "unbound"
        return f"<udpio.NotifyProtocol {where} answered={self.logic.acknowledges_sent}>"
