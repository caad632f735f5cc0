"""Every size and count limit of udpio, each written once, with the reason for its value.

Protocol limits come from the headers (RFC 768, RFC 791, RFC 8200); the others are udpio's own bounds
(habit 11 of STYLE.md: everything bounded, with a named constant). :class:`ReceiveLimits` is what a
receive strategy is told about sizes; it is built here so that every strategy applies the same rule.
"""

from __future__ import annotations

import dataclasses
import socket

#: The largest C ``int``: what a file descriptor or an ``SO_RCVBUF``/``SO_SNDBUF`` value can be.
C_INT_MAX = 2**31 - 1
#: Largest port number: ports are 16-bit (RFC 768).
MAX_PORT = 65535
#: Largest UDP payload over IPv4: 65535 (IPv4 total length) - 20 (IP header) - 8 (UDP header).
MAX_PAYLOAD_IPV4 = 65507
#: Largest UDP payload over IPv6 without jumbograms: 65535 (payload length) - 8 (UDP header); RFC 2675.
MAX_PAYLOAD_IPV6 = 65527
#: Receive buffer for one ``recvfrom``/``recvmsg``: the largest IPv6 payload fits, so nothing is ever
#: truncated when no ``max_size`` is set, and a GRO train (at most 64 KiB of payload) fits too.
RECV_BUFFER_SIZE = 65536

#: Datagrams read per readiness event before yielding to the loop: enough to amortise the selector's cost
#: (measured: 256 reaches the same rate as 2048 with 64-byte datagrams) and small enough that one flooded
#: socket cannot starve timers and other sockets for more than about half a millisecond.
MAX_DATAGRAMS_PER_EVENT = 256
#: Batches handed to ``datagrams_received`` hold about this many bytes (a read event may deliver several).
#: Holding more costs fresh memory for every datagram: in-process, with 8 KiB datagrams, unbounded lists
#: (2 MiB) took 7.9 us per datagram against about 2 us for 64 KiB ones. And for request/response traffic a
#: reply waits until its batch is complete: with 8 datagrams of 8 KiB in flight, 64 KiB batches made the
#: benchmark's echo fall into lock step at 0.73-0.92x Twisted, 16 KiB ones ran at 1.18-1.19x (flood sink
#: and 64/1200-byte echo unchanged within the noise). At 64 bytes the 256-datagram count bound comes first.
BATCH_BYTES = 16 * 1024

#: GSO: at most this many segments per ``sendmsg`` (UDP_MAX_SEGMENTS in include/linux/udp.h was 64 before
#: Linux 6.x raised it to 128; 64 works everywhere).
GSO_MAX_SEGMENTS = 64
#: GSO: the kernel refuses a super-datagram above the IPv4 maximum payload, on either family.
GSO_MAX_BYTES = MAX_PAYLOAD_IPV4

#: asyncio's own default write-buffer high-water mark (``selector_events``), kept so protocols see the same;
#: the low mark defaults to a quarter of it, as in asyncio.
DEFAULT_HIGH_WATER = 64 * 1024
#: Beyond this many buffered bytes a datagram is dropped and counted instead of queued (UDP may lose
#: datagrams; memory must stay bounded whatever a protocol that ignores ``pause_writing`` does).
DEFAULT_BUFFER_LIMIT = 1024 * 1024
#: Validated destination addresses a transport remembers so the hot path does not re-parse them (bounded:
#: cleared when full, so spoofed-looking destinations cannot grow it).
ADDRESS_CACHE_SIZE = 1024
#: Local addresses (``IP_PKTINFO`` / ``IPV6_PKTINFO`` control messages) remembered already parsed, per family,
#: and their ``sendmsg`` control messages per transport: one per address and interface a server answers on
#: (its service addresses), so a few dozen in practice; cleared when full.
LOCAL_ADDRESS_CACHE_SIZE = 128


def max_payload(family: int) -> int:
    """The largest datagram a socket of ``family`` can send or receive."""
    return MAX_PAYLOAD_IPV6 if family == socket.AF_INET6 else MAX_PAYLOAD_IPV4


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiveLimits:
    """What a receive strategy may read and deliver; one rule for every strategy: a datagram longer than
    :attr:`max_size` is dropped and counted in ``dropped_oversize``.

    * ``recv_size``: bytes asked of the kernel per receive: ``max_size + 1`` when a ``max_size`` was set
      (one byte more tells an oversized datagram from one that fits exactly), else :data:`RECV_BUFFER_SIZE`;
    * ``max_size``: the largest datagram delivered (``recv_size - 1``);
    * ``per_event``: datagrams read per readiness event at most;
    * ``batch_bytes``: a list handed to ``datagrams_received`` is closed once it holds this many bytes.
    """

    recv_size: int
    max_size: int
    per_event: int = MAX_DATAGRAMS_PER_EVENT
    batch_bytes: int = BATCH_BYTES

    @classmethod
    def for_max_size(cls, max_size: int | None) -> ReceiveLimits:
        """The limits of an endpoint that delivers datagrams up to ``max_size`` bytes (``None``: any size)."""
        recv_size = RECV_BUFFER_SIZE if max_size is None else max_size + 1
        return cls(recv_size=recv_size, max_size=recv_size - 1)
