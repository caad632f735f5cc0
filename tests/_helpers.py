"""Shared test helpers (real sockets only)."""

from __future__ import annotations

import asyncio
from typing import Any


class Collector(asyncio.DatagramProtocol):
    """Records callbacks; ``next()`` waits for the next datagram or error."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.transport: Any = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.events: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.events.append("error")
        self.queue.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def next(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)
