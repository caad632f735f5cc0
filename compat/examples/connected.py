"""Connected UDP (the tutorial's third script, corrected): the port is "connected" to one peer, writes need
no address, only that peer is heard, and an ICMP port-unreachable from the peer calls ``connectionRefused``.

As in the tutorial the peer is, by default, the script's own port. ``--peer-port`` points it elsewhere: at a
port where nobody listens, every greeting is refused. On udpio's reactor (and Twisted's select and asyncio
reactors) ``connectionRefused`` is called each time and the port stays open; Twisted's epoll reactor (the Linux
default) closes the port silently at the first refusal instead (Twisted #5377, #6287, #6467), so the script
then prints "connection closed" and ends.

Corrections: a ``LoopingCall`` in the reactor sends (the tutorial's thread wrote to the transport unsafely, and
passed an undefined ``factory``), and ``--count``/``--duration`` make the script stop by itself.

    python compat/examples/connected.py --port 0 --interval 0.1 --count 3
    python -m udpio.compat compat/examples/connected.py --port 0 --peer-port 9 --count 3
"""

from __future__ import annotations

import argparse
import datetime
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall


class Echo(DatagramProtocol):
    """Connects in ``startProtocol``, greets on a period, and counts what comes back (datagrams or refusals)."""

    def __init__(self, host: str, peer_port: int, interval: float, count: int) -> None:
        self.host = host
        self.peer_port = peer_port
        self.interval = interval
        self.count = count
        self.events = 0
        self.greeter = LoopingCall(self.greet)

    def startProtocol(self) -> None:
        peer_port = self.peer_port or self.transport.getHost().port  # default: our own port, as the tutorial
        self.transport.connect(self.host, peer_port)  # IP addresses only: Twisted does not resolve names here
        print(f"connected to {self.host}:{peer_port} with {type(reactor).__name__}", flush=True)
        self.greeter.start(self.interval)

    def greet(self) -> None:
        self.transport.write(f"hello, i am {datetime.datetime.now()}".encode())  # no address: connected

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        print(f"received: {datagram.decode('utf8', 'replace')}", flush=True)
        self.counted()

    def connectionRefused(self) -> None:
        print("send failed: connection refused (nobody listens on the peer's port)", flush=True)
        self.counted()

    def counted(self) -> None:
        self.events += 1
        if self.count and self.events >= self.count:
            print(f"{self.events} events, stopping", flush=True)
            self.transport.stopListening()

    def stopProtocol(self) -> None:
        print("connection closed", flush=True)
        if self.greeter.running:
            self.greeter.stop()
        if reactor.running:
            reactor.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind and to connect to (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8007, help="UDP port to bind (default 8007; 0 picks one)")
    parser.add_argument("--peer-port", type=int, default=0, help="port to connect to (default: our own port)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between greetings (default 5)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many replies/refusals (default: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: never)")
    args = parser.parse_args(argv)

    reactor.listenUDP(args.port, Echo(args.host, args.peer_port, args.interval, args.count), interface=args.host)
    if args.duration:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
