"""The tutorial's periodic sender, rebuilt as a task on the transport's own loop: :func:`start_periodic_sender`
and its default message, :func:`hello_message`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

from ._addr import Address, format_address


def hello_message() -> bytes:
    """The tutorial's periodic message: ``b"hello, i am <timestamp>"``."""
    return f"hello, i am {datetime.datetime.now().isoformat(sep=' ')}".encode()


def start_periodic_sender(
    transport: asyncio.DatagramTransport,
    interval: float = 5.0,
    message: Callable[[], bytes] = hello_message,
    addr: Address | None = None,
) -> asyncio.Task[None]:
    """Send ``message()`` to ``addr`` (``None`` on a connected endpoint) every ``interval`` seconds.

    The tutorial did this from a thread writing to the transport, which is not thread-safe; this is a task
    on the transport's own loop. Cancel the task to stop it; it also ends when the transport closes.
    Must be called from the loop's thread.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")

    async def periodic() -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not transport.is_closing():
            transport.sendto(message(), addr)
            # Scheduled on a fixed grid so the period does not drift by the send's own duration.
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    return asyncio.get_running_loop().create_task(periodic(), name=f"udpio-periodic-{format_address(addr)}")
