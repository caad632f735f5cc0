"""The three ways to get a UDP endpoint: :func:`listen`, :func:`connect` and :func:`adopt`.

Each returns ``(transport, protocol)`` like ``loop.create_datagram_endpoint``; the transport is udpio's
:class:`~udpio.DatagramTransport` on every loop. Each closes its socket on any failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from . import _sockopts
from ._addr import Address, check_destination_port, check_family, check_port, resolve
from ._errors import InvalidSocketError, bind_error
from ._limits import C_INT_MAX, DEFAULT_BUFFER_LIMIT
from ._options import TransportOptions
from ._transport import DatagramTransport, start_transport

P = TypeVar("P", bound=asyncio.BaseProtocol)

_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def _bind(sock: socket.socket, address: Address) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        raise bind_error(exc, address) from exc


async def listen(
    protocol_factory: Callable[[], P],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    family: int = 0,
    reuse_port: bool = False,
    reuse_addr: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> tuple[DatagramTransport, P]:
    """Bind a UDP socket to ``(host, port)`` and serve it with ``protocol_factory()``.

    ``host`` defaults to loopback; pass ``"0.0.0.0"`` / ``"::"`` to listen on every interface. Port 0 picks
    a free port: read it back from ``transport.get_extra_info("sockname")``. The protocol may reply to any
    peer with ``transport.sendto(data, addr)``.

    Options: ``family`` (``socket.AF_INET``/``AF_INET6``, else taken from ``host``); ``reuse_port``
    (``SO_REUSEPORT``, several sockets share the port; :class:`NotImplementedError` where missing);
    ``reuse_addr`` (off by default, see bpo-37228); ``broadcast``; ``rcvbuf``/``sndbuf`` (bytes);
    ``max_size`` (larger datagrams are dropped and counted); ``gro`` (Linux UDP GRO: coalesced receives,
    split again before delivery); ``track_kernel_drops`` (``SO_RXQ_OVFL`` on every receive); ``zero_copy``
    (receive into a preallocated arena and deliver ``memoryview`` slices, valid only until the handler
    returns);
    ``buffer_limit`` (hard cap of the send buffer in bytes).

    Raises :class:`~udpio.InvalidPortError`, :class:`~udpio.InvalidAddressError`,
    :class:`~udpio.HostNotFoundError`, or the :class:`OSError` of ``bind`` (e.g. ``EADDRINUSE``) with the
    address in its message.
    """
    check_port(port)
    check_family(family)
    options = TransportOptions(
        max_size=max_size,
        gro=gro,
        track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy,
        buffer_limit=buffer_limit,
    )
    fam, address = await resolve(host, port, family)
    sock = _sockopts.open_socket(
        fam, reuse_port=reuse_port, reuse_addr=reuse_addr, rcvbuf=rcvbuf, sndbuf=sndbuf, broadcast=broadcast
    )
    try:
        _bind(sock, address)
    except BaseException:
        sock.close()
        raise
    return await start_transport(sock, protocol_factory, options)


async def connect(
    protocol_factory: Callable[[], P],
    host: str,
    port: int,
    *,
    local_host: str | None = None,
    local_port: int = 0,
    family: int = 0,
    reuse_port: bool = False,
    broadcast: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> tuple[DatagramTransport, P]:
    """A "connected" UDP endpoint: it talks to ``(host, port)`` only.

    The kernel filters out datagrams from other peers; ``transport.sendto(data)`` needs no address; an
    ICMP port-unreachable from the peer reaches ``protocol.error_received`` as
    :class:`ConnectionRefusedError` (or :meth:`udpio.ConnectedProtocol.connection_refused`) and the
    endpoint keeps working. ``local_host``/``local_port`` bind the local end first (by default the kernel
    picks the source address and port when connecting). Other options as :func:`listen`.
    """
    check_destination_port(port)
    check_port(local_port, "local_port")
    check_family(family)
    options = TransportOptions(
        max_size=max_size,
        gro=gro,
        track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy,
        buffer_limit=buffer_limit,
    )
    fam, remote = await resolve(host, port, family)
    local: Address | None = None
    if local_host is not None or local_port:
        _, local = await resolve(local_host or _WILDCARD[fam], local_port, fam)
    sock = _sockopts.open_socket(fam, reuse_port=reuse_port, rcvbuf=rcvbuf, sndbuf=sndbuf, broadcast=broadcast)
    try:
        if local is not None:
            _bind(sock, local)
        # connect() on UDP only records the peer; it cannot block (udp(7)).
        sock.connect(remote)
        peer: Address = sock.getpeername()
    except BaseException:
        sock.close()
        raise
    return await start_transport(sock, protocol_factory, options, remote=peer)


def validated_duplicate(sock: socket.socket | int) -> socket.socket:
    """Check that ``sock`` (a socket or a file descriptor) is a bound, non-blocking IPv4/IPv6 UDP socket and
    return udpio's own duplicate of it; on failure raise :class:`~udpio.InvalidSocketError` and leave the
    caller's socket untouched.
    """
    if isinstance(sock, bool) or not isinstance(sock, (socket.socket, int)):
        raise InvalidSocketError(sock, "a socket.socket or an int file descriptor")
    fd = sock.fileno() if isinstance(sock, socket.socket) else sock
    if fd < 0:
        raise InvalidSocketError(sock, "an open socket (this one is closed)")
    if fd > C_INT_MAX:
        # os.get_blocking would raise OverflowError: a descriptor is a C int (open(2)).
        raise InvalidSocketError(sock, f"a file descriptor, an int in 0..{C_INT_MAX}")
    try:
        blocking = os.get_blocking(fd)
        duplicate = os.dup(fd)
    except OSError as exc:
        raise InvalidSocketError(sock, f"an open file descriptor ({exc.strerror})") from None
    try:
        try:
            dup_sock = socket.socket(fileno=duplicate)
        except OSError as exc:
            raise InvalidSocketError(sock, f"a socket ({exc.strerror})") from None
    except BaseException:
        os.close(duplicate)
        raise
    try:
        if dup_sock.type != socket.SOCK_DGRAM:
            raise InvalidSocketError(sock, f"a SOCK_DGRAM socket, not {dup_sock.type!r}")
        if dup_sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise InvalidSocketError(sock, f"an AF_INET or AF_INET6 socket, not {dup_sock.family!r}")
        if dup_sock.proto not in (0, socket.IPPROTO_UDP):
            raise InvalidSocketError(sock, f"a UDP socket, not protocol {dup_sock.proto}")
        if blocking:
            raise InvalidSocketError(sock, "a non-blocking socket (call sock.setblocking(False) first)")
        if dup_sock.getsockname()[1] == 0:
            raise InvalidSocketError(sock, "a bound socket (call sock.bind(...) first)")
    except BaseException:
        dup_sock.close()
        raise
    return dup_sock


async def adopt(
    protocol_factory: Callable[[], P],
    sock: socket.socket | int,
    *,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> tuple[DatagramTransport, P]:
    """Serve a socket somebody else built (bound, non-blocking, UDP), like Twisted's ``adoptDatagramPort``.

    ``sock`` is a :class:`socket.socket` or a raw file descriptor. udpio duplicates the descriptor and works
    on its duplicate: **the caller still owns what it passed** and may (and should) close it right away;
    closing the transport closes only udpio's duplicate. A connected socket gives a connected endpoint.
    A blocking socket, a non-UDP socket or a closed descriptor raises :class:`~udpio.InvalidSocketError`.
    """
    options = TransportOptions(
        max_size=max_size,
        gro=gro,
        track_kernel_drops=track_kernel_drops,
        zero_copy=zero_copy,
        buffer_limit=buffer_limit,
    )
    own = validated_duplicate(sock)
    try:
        remote: Address | None = own.getpeername()
    except OSError:
        remote = None  # ENOTCONN: an unconnected socket
    except BaseException:
        own.close()
        raise
    return await start_transport(own, protocol_factory, options, remote=remote)
