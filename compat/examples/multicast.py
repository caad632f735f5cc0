"""Multicast Notify/Acknowledge (the tutorial's fourth script, corrected): join a group, send ``Notify`` to it,
and answer every ``Notify`` with an ``Acknowledge`` sent straight (unicast) to whoever notified.

Corrections: ``listenMulticast`` is spelled right (the tutorial had ``listenMulitcast``); datagrams are bytes
and are compared with bytes (``datagram == 'Notify'`` was never true); everything stays on the loopback
interface (the group is joined on 127.0.0.1 and ``setOutgoingInterface('127.0.0.1')`` is set, and waited for,
before anything is sent), so nothing leaves the machine; the group is an administratively scoped one (RFC 2365)
instead of 224.0.0.1, the all-hosts group; ``--count``/``--duration`` make the script stop by itself.

Run it twice on the same port (``listenMultiple=True`` lets both share it) and each one acknowledges the
other's Notify; alone, it receives its own Notify (multicast loopback) and acknowledges itself.

    python compat/examples/multicast.py --port 0 --count 1
    python -m udpio.compat compat/examples/multicast.py --port 0 --count 1
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

LOOPBACK = "127.0.0.1"


class Multicast(DatagramProtocol):
    """Joins ``group`` on loopback, notifies it, acknowledges every Notify; stops after ``count`` acks."""

    def __init__(self, group: str, count: int) -> None:
        self.group = group
        self.count = count
        self.acknowledged = 0

    def startProtocol(self) -> None:
        port = self.transport.getHost().port
        # Outgoing interface first: the Notify must not be routed anywhere but loopback.
        d = self.transport.setOutgoingInterface(LOOPBACK)
        d.addCallback(lambda _: self.transport.joinGroup(self.group, LOOPBACK))
        d.addCallback(lambda _: self.notify(port))
        d.addErrback(self.failed)

    def notify(self, port: int) -> None:
        print(f"joined {self.group} on {LOOPBACK}, port {port}, with {type(reactor).__name__}", flush=True)
        self.transport.write(b"Notify", (self.group, port))

    def failed(self, failure: object) -> None:
        print(f"multicast set-up failed: {failure}", flush=True)
        reactor.stop()

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        print(f"datagram {datagram!r} received from {addr!r}", flush=True)
        if datagram == b"Notify":
            self.transport.write(b"Acknowledge", addr)  # unicast reply
        elif datagram == b"Acknowledge":
            self.acknowledged += 1
            if self.count and self.acknowledged >= self.count:
                print(f"{self.acknowledged} acknowledgement(s), stopping", flush=True)
                reactor.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="239.255.0.1", help="IPv4 multicast group (default 239.255.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="UDP port (default 8001; 0 picks a free one)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many acknowledgements (default: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: never)")
    args = parser.parse_args(argv)

    reactor.listenMulticast(args.port, Multicast(args.group, args.count), listenMultiple=True)
    if args.duration:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
