"""Multicast endpoints: :func:`listen_multicast`, :func:`open_multicast` and the :class:`MulticastControl`
reachable from their transport with :func:`multicast`.

What Twisted's ``listenMulticast`` offers (join/leave at run time, TTL, loopback, outgoing interface,
``listenMultiple``) plus what it lacks: IPv6 groups, interfaces by name, index or address, source-specific
joins, named errors for "joined twice" / "not joined", getters that read the socket, and set-up that rolls
back. Traffic stays where it is sent: the outgoing interface is always set (``lo`` by default), so a send to
a group never follows the default route out of the host.

Socket options are set in ``_membership.py``; this module keeps the bookkeeping (what is joined) and the
lifecycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import _membership, _sockopts
from ._addr import Address, check_family, check_port, family_name
from ._awaitable import DEFAULT_QUEUE_SIZE, DatagramEndpoint, QueueProtocol
from ._errors import (
    EndpointClosedError,
    InvalidAddressError,
    InvalidArgumentError,
    NoMulticastRouteError,
    NotJoinedError,
    bind_error,
)
from ._interfaces import Interface, InterfaceSpec, check_group, check_source, is_loopback, resolve_interface
from ._limits import DEFAULT_BUFFER_LIMIT
from ._options import TransportOptions
from ._transport import DatagramTransport, start_transport

logger = logging.getLogger("udpio")

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: The interface multicast uses unless told otherwise: traffic stays on this host.
DEFAULT_INTERFACE = "lo"
#: Groups whose route was checked by :meth:`MulticastEndpoint.send`; cleared when full (bounded).
_ROUTE_CACHE_SIZE = 256
_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """One membership of a socket: ``group`` on ``interface``, from ``source`` only when not ``None``."""

    group: str
    interface: Interface
    source: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GroupJoined:
    """A group was joined (returned by :meth:`MulticastControl.join_group`)."""

    membership: Membership


@dataclasses.dataclass(frozen=True, slots=True)
class GroupLeft:
    """A group was left (returned by :meth:`MulticastControl.leave_group` and :meth:`~MulticastControl.close`)."""

    membership: Membership


def _check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 255:
        raise InvalidArgumentError("ttl", "an int in 0..255 (hops)", ttl)
    return ttl


def _check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(what, "True or False", value)
    return value


#: The control of every live multicast socket. Keyed by the socket (weakly), and the control holds the
#: socket and transport weakly, so an entry goes away with its endpoint.
_CONTROLS: weakref.WeakKeyDictionary[socket.socket, MulticastControl] = weakref.WeakKeyDictionary()


class MulticastControl:
    """Multicast options and memberships of one endpoint; get it with :func:`udpio.multicast`.

    Not thread-safe (call from the loop's thread). Every getter reads the socket, not a cached value.
    """

    def __init__(self, sock: socket.socket, interface: Interface) -> None:
        self._sock_ref = weakref.ref(sock)
        self._transport_ref: weakref.ReferenceType[DatagramTransport] | None = None
        self._family = sock.family
        self._join_interface = interface
        self._memberships: dict[Membership, None] = {}  # insertion-ordered set
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._memberships)} memberships"
        return f"<udpio.MulticastControl {self._join_interface.name} {state}>"

    def _attach(self, transport: DatagramTransport) -> None:
        self._transport_ref = weakref.ref(transport)

    def _transport(self) -> DatagramTransport | None:
        return None if self._transport_ref is None else self._transport_ref()

    def _socket(self) -> socket.socket:
        sock = self._sock_ref()
        transport = self._transport()
        if self._closed or sock is None or sock.fileno() == -1 or (transport is not None and transport.is_closing()):
            raise EndpointClosedError("multicast endpoint")
        return sock

    @property
    def family(self) -> int:
        """``socket.AF_INET`` or ``socket.AF_INET6``."""
        return self._family

    @property
    def default_interface(self) -> Interface:
        """The interface groups are joined on when :meth:`join_group` is not given one."""
        return self._join_interface

    @property
    def groups(self) -> frozenset[Membership]:
        """What this endpoint has joined (empty once closed: the kernel drops memberships on close)."""
        transport = self._transport()
        if self._closed or (transport is not None and transport.is_closing()):
            return frozenset()
        return frozenset(self._memberships)

    def _membership(self, group: str, interface: InterfaceSpec | None, source: str | None) -> Membership:
        _, canonical = check_group(group, self._family)
        iface = self._join_interface if interface is None else resolve_interface(interface, self._family)
        src = None if source is None else check_source(source, self._family)
        return Membership(canonical, iface, src)

    def join_group(
        self, group: str, interface: InterfaceSpec | None = None, source: str | None = None
    ) -> GroupJoined:
        """Join ``group`` on ``interface`` (default: the endpoint's), from ``source`` only when given.

        Raises :class:`~udpio.InvalidGroupError` (not a multicast address of this family),
        :class:`~udpio.UnknownInterfaceError`, :class:`~udpio.AlreadyJoinedError`,
        :class:`NotImplementedError` for source-specific joins where the platform lacks them, or the
        kernel's :class:`OSError`.
        """
        membership = self._membership(group, interface, source)
        _membership.join_group(self._socket(), membership.group, membership.interface, membership.source)
        self._memberships[membership] = None
        return GroupJoined(membership)

    def leave_group(
        self, group: str, interface: InterfaceSpec | None = None, source: str | None = None
    ) -> GroupLeft:
        """Leave what :meth:`join_group` joined; :class:`~udpio.NotJoinedError` when it was not joined.

        Leaving without ``source`` drops the group on that interface with every source joined for it.
        """
        membership = self._membership(group, interface, source)
        _membership.leave_group(self._socket(), membership.group, membership.interface, membership.source)
        self._forget(membership)
        return GroupLeft(membership)

    def _forget(self, membership: Membership) -> None:
        self._memberships.pop(membership, None)
        if membership.source is None:
            same_group = (membership.group, membership.interface)
            for other in [m for m in self._memberships if (m.group, m.interface) == same_group]:
                del self._memberships[other]

    @property
    def ttl(self) -> int:
        """TTL (IPv4) / hop limit (IPv6) of outgoing multicast, 0..255; 1 keeps it on the local link."""
        return _membership.get_ttl(self._socket())

    @ttl.setter
    def ttl(self, value: int) -> None:
        _membership.set_ttl(self._socket(), _check_ttl(value))

    @property
    def loopback(self) -> bool:
        """Whether this host's members receive what this endpoint sends (no effect when sending on ``lo``)."""
        return _membership.get_loopback(self._socket())

    @loopback.setter
    def loopback(self, value: bool) -> None:
        _membership.set_loopback(self._socket(), _check_bool(value, "loopback"))

    @property
    def interface(self) -> Interface | None:
        """The outgoing interface as the socket reports it; set it by name, index, address or Interface."""
        return _membership.get_interface(self._socket())

    @interface.setter
    def interface(self, value: InterfaceSpec) -> None:
        _membership.set_interface(self._socket(), resolve_interface(value, self._family))

    def check_route(self, group: str) -> None:
        """Raise :class:`~udpio.NoMulticastRouteError` saying why, if a send to ``group`` cannot leave.

        Sends nothing. The usual cause on Linux is IPv6 on ``lo``: the kernel makes no ``ff00::/8`` route
        for ``lo`` and turns any non-local route through ``lo`` into a reject route (net/ipv6/route.c).
        """
        _, canonical = check_group(group, self._family)
        sock = self._socket()
        interface = _membership.get_interface(sock)
        if interface is None:  # pragma: no cover - udpio always sets the outgoing interface
            raise NoMulticastRouteError(errno.EINVAL, canonical, None, "no outgoing interface is set")
        try:
            _membership.probe_route(self._family, canonical, interface)
        except OSError as exc:
            hint = _route_hint(self._family, interface, exc)
            raise NoMulticastRouteError(exc.errno or 0, canonical, interface, hint) from exc

    def leave_all(self) -> list[GroupLeft]:
        """Leave every group joined through this control (a membership the kernel already dropped, or on an
        interface that went away, counts as left). Other errors are raised after every leave was tried."""
        left: list[GroupLeft] = []
        failure: OSError | None = None
        sock = self._sock_ref()
        for membership in list(self._memberships):
            if membership not in self._memberships:
                continue  # dropped with its group by an any-source leave just before
            try:
                if sock is not None and sock.fileno() != -1:
                    _membership.leave_group(sock, membership.group, membership.interface, membership.source)
            except NotJoinedError:
                pass
            except OSError as exc:
                # ENODEV: the interface is gone, and the membership with it (net/ipv4/igmp.c ip_mc_destroy_dev).
                if exc.errno != errno.ENODEV and failure is None:
                    failure = exc
            self._forget(membership)
            left.append(GroupLeft(membership))
        if failure is not None:
            raise failure
        return left

    def _roll_back(self, sock: socket.socket) -> None:
        """Set-up failed: leave what was joined (logging, not raising, what cannot be left), close the socket."""
        try:
            self.leave_all()
        except OSError as exc:  # pragma: no cover - leaving on a socket udpio just made does not fail
            logger.debug("udpio: leaving groups during roll-back failed: %r", exc)
        finally:
            self._closed = True
            sock.close()

    def close(self) -> list[GroupLeft]:
        """Leave every group, then close the endpoint's transport. Idempotent."""
        if self._closed:
            return []
        try:
            return self.leave_all()
        finally:
            self._closed = True
            transport = self._transport()
            if transport is not None:
                transport.close()


def _route_hint(family: int, interface: Interface, exc: OSError) -> str:
    if family == socket.AF_INET6 and is_loopback(interface):
        return (
            "Linux has no IPv6 multicast route on the loopback interface (it makes none for lo and turns "
            "non-local routes through lo into reject routes); as root, 'ip -6 route add local ff00::/8 dev "
            "lo table local' allows it, or use IPv4 on lo or a real/veth interface"
        )
    return (
        f"no multicast-capable route out of {interface.name} ({exc.strerror}): is it up, with the MULTICAST "
        "flag, and a route for 224.0.0.0/4 or ff00::/8 on it?"
    )


def multicast(transport: asyncio.BaseTransport) -> MulticastControl:
    """The :class:`MulticastControl` of a transport made by :func:`listen_multicast` (or of
    :attr:`MulticastEndpoint.transport <DatagramEndpoint.transport>`); :class:`~udpio.InvalidArgumentError`
    for any other transport."""
    sock = transport.get_extra_info("socket")
    control = _CONTROLS.get(sock) if isinstance(sock, socket.socket) else None
    if control is None or not isinstance(transport, DatagramTransport):
        raise InvalidArgumentError("transport", "a transport made by udpio.listen_multicast", transport)
    if control._transport() is None:
        control._attach(transport)
    return control


def _groups(group: str | Sequence[str] | None) -> list[str]:
    if group is None:
        return []
    if isinstance(group, str):
        return [group]
    if isinstance(group, Sequence):
        return list(group)
    raise InvalidArgumentError("group", "a group address, a sequence of them, or None", group)


async def listen_multicast(
    protocol_factory: Callable[[], P],
    port: int = 0,
    *,
    group: str | Sequence[str] | None = None,
    interface: InterfaceSpec = DEFAULT_INTERFACE,
    source: str | None = None,
    family: int = 0,
    host: str | None = None,
    listen_multiple: bool = False,
    ttl: int = 1,
    loopback: bool = True,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    zero_copy: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> tuple[DatagramTransport, P]:
    """Listen on a multicast ``port`` and join ``group`` (one address, several, or none yet) on
    ``interface``; returns ``(transport, protocol)`` with udpio's :class:`~udpio.DatagramTransport`.

    Join, leave and change options at run time through ``udpio.multicast(transport)`` (usable from the
    protocol's ``connection_made``). Send to the group with ``transport.sendto(data, (group, port))``.

    * ``interface``: name (``"lo"``, default), index or address; used for the joins and as the outgoing
      interface, so nothing leaves by the default route. Never "any interface".
    * ``source``: join source-specifically (SSM): only datagrams from this address are delivered.
    * ``family``: taken from the first group; IPv4 when there is none and it is 0.
    * ``host``: the address to bind (default the wildcard, needed to receive groups; a group address
      restricts the socket to that group).
    * ``listen_multiple``: share the port with other sockets and processes (``SO_REUSEADDR``, and
      ``SO_REUSEPORT`` where it exists); off by default.
    * ``ttl`` (0..255, default 1: the local link only), ``loopback`` (this host's members receive what is
      sent; on by default). Other options as :func:`udpio.listen`.

    The socket receives only the groups it joined itself (``IP_MULTICAST_ALL`` off on Linux). If any step
    fails, what was joined is left and the socket closed before the error is raised.
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
    groups = _groups(group)
    checked: list[str] = []
    for item in groups:
        fam, canonical = check_group(item, family)
        family = family or fam
        checked.append(canonical)
    family = family or socket.AF_INET
    src = None if source is None else check_source(source, family)
    iface = resolve_interface(interface, family)
    _check_ttl(ttl)
    _check_bool(loopback, "loopback")
    _check_bool(listen_multiple, "listen_multiple")
    bind_host = _WILDCARD[family] if host is None else host
    sock = _sockopts.open_socket(
        family,
        reuse_addr=listen_multiple,
        reuse_port=listen_multiple and hasattr(socket, "SO_REUSEPORT"),
        rcvbuf=rcvbuf,
        sndbuf=sndbuf,
    )
    control = MulticastControl(sock, iface)
    try:
        address = _bind_address(family, bind_host, port)
        # Outgoing options first: from here on no send can leave by the default route.
        _membership.set_interface(sock, iface)
        _membership.set_ttl(sock, ttl)
        _membership.set_loopback(sock, loopback)
        _membership.set_multicast_all(sock, False)
        try:
            sock.bind(address)
        except OSError as exc:
            raise bind_error(exc, address) from exc
        for item in checked:
            control.join_group(item, iface, src)
    except BaseException:
        control._roll_back(sock)
        raise
    _CONTROLS[sock] = control
    # start_transport closes the socket on failure; closing drops every membership (ip_mc_drop_socket()).
    transport, protocol = await start_transport(sock, protocol_factory, options)
    control._attach(transport)
    return transport, protocol


def _bind_address(family: int, host: str, port: int) -> Address:
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise InvalidAddressError("host", f"an {family_name(family)} address to bind", host) from None
    return infos[0][4]  # type: ignore[return-value]  # getaddrinfo types sockaddr loosely


class MulticastEndpoint(DatagramEndpoint):
    """An awaitable multicast endpoint (a :class:`~udpio.DatagramEndpoint`) made by :func:`open_multicast`.

    :attr:`multicast` is its :class:`MulticastControl`. :meth:`send` to a group checks once per group that
    the kernel can route it and raises :class:`~udpio.NoMulticastRouteError` saying why if not; closing
    leaves every group.
    """

    def __init__(self, transport: DatagramTransport, protocol: QueueProtocol) -> None:
        super().__init__(transport, protocol)
        self._control = multicast(transport)
        self._routed: set[str] = set()

    def __repr__(self) -> str:
        return f"<udpio.MulticastEndpoint {self.transport!r}>"

    @property
    def multicast(self) -> MulticastControl:
        """Join, leave, TTL, loopback, outgoing interface."""
        return self._control

    def _check_group_route(self, addr: Address | None) -> None:
        if addr is None or not isinstance(addr, tuple) or not addr or addr[0] in self._routed:
            return
        try:
            check_group(addr[0], self._control.family)
        except ValueError:
            return  # not a group of this family: a unicast send, checked by the transport
        self._control.check_route(addr[0])
        if len(self._routed) >= _ROUTE_CACHE_SIZE:
            self._routed.clear()
        self._routed.add(addr[0])

    async def send(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        """Send one datagram to a group or a unicast peer (see :meth:`DatagramEndpoint.send`)."""
        self._check_group_route(addr)
        await super().send(data, addr)

    def send_nowait(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        """Send without waiting for buffer room; routes to groups checked as in :meth:`send`."""
        self._check_group_route(addr)
        super().send_nowait(data, addr)

    def close(self) -> None:
        """Leave every group and close. Idempotent."""
        self._control.close()


async def open_multicast(
    port: int = 0,
    *,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    group: str | Sequence[str] | None = None,
    interface: InterfaceSpec = DEFAULT_INTERFACE,
    source: str | None = None,
    family: int = 0,
    host: str | None = None,
    listen_multiple: bool = False,
    ttl: int = 1,
    loopback: bool = True,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    max_size: int | None = None,
    gro: bool = False,
    track_kernel_drops: bool = False,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
) -> MulticastEndpoint:
    """An awaitable multicast endpoint: :func:`listen_multicast`'s options (but ``zero_copy``: the endpoint
    queues what it receives, so it owns it), ``await ep.send(data, (group, port))``, ``await ep.recv()``,
    ``async for``, ``async with`` (which leaves every group on exit)."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise InvalidArgumentError("queue_size", "an int >= 1 (datagrams)", queue_size)

    def factory() -> QueueProtocol:
        return QueueProtocol(queue_size)

    transport, protocol = await listen_multicast(
        factory, port, group=group, interface=interface, source=source, family=family, host=host,
        listen_multiple=listen_multiple, ttl=ttl, loopback=loopback, rcvbuf=rcvbuf, sndbuf=sndbuf,
        max_size=max_size, gro=gro, track_kernel_drops=track_kernel_drops, buffer_limit=buffer_limit,
    )
    try:
        return MulticastEndpoint(transport, protocol)
    except BaseException:  # pragma: no cover - building the wrapper does not fail
        transport.abort()
        raise
