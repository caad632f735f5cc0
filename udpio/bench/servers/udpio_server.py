"""udpio on the standard loop, uvloop or rloop, on its fastest path for each workload.

Every endpoint is udpio's own transport. The protocols take whole batches (``datagrams_received``), so
there is one Python call per readiness event rather than per datagram, and echo replies go out with
``send_batch``: one ``sendmmsg`` per batch with the compiled core (replies to one peer joined into GSO runs),
one ``sendto`` each on the pure-Python path. With ``--gro`` the sockets enable UDP GRO (a sender's GSO burst
arrives as one buffer that udpio splits); on the pure-Python path the echo replies then go out with
``send_many`` (one GSO ``sendmsg`` per run to a peer). With ``--per-datagram`` the protocols have only
``datagram_received`` (one call per datagram, replies with ``sendto``), written exactly as the peers' are.
"""

from __future__ import annotations

import asyncio
from typing import Any

import _common

import udpio


class PerDatagramSink(asyncio.DatagramProtocol):
    """The peers' sink: one call per datagram."""

    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1


class PerDatagramEcho(asyncio.DatagramProtocol):
    """The peers' echo: one call and one ``sendto`` per datagram."""

    def __init__(self) -> None:
        self.received = 0
        self.transport: udpio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # udpio.listen gives udpio's transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.transport.sendto(data, addr)  # type: ignore[union-attr]  # set by connection_made


class Sink(PerDatagramSink):
    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.received += len(batch)


class Echo(PerDatagramEcho):
    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.received += len(batch)
        self.transport.send_batch(batch)  # type: ignore[union-attr]  # set by connection_made


class GsoEcho(Echo):
    """Replies to each sender's run of datagrams with one ``send_many`` (GSO: one system call per run)."""

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.received += len(batch)
        send_many = self.transport.send_many  # type: ignore[union-attr]
        start = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i][1] != batch[start][1]:
                send_many([data for data, _ in batch[start:i]], batch[start][1])
                start = i


async def serve(
    workload: str, members: int, group: str, *, gro: bool, per_datagram: bool, rcvbuf: int | None
) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    transports: list[asyncio.BaseTransport] = []
    protocols: list[PerDatagramSink | PerDatagramEcho] = []
    try:
        if workload == "multicast":
            if not hasattr(udpio, "listen_multicast"):
                _common.unavailable("this udpio has no multicast API (udpio.listen_multicast)")
            # Members share the port (listen_multiple), bind the group so nothing else reaches them, and
            # join it on loopback only. listen_multicast has no GRO option: --gro changes nothing here.
            port = 0
            for _ in range(members):
                transport, protocol = await udpio.listen_multicast(
                    Sink, port, group=group, interface=_common.HOST, host=group, listen_multiple=True
                )
                transports.append(transport)
                protocols.append(protocol)
                port = transport.get_extra_info("sockname")[1]
        else:
            factory: type[PerDatagramSink | PerDatagramEcho]
            if per_datagram:
                factory = PerDatagramSink if workload == "sink" else PerDatagramEcho
            elif workload == "sink":
                factory = Sink
            else:
                # With the compiled core send_batch makes the GSO runs itself, inside one sendmmsg for the
                # whole batch: one send_many per run costs a system call per peer (many-peer echo).
                factory = GsoEcho if gro and udpio.IO_CORE != "compiled" else Echo
            transport, protocol = await udpio.listen(factory, _common.HOST, 0, gro=gro, rcvbuf=rcvbuf)
            transports.append(transport)
            protocols.append(protocol)
        port = transports[0].get_extra_info("sockname")[1]
        _common.emit(
            "ready", port=port, transport="udpio.DatagramTransport", loop=_common.loop_name(), gro=gro,
            io_core=udpio.IO_CORE, receive_strategy=transports[0].get_extra_info("receive_strategy"),
            rcvbuf=_common.set_rcvbuf(transports[0].get_extra_info("socket"), None),
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
    parser.add_argument("--gro", action="store_true", help="UDP GRO on receive, GSO echo replies")
    parser.add_argument(
        "--per-datagram", action="store_true", help="one datagram_received call per datagram, replies with sendto"
    )
    args = parser.parse_args()
    main = serve(
        args.workload, args.members, args.group, gro=args.gro, per_datagram=args.per_datagram, rcvbuf=args.rcvbuf
    )
    if args.loop == "rloop":
        # udpio's transport needs only add_reader/add_writer from its loop, which rloop has.
        _common.run_on_rloop(main)
        return
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401, PLC0415  # optional: only this variant needs it
        except ImportError as exc:
            main.close()
            _common.unavailable(f"uvloop is not installed ({exc})")
    udpio.run(main, loop=args.loop)


if __name__ == "__main__":
    main()
