"""Plain UDP (the tutorial's first script, corrected): a protocol that prints what it receives, and a thread
that sends it "hello, i am <time>" every few seconds.

Corrections: the thread no longer calls ``transport.write`` itself (Twisted is not thread-safe: that was a data
race); it hands each write to the reactor with ``reactor.callFromThread``. The thread stops when the reactor
shuts down, and ``--count``/``--duration`` make the script stop by itself.

    python compat/examples/echo.py --port 0 --interval 0.1 --count 3       # on Twisted's reactor
    python -m udpio.compat compat/examples/echo.py --port 0 --count 3      # the same, on udpio's reactor
"""

from __future__ import annotations

import argparse
import datetime
import sys
import threading

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol


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


def send_periodically(protocol: Echo, addr: tuple[str, int], interval: float, stop: threading.Event) -> None:
    """The tutorial's thread: every ``interval`` seconds, have the *reactor* write a greeting."""
    while not stop.is_set():
        message = f"hello, i am {datetime.datetime.now()}".encode()
        # transport.write must run in the reactor's thread; callFromThread queues it there safely.
        reactor.callFromThread(protocol.transport.write, message, addr)
        stop.wait(interval)  # returns at once when the reactor shuts down


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on and send to (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8007, help="UDP port (default 8007; 0 picks a free one)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between greetings (default 5)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many datagrams (default: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: never)")
    args = parser.parse_args(argv)

    protocol = Echo(args.count)
    port = reactor.listenUDP(args.port, protocol, interface=args.host)
    addr = (args.host, port.getHost().port)  # the tutorial sends to its own port
    print(f"listening on {addr[0]}:{addr[1]} with {type(reactor).__name__}", flush=True)

    stop = threading.Event()
    reactor.addSystemEventTrigger("before", "shutdown", stop.set)
    sender = threading.Thread(target=send_periodically, args=(protocol, addr, args.interval, stop), daemon=True)
    reactor.callWhenRunning(sender.start)
    if args.duration:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    sender.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
