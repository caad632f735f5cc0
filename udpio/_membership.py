"""Every multicast socket option: memberships, TTL / hop limit, loopback, outgoing interface.

The one module (with ``_sockopts.py`` for the rest) that calls ``setsockopt``/``getsockopt``. Functions come
in pairs; each structure is packed at one place with the man page it comes from. Which errno means what is
decided in one table, :data:`_MEMBERSHIP_ERRORS`; errnos not in it are re-raised unchanged.

Measured on Linux 6.x (and provoked by ``tests/test_multicast.py`` on real sockets): joining twice gives
EADDRINUSE (any-source) or EADDRNOTAVAIL (same source again); leaving what was not joined gives
EADDRNOTAVAIL, or EINVAL for a source-specific leave of a group with no membership at all; joining a unicast
address as a group gives EINVAL (udpio refuses it before the kernel sees it).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Callable

from ._errors import AlreadyJoinedError, MembershipError, NotJoinedError
from ._interfaces import Interface, resolve_interface

IS_LINUX = sys.platform.startswith("linux")

# Numbers Python 3.10/3.11's socket module does not export, from include/uapi/linux/in.h and in6.h.
#: ``IP_ADD_SOURCE_MEMBERSHIP`` / ``IP_DROP_SOURCE_MEMBERSHIP`` (ip(7), Linux >= 2.4.22); the BSDs and macOS
#: use 70/71 and a different ``ip_mreq_source`` layout (below), so they are taken from the socket module there.
IP_ADD_SOURCE_MEMBERSHIP: int | None = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39 if IS_LINUX else None)
IP_DROP_SOURCE_MEMBERSHIP: int | None = getattr(socket, "IP_DROP_SOURCE_MEMBERSHIP", 40 if IS_LINUX else None)
#: ``MCAST_JOIN_SOURCE_GROUP`` / ``MCAST_LEAVE_SOURCE_GROUP`` (RFC 3678 protocol-independent API; Linux
#: include/uapi/linux/in.h, used at level ``IPPROTO_IPV6`` for IPv6 sockets). Linux-only here: macOS packs
#: ``struct group_source_req`` to 4 bytes, which this module does not model.
MCAST_JOIN_SOURCE_GROUP: int | None = 46 if IS_LINUX else None
MCAST_LEAVE_SOURCE_GROUP: int | None = 47 if IS_LINUX else None
#: ``IP_MULTICAST_ALL`` (ip(7), Linux >= 2.6.31) and ``IPV6_MULTICAST_ALL`` (Linux >= 4.20, in6.h): when on
#: (the default!) a socket bound to a wildcard address receives every group *any* socket of the host joined
#: on its port. udpio turns it off so a socket receives only the groups it joined itself.
IP_MULTICAST_ALL: int | None = getattr(socket, "IP_MULTICAST_ALL", 49 if IS_LINUX else None)
IPV6_MULTICAST_ALL: int | None = getattr(socket, "IPV6_MULTICAST_ALL", 29 if IS_LINUX else None)

#: ``struct ip_mreqn`` (ip(7)): group, local address (0: let the index decide), interface index.
_IP_MREQN = struct.Struct("=4s4si")
#: ``struct ipv6_mreq`` (ipv6(7)): group, interface index (``unsigned int``).
_IPV6_MREQ = struct.Struct("=16sI")
#: ``struct sockaddr_in6`` (ipv6(7)): family (host order), port, flowinfo, address, scope id; zero-padded to
#: 128 bytes it is a ``struct sockaddr_storage``.
_SOCKADDR_IN6 = struct.Struct("=H2s4s16sI")
_SOCKADDR_STORAGE_SIZE = 128
#: ``struct group_source_req`` (RFC 3678): ``uint32_t gsr_interface`` then two ``sockaddr_storage``, which
#: Linux aligns to a pointer (``_K_SS_ALIGNSIZE``): 4 bytes of padding after the index on 64-bit.
_GSR_HEAD = struct.Struct(f"=I{struct.calcsize('P') - 4}x")

# -- the errno table ----------------------------------------------------------------------------------

#: ``(operation, source-specific, errno)`` -> the named exception. Everything else is re-raised as it is.
_MEMBERSHIP_ERRORS: dict[tuple[str, bool, int], Callable[[int, str, Interface, str | None], MembershipError]] = {
    # ip_mc_join_group() / ipv6_sock_mc_join(): this socket already has the group on that interface. Also
    # what an any-source join of a group joined source-specifically gets.
    ("join", False, errno.EADDRINUSE): AlreadyJoinedError,
    # ip_mc_source() (IPv4 and, through MCAST_JOIN_SOURCE_GROUP, IPv6): the source is already in the
    # group's include list (measured on Linux 6.x; older kernels returned 0 and udpio would see no error).
    ("join", True, errno.EADDRNOTAVAIL): AlreadyJoinedError,
    # ip_mc_leave_group() / ipv6_sock_mc_drop(): no such membership on this socket.
    ("leave", False, errno.EADDRNOTAVAIL): NotJoinedError,
    # ip_mc_source(): the group is joined but not from this source.
    ("leave", True, errno.EADDRNOTAVAIL): NotJoinedError,
    # ip_mc_source(): no membership of the group at all ("must have a prior join" in net/ipv4/igmp.c).
    ("leave", True, errno.EINVAL): NotJoinedError,
}


def _translate(exc: OSError, operation: str, group: str, interface: Interface, source: str | None) -> OSError:
    err = exc.errno or 0
    named = _MEMBERSHIP_ERRORS.get((operation, source is not None, err))
    if named is not None:
        return named(err, group, interface, source)
    if operation == "join" and err == errno.ENOBUFS:
        # net/ipv4/igmp.c: a socket holds at most net.ipv4.igmp_max_memberships groups (20 by default).
        return OSError(
            err,
            f"cannot join group {group} on {interface.name}: this socket has as many memberships as the "
            "kernel allows (sysctl net.ipv4.igmp_max_memberships); use another socket",
        )
    return exc


# -- memberships --------------------------------------------------------------------------------------


def _ipv4_source_request(group: str, interface: Interface, source: str) -> bytes:
    if interface.address is None:
        raise NotImplementedError(
            f"IPv4 source-specific multicast names the interface by its IPv4 address (ip_mreq_source), "
            f"and interface {interface.name} has none"
        )
    multiaddr, iface, src = (socket.inet_aton(a) for a in (group, interface.address, source))
    if IS_LINUX:
        # Linux include/uapi/linux/in.h: imr_multiaddr, imr_interface, imr_sourceaddr.
        return multiaddr + iface + src
    # BSD and macOS netinet/in.h: imr_multiaddr, imr_sourceaddr, imr_interface.
    return multiaddr + src + iface


def _sockaddr_storage_in6(address: str) -> bytes:
    packed = _SOCKADDR_IN6.pack(socket.AF_INET6, b"\0\0", b"\0" * 4, socket.inet_pton(socket.AF_INET6, address), 0)
    return packed.ljust(_SOCKADDR_STORAGE_SIZE, b"\0")


def _group_source_request(group: str, interface: Interface, source: str) -> bytes:
    return _GSR_HEAD.pack(interface.index) + _sockaddr_storage_in6(group) + _sockaddr_storage_in6(source)


def _membership_call(
    sock: socket.socket, operation: str, group: str, interface: Interface, source: str | None
) -> None:
    join = operation == "join"
    if sock.family == socket.AF_INET:
        if source is None:
            # ip(7): ip_mreqn lets the interface be chosen by index; the address field stays 0.0.0.0.
            level, option = socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
            value = _IP_MREQN.pack(socket.inet_aton(group), b"\0" * 4, interface.index)
        else:
            number = IP_ADD_SOURCE_MEMBERSHIP if join else IP_DROP_SOURCE_MEMBERSHIP
            if number is None:
                raise NotImplementedError(f"IPv4 source-specific multicast is not available on {sys.platform}")
            level, option, value = socket.IPPROTO_IP, number, _ipv4_source_request(group, interface, source)
    elif source is None:
        # ipv6(7): ipv6_mreq takes the interface by index only.
        level, option = socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
        value = _IPV6_MREQ.pack(socket.inet_pton(socket.AF_INET6, group), interface.index)
    else:
        number = MCAST_JOIN_SOURCE_GROUP if join else MCAST_LEAVE_SOURCE_GROUP
        if number is None:
            raise NotImplementedError(
                f"IPv6 source-specific multicast (MCAST_JOIN_SOURCE_GROUP) is not implemented on {sys.platform}"
            )
        level, option, value = socket.IPPROTO_IPV6, number, _group_source_request(group, interface, source)
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        translated = _translate(exc, operation, group, interface, source)
        if translated is exc:
            raise
        raise translated from exc


def join_group(sock: socket.socket, group: str, interface: Interface, source: str | None = None) -> None:
    """Join ``group`` on ``interface`` (from ``source`` only, when given: source-specific multicast).

    ``group``/``source`` must be validated literals of the socket's family (see ``_interfaces``). Raises
    :class:`~udpio.AlreadyJoinedError`, :class:`NotImplementedError` where the platform lacks SSM, or the
    kernel's :class:`OSError`.
    """
    _membership_call(sock, "join", group, interface, source)


def leave_group(sock: socket.socket, group: str, interface: Interface, source: str | None = None) -> None:
    """Leave what :func:`join_group` joined; raises :class:`~udpio.NotJoinedError` when it was not joined.

    An any-source leave drops the whole group on that interface, sources included (kernel behaviour).
    """
    _membership_call(sock, "leave", group, interface, source)


# -- outgoing options ---------------------------------------------------------------------------------


def set_ttl(sock: socket.socket, ttl: int) -> None:
    """Set the TTL (IPv4) / hop limit (IPv6) of outgoing multicast datagrams (0..255)."""
    if sock.family == socket.AF_INET:
        # ip(7) says int and Linux accepts an int or one byte; the BSDs and macOS accept only a u_char
        # (as Twisted sends it), so one byte works everywhere.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", ttl))
    else:
        # ipv6(7): a plain int (-1 would mean the route default; udpio takes 0..255).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)


def get_ttl(sock: socket.socket) -> int:
    """The multicast TTL / hop limit the socket really has."""
    if sock.family == socket.AF_INET:
        # Asking for one byte: Linux then answers with one byte too (do_ip_getsockopt), as the BSDs do.
        return int(struct.unpack("B", sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1))[0])
    return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS)


def set_loopback(sock: socket.socket, on: bool) -> None:
    """Whether this host's own members receive what the socket sends to a group (``IP_MULTICAST_LOOP``).

    On Linux it has no effect when the outgoing interface is ``lo`` itself: the datagram goes out ``lo``
    and comes back in like any other, so local members get it either way (measured; the loop copy is made
    in ip_mc_output() / ip6_finish_output2() only for non-loopback devices).
    """
    if sock.family == socket.AF_INET:
        # ip(7): a boolean int on Linux, a u_char on the BSDs; one byte works on both (as for the TTL).
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, struct.pack("B", bool(on)))
    else:
        # ipv6(7): an int (u_int on the BSDs; same size).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(bool(on)))


def get_loopback(sock: socket.socket) -> bool:
    """Whether multicast loopback is on."""
    if sock.family == socket.AF_INET:
        return bool(struct.unpack("B", sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1))[0])
    return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP))


def set_interface(sock: socket.socket, interface: Interface) -> None:
    """Send multicast out of ``interface`` (``IP_MULTICAST_IF`` / ``IPV6_MULTICAST_IF``)."""
    if sock.family == socket.AF_INET:
        address = socket.inet_aton(interface.address or "0.0.0.0")
        # ip(7): an ip_mreqn; the index picks the device and the address is what getsockopt reports back
        # (Linux returns only an in_addr) and the source address when the socket is unbound. The BSDs
        # take only an in_addr.
        value = _IP_MREQN.pack(b"\0" * 4, address, interface.index) if IS_LINUX else address
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, value)
    else:
        # ipv6(7): the interface index as an int.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, interface.index)


def get_interface(sock: socket.socket) -> Interface | None:
    """The outgoing multicast interface the socket really has, or ``None`` when the kernel would choose.

    IPv4 reports only an address (``in_addr``: Linux's getsockopt never returns the ip_mreqn), resolved back
    into its interface; IPv6 reports the index.
    """
    if sock.family == socket.AF_INET:
        address = socket.inet_ntoa(sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4))
        if address == "0.0.0.0":
            return None
        return resolve_interface(address, socket.AF_INET)
    index = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF)
    return None if index == 0 else resolve_interface(index, socket.AF_INET6)


def set_multicast_all(sock: socket.socket, on: bool) -> bool:
    """Set ``IP_MULTICAST_ALL`` / ``IPV6_MULTICAST_ALL``; ``False`` where the kernel lacks the option.

    Forgives only ENOPROTOOPT (kernels before 2.6.31 / 4.20) and the platform not having it at all.
    """
    ipv4 = sock.family == socket.AF_INET
    option = IP_MULTICAST_ALL if ipv4 else IPV6_MULTICAST_ALL
    if option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_IP if ipv4 else socket.IPPROTO_IPV6, option, int(bool(on)))
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return False
        raise
    return True


def get_multicast_all(sock: socket.socket) -> bool | None:
    """Whether the socket receives groups joined by other sockets (``None`` where unknown)."""
    ipv4 = sock.family == socket.AF_INET
    option = IP_MULTICAST_ALL if ipv4 else IPV6_MULTICAST_ALL
    if option is None:
        return None
    try:
        return bool(sock.getsockopt(socket.IPPROTO_IP if ipv4 else socket.IPPROTO_IPV6, option))
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return None
        raise


def probe_route(family: int, group: str, interface: Interface) -> None:
    """Raise the kernel's :class:`OSError` if it has no route to send to ``group`` out of ``interface``.

    A throwaway socket with the same outgoing interface ``connect``\\ s to the group: UDP ``connect`` does
    the route lookup of a send (udp(7)) and sends nothing.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        set_interface(probe, interface)
        probe.connect((group, 9))
