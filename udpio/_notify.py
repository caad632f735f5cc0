"""The tutorial's multicast scenario, rebuilt: one sends b"Notify" to a group, every member answers
b"Acknowledge" by unicast to the sender.

:class:`NotifyLogic` is the whole behaviour with no networking: fed ``(data, addr, now)`` it returns what to
send and what happened. :class:`NotifyProtocol` pumps it on any datagram transport. The tutorial compared
the received bytes with the str ``'Notify'`` and so never answered; here bytes are compared with bytes.

A member answers whoever a Notify *claims* to come from, and its Acknowledge (11 bytes) is larger than the
Notify (6): with N members on a group, one forged Notify makes N Acknowledges land on the forged source. So a
member answers only what a :class:`~udpio.SafetyPolicy` admits (``notify_policy()`` by default: the
reflection guard, no multicast/broadcast/mapped-loopback sources, and low rate limits), which caps what a
victim can receive from each member at :data:`NOTIFY_SOURCE_RATE` Acknowledges a second, whatever an attacker
sends; the refusals are :class:`NotifyRefused` events (and ``policy_drops`` on udpio's transport).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeAlias

from . import _sockopts
from ._addr import Address, LocalAddress, format_address, is_wildcard
from ._counters import Counters
from ._errors import InvalidArgumentError
from ._options import check_optional_bool
from ._policy import DropReason, PolicyArg, SafetyPolicy
from ._transport import DatagramTransport

logger = logging.getLogger("udpio")

#: The tutorial's messages.
NOTIFY = b"Notify"
ACKNOWLEDGE = b"Acknowledge"
#: Events kept by a :class:`NotifyProtocol` without an ``on_event`` callback (oldest dropped beyond).
MAX_EVENTS = 1024
#: A member's default limits, per source and in total (Acknowledges a second, burst one second's worth). A
#: Notify is an occasional event, so 10 a second from one sender is far above real use, and a forged victim
#: gets at most 110 bytes a second from each member (the echo server's 200/s would allow 2.2 kB/s).
NOTIFY_SOURCE_RATE = 10.0
NOTIFY_GLOBAL_RATE = 1000.0


def notify_policy() -> SafetyPolicy:
    """The policy a member uses by default: :class:`~udpio.SafetyPolicy`'s guards, with the member's lower
    rates (:data:`NOTIFY_SOURCE_RATE`, :data:`NOTIFY_GLOBAL_RATE`; loopback exempt, as for echo)."""
    return SafetyPolicy(rate=NOTIFY_SOURCE_RATE, global_rate=NOTIFY_GLOBAL_RATE)


def _member_policy(policy: object) -> SafetyPolicy | None:
    if isinstance(policy, str) and policy == "default":
        return notify_policy()
    if policy is None or isinstance(policy, SafetyPolicy):
        return policy
    raise InvalidArgumentError("policy", "'default', None or a udpio.SafetyPolicy", policy)


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
class NotifyRefused:
    """A Notify from ``sender`` was not answered: the member's policy refused it for ``reason``."""

    sender: Address
    reason: DropReason
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


NotifyEvent: TypeAlias = (
    NotifySent | NotifyReceived | AcknowledgeSent | NotifyRefused | Acknowledged | DatagramIgnored
)


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyStep:
    """What one input asks for: datagrams to send (``(payload, address)``) and the events it caused."""

    sends: tuple[tuple[bytes, Address], ...] = ()
    events: tuple[NotifyEvent, ...] = ()


class NotifyLogic:
    """The Notify/Acknowledge behaviour, without sockets or clocks.

    ``answer``: answer each Notify with an Acknowledge to its sender (a member); off, only count them.
    ``policy``: which Notifies may be answered: ``"default"`` (``notify_policy()``), a
    :class:`~udpio.SafetyPolicy` of your own (one per member), or ``None`` (answer all: lab use only).
    Counters: ``notifies_received``, ``acknowledges_sent``, ``refused``, ``acknowledgements``,
    ``ignored``.
    """

    def __init__(
        self,
        *,
        answer: bool = True,
        notify: bytes = NOTIFY,
        acknowledge: bytes = ACKNOWLEDGE,
        policy: PolicyArg = "default",
    ) -> None:
        if not isinstance(notify, bytes) or not isinstance(acknowledge, bytes) or notify == acknowledge:
            raise InvalidArgumentError("notify and acknowledge", "two different bytes values", (notify, acknowledge))
        self.answer = answer
        self.notify_message = notify
        self.acknowledge_message = acknowledge
        self.policy: SafetyPolicy | None = _member_policy(policy)
        self.notifies_sent = 0
        self.notifies_received = 0
        self.acknowledges_sent = 0
        self.refused = 0
        self.acknowledgements = 0
        self.ignored = 0

    def bind(self, address: object, *, dual_stack: bool = False) -> None:
        """Tell the policy about the member's socket (see :meth:`udpio.SafetyPolicy.bind`). Members share
        their port with the notifier by design (the tutorial's), so the own-port rule is not applied: a member
        cannot loop with another (an Acknowledge is never answered)."""
        if self.policy is not None:
            self.policy.bind(address, dual_stack=dual_stack, own_port=False)

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
            if self.policy is not None:
                reason = self.policy.admit(data, addr, now, reply=self.acknowledge_message)
                if reason is not None:
                    self.refused += 1
                    return NotifyStep((), (received, NotifyRefused(addr, reason, now)))
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
    sends more. ``answer``: answer Notify with Acknowledge, as far as ``policy`` allows (see
    :class:`NotifyLogic`; refusals are also counted in the transport's ``policy_drops``). Events
    (:class:`NotifySent`, :class:`NotifyReceived`, :class:`AcknowledgeSent`, :class:`NotifyRefused`,
    :class:`Acknowledged`, :class:`DatagramIgnored`) go to ``on_event``, or without it into ``events``
    (the last ``MAX_EVENTS``).

    On a shared port the Notify this endpoint sends comes back to it too, and it answers it, as the
    tutorial's member did; bind the sender to its own port to avoid that.

    ``reply_from_local``: send each Acknowledge from the address its Notify was sent to (for a Notify sent
    to a group: the member's address the kernel answers that sender from); ``None`` (default): when bound to
    the wildcard address, as members are, on udpio's transport. See :class:`~udpio.LocalAddress`.
    """

    #: Bound by ``connection_made`` when Acknowledges leave from each Notify's local address (udpio's
    #: transport then calls it instead of ``datagram_received``).
    datagram_received_on: Callable[[bytes, Address, LocalAddress], None] | None = None

    def __init__(
        self,
        *,
        notify_to: Address | None = None,
        answer: bool = True,
        on_event: Callable[[NotifyEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        notify: bytes = NOTIFY,
        acknowledge: bytes = ACKNOWLEDGE,
        policy: PolicyArg = "default",
        reply_from_local: bool | None = None,
    ) -> None:
        self.logic = NotifyLogic(answer=answer, notify=notify, acknowledge=acknowledge, policy=policy)
        self.reply_from_local = check_optional_bool(reply_from_local, "reply_from_local")
        self.transport: asyncio.DatagramTransport | None = None
        self._counters: Counters | None = None
        self.events: collections.deque[NotifyEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._notify_to = notify_to
        self._on_event = on_event if on_event is not None else self.events.append
        self._clock = clock
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport, bind the policy to its socket; send the first Notify when ``notify_to`` was given."""
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport
        counters = transport.get_extra_info("counters")
        self._counters = counters if isinstance(counters, Counters) else None
        sockname = transport.get_extra_info("sockname")
        self.logic.bind(sockname, dual_stack=_sockopts.is_dual_stack(transport.get_extra_info("socket")))
        wanted = is_wildcard(sockname) if self.reply_from_local is None else self.reply_from_local
        on = wanted and isinstance(transport, DatagramTransport)
        self.datagram_received_on = self._received_on if on else None
        if self._notify_to is not None:
            self.notify(self._notify_to)

    def notify(self, to: Address) -> None:
        """Send a Notify to ``to`` now."""
        self._apply(self.logic.notify(to, self._clock()))

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed, send, report."""
        self._apply(self.logic.feed(data, addr, self._clock()))

    def _received_on(self, data: bytes, addr: Address, local: LocalAddress) -> None:
        """Feed, send from the address the datagram came to, report."""
        self._apply(self.logic.feed(data, addr, self._clock()), local)

    def _apply(self, step: NotifyStep, source: LocalAddress | None = None) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            for payload, addr in step.sends:
                if source is None:
                    transport.sendto(payload, addr)
                else:
                    transport.sendto(payload, addr, source=source)  # type: ignore[call-arg]  # udpio's transport
        for event in step.events:
            if isinstance(event, NotifyRefused) and self._counters is not None:
                self._counters.count_policy_drop(event.reason)
            self._on_event(event)

    def error_received(self, exc: Exception) -> None:
        """A send failed or an ICMP error arrived: logged, the member keeps serving."""
        logger.debug("udpio: Notify/Acknowledge endpoint error: %r", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve ``closed``."""
        if not self.closed.done():
            self.closed.set_result(exc)

    def __repr__(self) -> str:
        where = format_address(self.transport.get_extra_info("sockname")) if self.transport else "unbound"
        return f"<udpio.NotifyProtocol {where} answered={self.logic.acknowledges_sent}>"
