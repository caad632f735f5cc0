"""The echo server: :func:`start_echo` / :func:`serve_echo` and :class:`EchoProtocol`.

A reply is the request itself, so it is never larger than what caused it (no amplification).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from ._addr import Address, format_address
from ._counters import Counters
from ._endpoint import listen
from ._transport import DatagramTransport

#: The tutorial's port.
DEFAULT_ECHO_PORT = 8007


class EchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram back to its sender, unchanged (zero-length ones too).

    Works on any asyncio datagram transport; on udpio's it takes whole batches per readiness event.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport

    def datagrams_received(self, batch: list[tuple[bytes, Address]]) -> None:
        """Echo a batch (udpio's transport calls this instead of one call per datagram)."""
        sendto = self.transport.sendto  # type: ignore[union-attr]  # set by connection_made
        for data, addr in batch:
            sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Echo one datagram (on transports without batches)."""
        self.transport.sendto(data, addr)  # type: ignore[union-attr]  # set by connection_made

    def error_received(self, exc: Exception) -> None:
        """Errors are counted by the transport; an echo server has nobody to tell."""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class EchoServer:
    """A running echo server (from :func:`start_echo`). Use as ``async with`` or call :meth:`close`."""

    def __init__(self, transport: DatagramTransport, protocol: EchoProtocol) -> None:
        self.transport = transport
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"<udpio.EchoServer {format_address(self.address)}>"

    @property
    def address(self) -> Address:
        """The bound address (the real port when 0 was asked for)."""
        return self.transport.get_extra_info("sockname")  # type: ignore[no-any-return]

    @property
    def port(self) -> int:
        """The bound port."""
        return self.address[1]

    @property
    def counters(self) -> Counters:
        """Datagrams and bytes echoed, dropped (by reason) and errors."""
        return self.transport.counters

    def close(self) -> None:
        """Stop receiving; replies already buffered still go out, then the socket closes."""
        self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self.protocol.closed)

    async def serve_forever(self) -> None:
        """Wait until the server is closed; cancelling this closes it."""
        try:
            await asyncio.shield(self.protocol.closed)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self) -> EchoServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        await self.wait_closed()


async def start_echo(
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    reuse_port: bool = False,
    max_size: int | None = None,
    **options: Any,
) -> EchoServer:
    """Start an echo server and return it once it is bound (``server.address`` has the real port).

    Defaults follow the tutorial: ``127.0.0.1``, port 8007. Options as :func:`udpio.listen`
    (``max_size`` drops and counts larger datagrams).
    """
    transport, protocol = await listen(
        EchoProtocol, host, port, family=family, reuse_port=reuse_port, max_size=max_size, **options
    )
    return EchoServer(transport, protocol)


async def serve_echo(
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    reuse_port: bool = False,
    max_size: int | None = None,
    **options: Any,
) -> None:
    """Run an echo server until cancelled, then close its socket: ``asyncio.run(udpio.serve_echo())``."""
    server = await start_echo(
        host, port, family=family, reuse_port=reuse_port, max_size=max_size, **options
    )
    async with server:
        await server.serve_forever()
