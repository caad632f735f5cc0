"""Network interfaces by name, index or address, and multicast group validation, in one place.

An interface is named the way people name it (``"lo"``, ``1``, ``"127.0.0.1"``, ``"fe80::1%eth0"``) and
resolved once, at the public entry point, into a small frozen :class:`Interface`. Nothing here sends a
packet: names and indexes come from ``if_nametoindex(3)``/``if_nameindex(3)``, IPv4 addresses from the
``SIOCGIFADDR`` ioctl (netdevice(7)) and IPv6 addresses from ``/proc/net/if_inet6`` (Linux).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import ipaddress
import socket
import struct
import sys
from typing import TypeAlias

from ._addr import family_name
from ._errors import InvalidAddressError, InvalidGroupError, UnknownInterfaceError

IS_LINUX = sys.platform.startswith("linux")

#: ``SIOCGIFADDR`` and ``SIOCGIFFLAGS`` (include/uapi/linux/sockios.h; netdevice(7)). Python's socket module
#: does not export ioctl numbers; the BSDs use different ones, so address lookups are Linux-only.
SIOCGIFADDR = 0x8915
SIOCGIFFLAGS = 0x8913
#: ``IFF_LOOPBACK`` in ``ifr_flags`` (include/uapi/linux/if.h).
IFF_LOOPBACK = 0x8
#: ``struct ifreq``: ``char ifr_name[IFNAMSIZ=16]`` then a union whose largest member (``struct ifmap``)
#: is 24 bytes on 64-bit Linux (16 on 32-bit, where the kernel reads only the first 32 bytes of the 40).
_IFREQ = struct.Struct("16s24s")
#: In the union, ``ifr_addr`` is a ``struct sockaddr_in``: family (2), port (2), then the IPv4 address.
_IFR_ADDR_OFFSET = 16 + 4
#: ``ifr_flags`` is a ``short`` at the start of the union.
_IFR_FLAGS = struct.Struct("=16sh")
#: Where the kernel lists every IPv6 address: ``address index prefixlen scope flags name`` in hex.
PROC_IF_INET6 = "/proc/net/if_inet6"


@dataclasses.dataclass(frozen=True, slots=True)
class Interface:
    """A network interface of this host, as resolved by :func:`udpio.resolve_interface`.

    ``index`` is what the kernel uses (``ip_mreqn.imr_ifindex``, ``ipv6_mreq.ipv6mr_interface``);
    ``address`` is an address of the interface in the family asked for (the one given, else its primary
    IPv4 address / first IPv6 address), or ``None`` when it has none.
    """

    index: int
    name: str
    address: str | None = None

    def __str__(self) -> str:
        return self.name


#: What callers may pass where an interface is expected.
InterfaceSpec: TypeAlias = "str | int | Interface"


def ipv4_address(name: str) -> str | None:
    """The primary IPv4 address of interface ``name`` (``SIOCGIFADDR``), or ``None`` when it has none.

    Only the primary address: secondary addresses are not reported by this ioctl (netdevice(7)).
    """
    if not IS_LINUX:
        return None
    request = _IFREQ.pack(name.encode(), b"")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
        except OSError as exc:
            # EADDRNOTAVAIL: the interface has no IPv4 address; ENODEV: it vanished since we listed it.
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return None
            raise
    return socket.inet_ntoa(reply[_IFR_ADDR_OFFSET : _IFR_ADDR_OFFSET + 4])


def is_loopback(interface: Interface) -> bool:
    """Whether ``interface`` has the ``IFF_LOOPBACK`` flag (``SIOCGIFFLAGS``; guessed from the name off Linux)."""
    if not IS_LINUX:
        return interface.name.startswith("lo")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            reply = fcntl.ioctl(probe.fileno(), SIOCGIFFLAGS, _IFREQ.pack(interface.name.encode(), b""))
        except OSError:
            return False
    return bool(_IFR_FLAGS.unpack_from(reply)[1] & IFF_LOOPBACK)


def ipv6_addresses() -> list[tuple[str, int, str]]:
    """Every IPv6 address of this host as ``(address, index, name)`` (empty where there is no procfs)."""
    try:
        with open(PROC_IF_INET6, encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        address = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
        found.append((address, int(fields[1], 16), fields[5]))
    return found


def _ipv6_preference(address: str) -> tuple[int, str]:
    """Which IPv6 address names an interface: ``::1``, then link-local (multicast's usual scope), then the
    rest; in address order within each, so the choice does not depend on the kernel's list order."""
    parsed = ipaddress.IPv6Address(address)
    return (0 if parsed.is_loopback else 1 if parsed.is_link_local else 2, address)


def list_interfaces(family: int = socket.AF_INET) -> list[Interface]:
    """Every interface of this host, with an address of ``family`` where it has one."""
    return [_with_address(index, name, family) for index, name in socket.if_nameindex()]


def _with_address(index: int, name: str, family: int) -> Interface:
    if family == socket.AF_INET6:
        addresses = sorted((address for address, idx, _ in ipv6_addresses() if idx == index), key=_ipv6_preference)
        return Interface(index, name, addresses[0] if addresses else None)
    return Interface(index, name, ipv4_address(name))


def resolve_interface(spec: InterfaceSpec, family: int = socket.AF_INET) -> Interface:
    """Resolve an interface given by name (``"lo"``), index (``1``) or address (``"127.0.0.1"``,
    ``"::1"``, ``"fe80::1%eth0"``) into an :class:`Interface` with an address of ``family``.

    Raises :class:`~udpio.UnknownInterfaceError` (a :class:`ValueError`) naming ``spec`` when this host has
    no such interface, and for index 0 or a wildcard address (they mean "any interface": udpio never lets
    the kernel pick the interface by route, so multicast cannot leak out of the default route).
    """
    if isinstance(spec, Interface):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise UnknownInterfaceError(spec, "an interface name, index or address")
    if isinstance(spec, int):
        return _by_index(spec, family)
    text = spec.strip()
    if not text or "\x00" in text:
        raise UnknownInterfaceError(spec)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _by_name(text, family)
    if address.is_unspecified:
        raise UnknownInterfaceError(spec, "a specific interface, not the wildcard address (any interface)")
    if isinstance(address, ipaddress.IPv4Address):
        return _by_ipv4_address(str(address), spec, family)
    return _by_ipv6_address(address, spec, family)


def _by_index(index: int, family: int) -> Interface:
    if index <= 0:
        raise UnknownInterfaceError(index, "an interface index >= 1 (0 means any interface)")
    try:
        name = socket.if_indextoname(index)
    except (OSError, OverflowError):
        raise UnknownInterfaceError(index) from None
    return _with_address(index, name, family)


def _by_name(name: str, family: int) -> Interface:
    try:
        index = socket.if_nametoindex(name)
    except (OSError, UnicodeError):  # UnicodeEncodeError: a name with a lone surrogate
        raise UnknownInterfaceError(name) from None
    return _with_address(index, name, family)


def _by_ipv4_address(address: str, spec: str, family: int) -> Interface:
    for index, name in socket.if_nameindex():
        if ipv4_address(name) == address:
            found = _with_address(index, name, family)
            return found if family == socket.AF_INET6 else Interface(index, name, address)
    raise UnknownInterfaceError(spec, "the name, index or (primary) address of an interface on this host")


def _by_ipv6_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, spec: str, family: int) -> Interface:
    plain = str(ipaddress.IPv6Address(int(address)))
    scope = getattr(address, "scope_id", None)
    for candidate, index, name in ipv6_addresses():
        if candidate == plain and (scope is None or scope in (name, str(index))):
            found = _with_address(index, name, family)
            return Interface(index, name, plain) if family == socket.AF_INET6 else found
    raise UnknownInterfaceError(spec, "the name, index or address of an interface on this host")


def check_group(group: object, family: int = 0) -> tuple[int, str]:
    """Validate a multicast group address; return ``(family, group)`` with the group in canonical form.

    Raises :class:`~udpio.InvalidGroupError` (a :class:`ValueError`) naming the value when it is not an IP
    address in 224.0.0.0/4 or ff00::/8, is of the other family than ``family`` (0: either), or carries an
    IPv6 ``%scope`` (give the interface with ``interface=`` instead).
    """
    if not isinstance(group, str):
        raise InvalidGroupError(group)
    try:
        address = ipaddress.ip_address(group.strip())
    except ValueError:
        raise InvalidGroupError(group) from None
    if not address.is_multicast:
        raise InvalidGroupError(group)
    found = socket.AF_INET if address.version == 4 else socket.AF_INET6
    if family and found != family:
        wanted = "224.0.0.0/4" if family == socket.AF_INET else "ff00::/8"
        raise InvalidGroupError(group, f"an {family_name(family)} multicast address (in {wanted})")
    if getattr(address, "scope_id", None):
        raise InvalidGroupError(group, "a group address without %scope (pass the interface as interface=)")
    return found, str(address)


def check_source(source: object, family: int) -> str:
    """Validate the source of a source-specific membership: a unicast address of ``family``."""
    try:
        address = ipaddress.ip_address(source.strip() if isinstance(source, str) else "")
    except ValueError:
        raise InvalidAddressError("source", f"a unicast {family_name(family)} address", source) from None
    wanted = 4 if family == socket.AF_INET else 6
    if address.version != wanted or address.is_multicast or address.is_unspecified:
        raise InvalidAddressError("source", f"a unicast {family_name(family)} address", source)
    return str(address)
