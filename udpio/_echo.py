"""The echo server: :func:`start_echo` / :func:`serve_echo` and :class:`EchoProtocol`, safe by default.

A reply is the request itself, so it is never larger than what caused it (no amplification). Every datagram
first passes a :class:`~udpio.SafetyPolicy` (reflection guard, rate limits, allow/deny lists); what it refuses
is counted under its reason in ``counters.policy_drops`` and never answered. ``policy=None`` turns that off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from . import _sockopts
from ._addr import Address, format_address
from ._counters import Counters
from ._errors import EndpointClosedError
from ._factories import listen
from ._limits import DEFAULT_BUFFER_LIMIT
from ._loop import wait_within
from ._policy import PolicyArg, SafetyPolicy, make_policy
from ._transport import DatagramTransport

#: The tutorial's port.
DEFAULT_ECHO_PORT = 8007
#: How long a closing server waits for its buffered replies to go out before dropping (and counting) them:
#: the kernel takes UDP as fast as the device sends, so only a stuck device ever needs the limit.
SHUTDOWN_FLUSH_TIMEOUT = 2.0

class EchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram the policy admits back to its sender, unchanged (zero-length ones too).

    ``policy`` as :func:`start_echo`: by default a fresh :class:`~udpio.SafetyPolicy`. Refused datagrams
    are counted in the transport's counters (``policy_drops`` by reason) or, on a transport without
    udpio's counters, in ``counters``. Works on any asyncio datagram transport; on udpio's it takes
    whole batches per readiness event.
    """

    def __init__(self, policy: PolicyArg = "default") -> None:
        self.policy: SafetyPolicy | None = make_policy(policy)
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = Counters()
        self._send_batch: Callable[[list[tuple[bytes, Address]]], None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport
        # udpio's transport hands out its Counters object; keep it, so drops land next to the other counts
        # (and ``transport.counters`` is not read per datagram: that property reads /proc).
        counters = transport.get_extra_info("counters")
        if isinstance(counters, Counters):
            self.counters = counters
        # udpio's transport sends a list of replies with the per-datagram checks hoisted out of the loop.
        self._send_batch = getattr(transport, "send_batch", None)
        if self.policy is not None:
            # Dual-stack or not decides what an IPv4-mapped source may be (SafetyPolicy.bind).
            dual_stack = _sockopts.is_dual_stack(transport.get_extra_info("socket"))
            self.policy.bind(transport.get_extra_info("sockname"), dual_stack=dual_stack)

    def datagrams_received(self, batch: list[tuple[bytes, Address]]) -> None:
        """Echo a batch (udpio's transport calls this instead of one call per datagram).

        The clock is read once per batch; the policy's per-datagram cost is two dict lookups for a source
        exempt from rate limits, plus the bucket arithmetic for the others.
        """
        if self.policy is not None:
            batch = self.policy.filter(batch, time.monotonic(), self.counters.count_policy_drop)
        if self._send_batch is not None:
            try:
                self._send_batch(batch)
            except EndpointClosedError:
                self.counters.dropped_on_close += len(batch)
            return
        sendto = self.transport.sendto  # type: ignore[union-attr]  # set by connection_made
        items = iter(batch)
        try:
            for data, addr in items:
                sendto(data, addr)
        except EndpointClosedError:
            # The transport closed itself mid-batch (its socket failed): the reply that raised and the rest
            # were received but will never be answered; count them rather than lose them silently.
            self.counters.dropped_on_close += 1 + sum(1 for _ in items)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Echo one datagram (on transports without batches)."""
        if self.policy is not None:
            reason = self.policy.admit(data, addr, time.monotonic())
            if reason is not None:
                self.counters.count_policy_drop(reason)
                return
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
    def policy(self) -> SafetyPolicy | None:
        """The policy deciding which datagrams are answered (``None``: all)."""
        return self.protocol.policy

    @property
    def counters(self) -> Counters:
        """Datagrams and bytes echoed, dropped (by reason, ``policy_drops`` for the policy's) and errors."""
        return self.transport.counters

    def close(self) -> None:
        """Stop receiving; replies already buffered still go out, then the socket closes."""
        self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self.protocol.closed)

    async def shutdown(self, timeout: float = SHUTDOWN_FLUSH_TIMEOUT) -> None:
        """Graceful stop: stop receiving, let buffered replies go out for at most ``timeout`` seconds, then
        drop what is left (counted in ``dropped_on_close``) and close the socket."""
        self.close()
        try:
            await wait_within(asyncio.shield(self.protocol.closed), timeout)
        except asyncio.TimeoutError:
            self.transport.abort()
            await self.wait_closed()

    async def serve_forever(self) -> None:
        """Wait until the server is closed; cancelling this shuts it down (see :meth:`shutdown`)."""
        try:
            await asyncio.shield(self.protocol.closed)
        except asyncio.CancelledError:
            await self.shutdown()
            raise

    async def __aenter__(self) -> EchoServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()


async def start_echo(
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    reuse_port: bool = False,
    max_size: int | None = None,
    policy: PolicyArg = "default",
    reuse_addr: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> EchoServer:
    """Start an echo server and return it once it is bound (``server.address`` has the real port).

    Defaults follow the tutorial: ``127.0.0.1``, port 8007. ``policy`` decides which datagrams are answered:
    ``"default"`` is a fresh :class:`~udpio.SafetyPolicy()` (reflection guard on; per-source and global rate
    limits, loopback exempt), a ``SafetyPolicy(...)`` of your own configures it (one per server: it keeps
    per-source state), ``None`` answers everything. The other options are :func:`udpio.listen`'s
    (``max_size`` drops and counts larger datagrams). The echo protocol replies inside its handler, so
    ``zero_copy`` is safe here.
    """
    chosen = make_policy(policy)
    transport, protocol = await listen(
        lambda: EchoProtocol(chosen),
        host,
        port,
        family=family,
        reuse_port=reuse_port,
        reuse_addr=reuse_addr,
        broadcast=broadcast,
        rcvbuf=rcvbuf,
        sndbuf=sndbuf,
        max_size=max_size,
        gro=gro,
        track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy,
        buffer_limit=buffer_limit,
    )
    return EchoServer(transport, protocol)


async def serve_echo(
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    reuse_port: bool = False,
    max_size: int | None = None,
    policy: PolicyArg = "default",
    reuse_addr: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> None:
    """Run an echo server until cancelled, then shut it down: ``udpio.run(udpio.serve_echo())``.

    Same arguments as :func:`start_echo`.
    """
    server = await start_echo(
        host, port, family=family, reuse_port=reuse_port, max_size=max_size, policy=policy, reuse_addr=reuse_addr,
        broadcast=broadcast, rcvbuf=rcvbuf, sndbuf=sndbuf, gro=gro, track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy, buffer_limit=buffer_limit,
    )
    async with server:
        await server.serve_forever()
