"""The awaitable endpoint: ``await ep.send(...)``, ``await ep.recv()``, ``async for``, ``async with``.

The shape asyncio-dgram and anyio users expect, on top of udpio's transport. The receive queue is bounded:
when the program reads slower than datagrams arrive, the newest are dropped and counted
(``counters.dropped_queue``), so memory never grows with the load.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import AsyncIterator
from types import TracebackType

from ._addr import Address
from ._counters import Counters
from ._errors import EndpointBrokenError, EndpointBusyError, EndpointClosedError, InvalidArgumentError
from ._factories import adopt, connect, listen
from ._limits import DEFAULT_BUFFER_LIMIT
from ._transport import DatagramTransport

#: Datagrams held for a program that has not called ``recv`` yet: at 64 KiB each at most 64 MiB; a
#: typical 1200-byte datagram makes it ~1.2 MiB. Enough to ride out a scheduling hiccup, not a backlog.
DEFAULT_QUEUE_SIZE = 1024


class QueueProtocol(asyncio.DatagramProtocol):
    """Feeds a bounded deque; one waiter at a time; errors queued in order with the datagrams."""

    def __init__(self, queue_size: int) -> None:
        self.queue: collections.deque[tuple[bytes, Address] | BaseException] = collections.deque()
        self.queue_size = queue_size
        self.transport: DatagramTransport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost_exc: BaseException | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # only udpio's transport builds this protocol
        # The transport's Counters object itself (its ``counters`` property reads /proc on every access).
        self.counters: Counters = transport.get_extra_info("counters")

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def datagrams_received(self, batch: list[tuple[bytes, Address]]) -> None:
        room = self.queue_size - len(self.queue)
        if room < len(batch):
            self.counters.dropped_queue += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
        self.queue.extend(batch)
        self._wake()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams_received([(data, addr)])

    def error_received(self, exc: Exception) -> None:
        if len(self.queue) < self.queue_size:
            self.queue.append(exc)
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_exc = exc
        if not self.lost.done():
            self.lost.set_result(None)
        self.writable.set()
        self._wake()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class DatagramEndpoint:
    """A UDP endpoint to await on; made by :func:`open_endpoint`.

    Not thread-safe, except :meth:`send_threadsafe`: use it to send from another thread.
    """

    def __init__(self, transport: DatagramTransport, protocol: QueueProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<udpio.DatagramEndpoint {self._transport!r}>"

    @property
    def transport(self) -> DatagramTransport:
        """The underlying :class:`~udpio.DatagramTransport`."""
        return self._transport

    @property
    def local_address(self) -> Address:
        """The bound address, with the real port when 0 was asked for."""
        return self._transport.get_extra_info("sockname")  # type: ignore[no-any-return]

    @property
    def remote_address(self) -> Address | None:
        """The connected peer, or ``None``."""
        return self._transport.get_extra_info("peername")  # type: ignore[no-any-return]

    @property
    def counters(self) -> Counters:
        """This endpoint's :class:`~udpio.Counters` (``dropped_queue`` counts receive-queue overflow)."""
        return self._transport.counters

    @property
    def closed(self) -> bool:
        """``True`` once closed (by :meth:`close` or because the socket failed)."""
        return self._transport.is_closing()

    def _check_open(self) -> None:
        if self._protocol.lost.done() and self._protocol.lost_exc is not None:
            raise EndpointBrokenError("UDP endpoint") from self._protocol.lost_exc
        if self._transport.is_closing():
            raise EndpointClosedError("UDP endpoint")

    async def send(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        """Send one datagram (no ``addr`` on a connected endpoint); waits while the send buffer is above its
        high-water mark. Errors as :meth:`udpio.DatagramTransport.sendto`."""
        self._check_open()
        if not self._protocol.writable.is_set():
            await self._protocol.writable.wait()
            self._check_open()
        self._transport.sendto(data, addr)

    def send_nowait(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        """Send without waiting for buffer room (overflow past the hard limit is dropped and counted)."""
        self._check_open()
        self._transport.sendto(data, addr)

    def send_threadsafe(self, data: bytes, addr: Address | None = None) -> None:
        """Send from any thread: the datagram is handed to the loop's thread with ``call_soon_threadsafe``.

        Errors (closed endpoint, bad address) surface in the loop's exception handler, not here.
        """
        self._loop.call_soon_threadsafe(self.send_nowait, bytes(data), addr)

    async def recv(self) -> tuple[bytes, Address]:
        """The next datagram and its sender. Raises an error the network reported (e.g.
        :class:`ConnectionRefusedError` on a connected endpoint) in order with the datagrams,
        :class:`~udpio.EndpointClosedError` once closed and drained, :class:`~udpio.EndpointBusyError` if
        another task is already receiving."""
        protocol = self._protocol
        if protocol.waiter is not None:
            raise EndpointBusyError("UDP endpoint")
        while not protocol.queue:
            self._check_open()
            waiter = protocol.waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.waiter = None
        item = protocol.queue.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Address]]:
        return self

    async def __anext__(self) -> tuple[bytes, Address]:
        """Iteration ends when the endpoint is closed."""
        try:
            return await self.recv()
        except EndpointClosedError:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Close the endpoint; what is buffered for sending still goes out. Idempotent."""
        self._transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is really closed."""
        await asyncio.shield(self._protocol.lost)

    async def aclose(self) -> None:
        """Close and wait until closed."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> DatagramEndpoint:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def open_endpoint(
    host: str | None = None,
    port: int = 0,
    *,
    remote: Address | None = None,
    sock: socket.socket | int | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    family: int = 0,
    reuse_port: bool = False,
    reuse_addr: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> DatagramEndpoint:
    """Open an awaitable UDP endpoint.

    * ``open_endpoint(host, port)``: listen on ``(host, port)`` (default ``127.0.0.1``, port 0: a free one);
    * ``open_endpoint(remote=(host, port))``: connected to one peer (``host``/``port`` then bind the local
      end);
    * ``open_endpoint(sock=s)``: adopt a bound non-blocking UDP socket or descriptor (udpio works on a
      duplicate; the caller still owns and closes ``s``).

    ``queue_size`` bounds the receive queue (datagrams). The other options are :func:`udpio.listen`'s (with
    ``remote=``: :func:`udpio.connect`'s, which has no ``reuse_addr``; with ``sock=``: the adopted socket
    keeps its own socket options, so only ``max_size``, ``gro``, ``track_kernel_drops`` and ``buffer_limit``
    apply). There is no ``zero_copy``: the endpoint queues what it receives, so it must own it (a view into
    udpio's reused receive buffer is only valid during a protocol's handler call).
    """
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise InvalidArgumentError("queue_size", "an int >= 1 (datagrams)", queue_size)

    def factory() -> QueueProtocol:
        return QueueProtocol(queue_size)

    socket_options = {"family": family, "reuse_port": reuse_port, "reuse_addr": reuse_addr,
                      "broadcast": broadcast, "rcvbuf": rcvbuf, "sndbuf": sndbuf}
    transport: DatagramTransport
    if sock is not None:
        if host is not None or port or remote is not None:
            raise InvalidArgumentError(
                "arguments", "either sock= or host/port/remote, not both",
                {"sock": sock, "host": host, "port": port, "remote": remote},
            )
        for name, value in socket_options.items():
            if value:  # every socket option's default is falsy (0, False, None)
                raise InvalidArgumentError(name, "left out with sock= (an adopted socket keeps its options)", value)
        transport, protocol = await adopt(
            factory, sock, max_size=max_size, gro=gro, track_kernel_drops=track_kernel_drops,
            buffer_limit=buffer_limit,
        )
    elif remote is not None:
        if not isinstance(remote, tuple) or len(remote) < 2:
            raise InvalidArgumentError("remote", "a (host, port) tuple", remote)
        if reuse_addr:
            raise InvalidArgumentError("reuse_addr", "False with remote= (a connected endpoint)", reuse_addr)
        transport, protocol = await connect(
            factory, remote[0], remote[1], local_host=host, local_port=port, family=family,
            reuse_port=reuse_port, broadcast=broadcast, rcvbuf=rcvbuf, sndbuf=sndbuf, max_size=max_size,
            gro=gro, track_kernel_drops=track_kernel_drops, buffer_limit=buffer_limit,
        )
    else:
        transport, protocol = await listen(
            factory, "127.0.0.1" if host is None else host, port, family=family, reuse_port=reuse_port,
            reuse_addr=reuse_addr, broadcast=broadcast, rcvbuf=rcvbuf, sndbuf=sndbuf, max_size=max_size,
            gro=gro, track_kernel_drops=track_kernel_drops, buffer_limit=buffer_limit,
        )
    return DatagramEndpoint(transport, protocol)
