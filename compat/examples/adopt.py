"""Serving a socket built elsewhere (the tutorial's second script, corrected): a plain ``socket.socket`` is
bound, made non-blocking (the tutorial's comment said "blocking"), handed to ``reactor.adoptDatagramPort``,
and closed at once: the reactor keeps its own duplicate of the descriptor.

Corrections: greetings are sent with a ``LoopingCall`` in the reactor (no thread), and ``--count``/``--duration``
make the script stop by itself.

    python compat/examples/adopt.py --port 0 --interval 0.1 --count 3
    python -m udpio.compat compat/examples/adopt.py --port 0 --count 3
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall


class Echo(DatagramProtocol):
    """Prints every datagram; stops the reactor after ``count`` of them (0: never)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        print(f"got data from {addr[0]}:{addr[1]}: {datagram.decode('utf8', 'replace')}", flush=True)
        if self.count and self.received >= self.count:
            print(f"received {self.received} datagrams, stopping", flush=True)
            reactor.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8007, help="UDP port (default 8007; 0 picks a free one)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between greetings (default 5)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many datagrams (default: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: never)")
    args = parser.parse_args(argv)

    protocol = Echo(args.count)
    # The socket "built in another module": bound and non-blocking, as adoptDatagramPort requires.
    port_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port_socket.setblocking(False)
        port_socket.bind((args.host, args.port))
        port = reactor.adoptDatagramPort(port_socket.fileno(), socket.AF_INET, protocol)
    finally:
        port_socket.close()  # ours to close: the reactor works on its own duplicate
    addr = (args.host, port.getHost().port)
    print(f"adopted a socket bound to {addr[0]}:{addr[1]} with {type(reactor).__name__}", flush=True)

    def greet() -> None:
        protocol.transport.write(f"hello, i am {datetime.datetime.now()}".encode(), addr)

    LoopingCall(greet).start(args.interval)
    if args.duration:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
