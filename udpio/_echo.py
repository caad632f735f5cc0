"""The echo server: :func:`start_echo` / :func:`serve_echo` and :class:`EchoProtocol`, safe by default.

A reply is the request itself, so it is never larger than what caused it (no amplification). Every datagram
first passes a :class:`~udpio.SafetyPolicy` (reflection guard, rate limits, allow/deny lists); what it refuses
is counted under its reason in ``counters.policy_drops`` and never answered. ``policy=None`` turns that off.

A server bound to the wildcard address answers each datagram from the address it was sent to
(:class:`~udpio.LocalAddress`), so it works behind anycast and direct server return, where the service
address sits on ``lo`` of every host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from . import _sockopts
from ._addr import Address, LocalAddress, format_address, is_wildcard
from ._counters import Counters
from ._errors import EndpointClosedError
from ._factories import listen
from ._limits import DEFAULT_BUFFER_LIMIT
from ._loop import wait_within
from ._options import check_optional_bool
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

    ``reply_from_local``: answer each datagram from the address it was sent to (``None``, the default: when
    the socket is bound to the wildcard address; on udpio's transport only). It takes effect in
    ``connection_made``, which then binds :attr:`datagrams_received_on` (``None`` otherwise).
    """

    #: Bound by ``connection_made`` when replies leave from each datagram's local address: udpio's transport
    #: then delivers ``(data, addr, local)`` batches here instead of ``datagrams_received``.
    datagrams_received_on: Callable[[list[tuple[bytes, Address, LocalAddress]]], None] | None = None

    def __init__(self, policy: PolicyArg = "default", *, reply_from_local: bool | None = None) -> None:
        self.policy: SafetyPolicy | None = make_policy(policy)
        self.reply_from_local = check_optional_bool(reply_from_local, "reply_from_local")
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
        sockname = transport.get_extra_info("sockname")
        if self.policy is not None:
            # Dual-stack or not decides what an IPv4-mapped source may be (SafetyPolicy.bind).
            dual_stack = _sockopts.is_dual_stack(transport.get_extra_info("socket"))
            self.policy.bind(sockname, dual_stack=dual_stack)
        # On the wildcard the kernel would pick each reply's source by route, and a request to a service
        # address on lo would be answered from another one; on a specific address it sends from that one
        # anyway, and the per-datagram control message would cost for nothing.
        wanted = is_wildcard(sockname) if self.reply_from_local is None else self.reply_from_local
        # Opting in: udpio's transport then reads each datagram's local address (it chooses its receive
        # strategy after connection_made) and every reply names it as its source.
        on = wanted and isinstance(transport, DatagramTransport)
        self.datagrams_received_on = self._echo_from_local if on else None

    def _echo_from_local(self, batch: list[tuple[bytes, Address, LocalAddress]]) -> None:
        """Echo a batch, each reply from the address its request was sent to."""
        if self.policy is not None:
            batch = self.policy.filter(batch, time.monotonic(), self.counters.count_policy_drop)
        try:
            self.transport.send_batch(batch)  # type: ignore[union-attr]  # udpio's: checked in connection_made
        except EndpointClosedError:
            self.counters.dropped_on_close += len(batch)

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
    reply_from_local: bool | None = None,
) -> EchoServer:
    """Start an echo server and return it once it is bound (``server.address`` has the real port).

    Defaults follow the tutorial: ``127.0.0.1``, port 8007. ``policy`` decides which datagrams are answered:
    ``"default"`` is a fresh :class:`~udpio.SafetyPolicy()` (reflection guard on; per-source and global rate
    limits, loopback exempt), a ``SafetyPolicy(...)`` of your own configures it (one per server: it keeps
    per-source state), ``None`` answers everything. The other options are :func:`udpio.listen`'s
    (``max_size`` drops and counts larger datagrams). The echo protocol replies inside its handler, so
    ``zero_copy`` is safe here.

    ``reply_from_local``: each reply leaves from the address its request was sent to (``IP_PKTINFO`` /
    ``IPV6_PKTINFO``, see :class:`~udpio.LocalAddress`). ``None`` (default): on when ``host`` is the wildcard
    address (``0.0.0.0``, ``::``), where a host with a service address on ``lo`` (anycast, direct server
    return) would otherwise answer from another address; off on a specific address, which needs nothing.
    """
    chosen = make_policy(policy)
    from_local = check_optional_bool(reply_from_local, "reply_from_local")
    transport, protocol = await listen(
        lambda: EchoProtocol(chosen, reply_from_local=from_local),
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
    reply_from_local: bool | None = None,
) -> None:
    """Run an echo server until cancelled, then shut it down: ``udpio.run(udpio.serve_echo())``.

    Same arguments as :func:`start_echo`.
    """
    server = await start_echo(
        host, port, family=family, reuse_port=reuse_port, max_size=max_size, policy=policy, reuse_addr=reuse_addr,
        broadcast=broadcast, rcvbuf=rcvbuf, sndbuf=sndbuf, gro=gro, track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy, buffer_limit=buffer_limit, reply_from_local=reply_from_local,
    )
    async with server:
        await server.serve_forever()
