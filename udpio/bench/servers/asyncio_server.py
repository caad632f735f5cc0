"""Plain asyncio: ``loop.create_datagram_endpoint`` and a minimal protocol, what a user writes without udpio.

On the standard loop this is asyncio's own ``_SelectorDatagramTransport`` (one ``recvfrom`` per readiness
event); with ``--loop uvloop`` it is uvloop's native UDP transport, with ``--loop rloop`` rloop's (in Rust).
Never imports udpio.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import _common


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.transport.sendto(data, addr)  # type: ignore[union-attr]  # set by connection_made


async def serve(workload: str, members: int, group: str, rcvbuf: int | None) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    transports: list[asyncio.BaseTransport] = []
    protocols: list[Sink | Echo] = []
    try:
        if workload == "multicast":
            socks = _common.multicast_members(group, members)
            # Read before the loop takes the sockets: rloop's transport owns (and may replace) the descriptor.
            port = socks[0].getsockname()[1]
            try:
                for sock in socks:
                    sock.setblocking(False)
                    transport, protocol = await loop.create_datagram_endpoint(Sink, sock=sock)
                    transports.append(transport)
                    protocols.append(protocol)
            except BaseException:
                for sock in socks:
                    sock.close()
                raise
        else:
            factory: Callable[[], Sink | Echo] = Echo if workload == "echo" else Sink
            if rcvbuf is None:
                transport, protocol = await loop.create_datagram_endpoint(
                    factory, local_addr=(_common.HOST, 0), family=socket.AF_INET
                )
            else:
                # A receive buffer asked for: the socket is made here (the loops' transports differ in what
                # they expose of theirs), as multicast does above.
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    rcvbuf = _common.set_rcvbuf(sock, rcvbuf)  # what the kernel gave, for the ready line
                    sock.bind((_common.HOST, 0))
                    sock.setblocking(False)
                    transport, protocol = await loop.create_datagram_endpoint(factory, sock=sock)
                except BaseException:
                    sock.close()
                    raise
            transports.append(transport)
            protocols.append(protocol)
            port = transport.get_extra_info("sockname")[1]
        kind = type(transports[0])
        _common.emit(
            "ready", port=port, transport=f"{kind.__module__}.{kind.__name__}", loop=_common.loop_name(), rcvbuf=rcvbuf
        )
        _common.serve_control(protocols, lambda: loop.call_soon_threadsafe(stopped.set))
        await stopped.wait()
    finally:
        for transport in transports:
            transport.close()
    _common.emit("final", **_common.snapshot(protocols))


def main() -> None:
    parser = _common.parser(__doc__ or "")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "rloop"), default="asyncio")
    args = parser.parse_args()
    coro: Coroutine[Any, Any, None] = serve(args.workload, args.members, args.group, args.rcvbuf)
    if args.loop == "rloop":
        _common.run_on_rloop(coro)
    elif args.loop == "uvloop":
        try:
            import uvloop  # noqa: PLC0415  # optional: only this variant needs it
        except ImportError as exc:
            coro.close()
            _common.unavailable(f"uvloop is not installed ({exc})")
        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
