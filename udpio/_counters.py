"""Per-endpoint counters: what came in, what went out, and every datagram dropped, by reason."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys


@dataclasses.dataclass(slots=True)
class Counters:
    """Running totals for one endpoint, updated by its transport (not thread-safe: read them on the loop).

    Drops are split by reason so a number that grows says why:

    * ``dropped_oversize``: larger than the endpoint's ``max_size``, never delivered;
    * ``dropped_send_buffer``: the write buffer was at its hard limit (a peer or the kernel too slow);
    * ``dropped_queue``: the high-level endpoint's bounded receive queue was full;
    * ``dropped_policy``: refused by a policy (rate limits, reflection guards), see ``policy_drops``;
    * ``dropped_on_close``: still buffered when the endpoint was aborted;
    * ``kernel_drops``: dropped by the kernel because the socket's receive buffer was full (``SO_RXQ_OVFL``
      or ``/proc/net/udp``; 0 where neither exists).
    """

    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    dropped_oversize: int = 0
    dropped_send_buffer: int = 0
    dropped_queue: int = 0
    dropped_policy: int = 0
    dropped_on_close: int = 0
    kernel_drops: int = 0
    errors_received: int = 0
    send_errors: int = 0
    handler_errors: int = 0
    #: Receives that carried several datagrams coalesced by UDP GRO (each counted in ``datagrams_in`` too).
    gro_batches: int = 0
    policy_drops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Every datagram udpio or the kernel dropped, all reasons together."""
        return (
            self.dropped_oversize
            + self.dropped_send_buffer
            + self.dropped_queue
            + self.dropped_policy
            + self.dropped_on_close
            + self.kernel_drops
        )

    def count_policy_drop(self, reason: str) -> None:
        """Count one datagram refused by a policy, under ``reason`` (a ``udpio.DropReason`` is kept as its plain
        string value, so the dict prints, compares and serialises as strings)."""
        self.dropped_policy += 1
        key = str(reason)
        self.policy_drops[key] = self.policy_drops.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """A plain dict copy of every counter (``policy:<reason>`` keys for the policy breakdown)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy_drops"}
        out["dropped"] = self.dropped
        for reason, count in sorted(self.policy_drops.items()):
            out[f"policy:{reason}"] = count
        return out


def proc_net_drops(sock: socket.socket) -> int | None:
    """The kernel's drop count for ``sock`` from ``/proc/net/udp{,6}`` (Linux), ``None`` elsewhere.

    The last column of proc(5)'s ``/proc/net/udp`` is the per-socket drop count; rows are found by inode.
    Costs a file read, so it is done when counters are read, never per datagram.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    path = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(path, encoding="ascii") as table:
            next(table)  # header row
            for line in table:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == inode:
                    return int(fields[-1])
    except OSError:
        return None
    return None
