"""Twisted: a ``DatagramProtocol`` on the chosen reactor, written the way Twisted's UDP howto writes it.

``--reactor epoll`` is Twisted's default on Linux; ``asyncio`` is ``asyncioreactor`` on the standard loop;
``udpio`` is the same Twisted code on udpio's drop-in reactor (``udpio.compat.install()``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import _common


def install_reactor(kind: str) -> None:
    """Install the reactor before anything imports ``twisted.internet.reactor``."""
    try:
        import twisted  # noqa: F401, PLC0415  # optional: the row is skipped without it
    except ImportError as exc:
        _common.unavailable(f"Twisted is not installed ({exc}); pip install 'udpio[bench]'")
    if kind == "epoll":
        from twisted.internet import epollreactor  # noqa: PLC0415  # must precede the reactor import

        epollreactor.install()
    elif kind == "asyncio":
        from twisted.internet import asyncioreactor  # noqa: PLC0415

        asyncioreactor.install(asyncio.new_event_loop())
    else:
        try:
            from udpio import compat  # noqa: PLC0415
        except ImportError as exc:
            _common.unavailable(f"udpio.compat cannot be imported ({exc})")
        install = getattr(compat, "install", None)
        if install is None:
            _common.unavailable("udpio.compat has no install() yet (the drop-in reactor is not built)")
        install()


def main() -> None:
    parser = _common.parser(__doc__ or "")
    parser.add_argument("--reactor", choices=("epoll", "asyncio", "udpio"), default="epoll")
    args = parser.parse_args()
    install_reactor(args.reactor)

    from twisted.internet import reactor  # noqa: PLC0415  # after install_reactor, as Twisted requires
    from twisted.internet.protocol import DatagramProtocol  # noqa: PLC0415

    class Sink(DatagramProtocol):
        def __init__(self) -> None:
            self.received = 0

        def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # Twisted's name
            self.received += 1

    class Echo(DatagramProtocol):
        def __init__(self) -> None:
            self.received = 0

        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.received += 1
            self.transport.write(datagram, addr)

    protocols: list[Any] = []
    ports: list[Any] = []
    if args.workload == "multicast":
        for _ in range(args.members):
            member = Sink()
            port_number = ports[0].getHost().port if ports else 0
            port = reactor.listenMulticast(port_number, member, interface=args.group, listenMultiple=True)
            ports.append(port)
            protocols.append(member)
            # Joined on the loopback interface only; the Deferred fires at once (setsockopt is synchronous).
            port.joinGroup(args.group, _common.HOST)
    else:
        protocol = Echo() if args.workload == "echo" else Sink()
        ports.append(reactor.listenUDP(0, protocol, interface=_common.HOST))
        protocols.append(protocol)
        if args.rcvbuf is not None:
            # After listenUDP, which makes and binds the socket itself; nothing is queued on it yet.
            _common.set_rcvbuf(ports[0].getHandle(), args.rcvbuf)

    reactor_name = f"{type(reactor).__module__}.{type(reactor).__name__}"
    loop = getattr(reactor, "_asyncioEventloop", None)  # the asyncio-based reactors: which loop runs them
    loop_name = None if loop is None else f"{type(loop).__module__}.{type(loop).__name__}"
    # udpio's reactor holds writes made in datagramReceived by default (issue 14 measures what that costs
    # with one request in flight); None on Twisted's own reactors, which have no such setting.
    hold_writes = getattr(reactor, "hold_writes", None)
    _common.emit(
        "ready", port=ports[0].getHost().port, transport=reactor_name, loop=loop_name, hold_writes=hold_writes,
        rcvbuf=_common.set_rcvbuf(ports[0].getHandle(), None),
    )
    _common.serve_control(protocols, lambda: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)
    for port in ports:
        port.stopListening()
    _common.emit("final", **_common.snapshot(protocols))


if __name__ == "__main__":
    main()
