"""Addresses: validation of hosts, ports and sizes, and resolution, in one place.

IPv6 is a peer of IPv4 here: addresses are passed through as the kernel gives them, 4-tuples
``(host, port, flowinfo, scope_id)`` for IPv6, so a link-local scope is never dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import TypeAlias

from ._errors import (
    DatagramTooLargeError,
    HostNotFoundError,
    InvalidAddressError,
    InvalidArgumentError,
    InvalidPortError,
)
from ._limits import C_INT_MAX, MAX_PORT, max_payload

#: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6, as the socket module returns them.
Address: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
#: What ``getsockname`` says of a socket bound to every address of its family.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})

_FAMILIES = {0: "any", socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def family_name(family: int) -> str:
    """``"IPv4"`` or ``"IPv6"`` (or ``"any"`` for AF_UNSPEC)."""
    return _FAMILIES.get(family, f"family {family}")


def check_family(family: int) -> int:
    """Validate an address family argument: AF_UNSPEC (0), AF_INET or AF_INET6."""
    if isinstance(family, bool) or not isinstance(family, int) or family not in _FAMILIES:
        raise InvalidAddressError("family", "socket.AF_INET, socket.AF_INET6 or 0", family)
    return int(family)


def check_port(port: object, what: str = "port") -> int:
    """Return ``port`` if it is an int in 0..65535, else raise :class:`InvalidPortError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise InvalidPortError(port, what)
    return port


def check_destination_port(port: object, what: str = "port") -> int:
    """A port to send or connect to: an int in 1..65535 (0 means "any" when binding, and nothing as a
    destination: the kernel refuses it with EINVAL or leaves the socket unconnected)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= MAX_PORT:
        raise InvalidPortError(port, what, f"an int in 1..{MAX_PORT} (a destination)")
    return port


def check_size(size: int, family: int, limit: int | None = None) -> None:
    """Raise :class:`DatagramTooLargeError` if ``size`` bytes cannot be sent on ``family`` (or exceed ``limit``)."""
    top = max_payload(family) if limit is None else limit
    if size > top:
        raise DatagramTooLargeError(size, top, family_name(family))


def ip_family(host: object) -> int:
    """The family of an IP literal (``"::1%lo"`` scoped form allowed), or :class:`InvalidAddressError`.

    Names are refused: this is for the places where resolving would block or be ambiguous
    (``sendto`` on the hot path, Twisted's ``connect``), exactly as Twisted refuses them.
    """
    if not isinstance(host, str):
        raise InvalidAddressError("host", "an IP address string", host)
    # inet_pton raises ValueError, not OSError, for a NUL or an unencodable character (a lone surrogate).
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET
    except (OSError, ValueError):
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return socket.AF_INET6
    except (OSError, ValueError):
        expected = _BRACKETS if _bracketed(host) else "an IPv4 or IPv6 address (not a name)"
        raise InvalidAddressError("host", expected, host) from None


#: Why ``"[::1]"`` is refused rather than read as ``::1``: brackets belong to URLs and ``host:port`` text
#: (RFC 3986 3.2.2), where they separate an IPv6 address from the port; udpio takes the host and the port
#: apart, as ``socket`` does, and one spelling per address keeps comparisons and ``format_address`` output
#: unambiguous.
_BRACKETS = (
    "an IP address or host name without brackets (::1, not [::1]: brackets only set an IPv6 address apart "
    "from a port)"
)


def _bracketed(host: str) -> bool:
    return "[" in host or "]" in host


def _looks_numeric(host: str) -> bool:
    """Whether ``host`` can only have been meant as an IP literal: it contains ``:`` (a DNS name never
    does), or its last label is all digits (no top-level domain is: RFC 1123 2.1, RFC 3696 2). Such a host
    that is not a valid literal is refused at once instead of being sent to DNS (``256.1.1.1``)."""
    if ":" in host or "%" in host:  # an IPv6 address, or a %scope: never part of a name
        return True
    last = host.rstrip(".").rpartition(".")[2]
    return last.isascii() and last.isdigit()


def _check_host(host: object) -> str:
    if not isinstance(host, str) or not host or "\x00" in host:
        raise InvalidAddressError("host", "a non-empty host name or IP address string", host)
    if _bracketed(host):
        raise InvalidAddressError("host", _BRACKETS, host)
    if not host.isprintable() or any(ch.isspace() for ch in host):
        # No name or literal has these ("1.2.3.4\n" would otherwise go to DNS as a name).
        raise InvalidAddressError("host", "a host name or IP address without spaces or control characters", host)
    return host


def resolve_numeric(host: str, port: int, family: int) -> tuple[int, Address] | None:
    """Resolve an IP literal without any lookup; ``None`` when ``host`` is a name.

    Returns ``(family, sockaddr)``. A literal of the other family than ``family`` asked for is an error.
    """
    _check_host(host)
    check_port(port)
    check_family(family)
    try:
        infos = socket.getaddrinfo(
            host, port, family, socket.SOCK_DGRAM, socket.IPPROTO_UDP, socket.AI_NUMERICHOST
        )
    except UnicodeError:
        # getaddrinfo encodes names with the IDNA codec, which refuses lone surrogates and labels over 63.
        raise InvalidAddressError(
            "host", "an IP address or a host name (IDNA labels of 1..63 characters)", host
        ) from None
    except socket.gaierror:
        try:
            found = ip_family(host)
        except InvalidAddressError:
            if _looks_numeric(host):
                raise InvalidAddressError("host", "a valid IPv4 or IPv6 address (or a host name)", host) from None
            return None
        # A literal that getaddrinfo refused: for this family (say which family it is), or for its %scope
        # (glibc takes interface names as scope on link-local and multicast IPv6 addresses only).
        expected = (
            f"an {family_name(family)} address"
            if family and family != found
            else "an IP address whose %scope names an interface of this host"
        )
        raise InvalidAddressError("host", expected, f"{host} ({family_name(found)})") from None
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr  # type: ignore[return-value]  # getaddrinfo types sockaddr loosely


async def resolve(host: str, port: int, family: int = 0) -> tuple[int, Address]:
    """Resolve ``host`` to ``(family, sockaddr)`` for UDP, without blocking the loop.

    IP literals are handled without a lookup; names go through ``loop.getaddrinfo`` and the
    first UDP result is taken. An unknown name raises :class:`HostNotFoundError` naming it. What can only be
    meant as a literal but is not a valid one (``"256.1.1.1"``, ``"1::2::3"``) raises
    :class:`InvalidAddressError` without a lookup, and so does a bracketed host (``"[::1]"``: write ``"::1"``).
    """
    numeric = resolve_numeric(host, port, family)
    if numeric is not None:
        return numeric
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM,
                                       proto=socket.IPPROTO_UDP)
    except socket.gaierror as exc:
        raise HostNotFoundError(host, exc) from exc
    if not infos:  # pragma: no cover - getaddrinfo raises rather than returning nothing
        raise HostNotFoundError(host, socket.gaierror(socket.EAI_NONAME, "no address"))
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr  # type: ignore[return-value]  # getaddrinfo types sockaddr loosely


def is_wildcard(sockname: object) -> bool:
    """Whether ``sockname`` (a socket's bound address) is the wildcard address of its family: the socket then
    receives datagrams sent to any address of the host."""
    return isinstance(sockname, tuple) and bool(sockname) and sockname[0] in WILDCARD_HOSTS


def format_address(addr: object) -> str:
    """``127.0.0.1:8007`` / ``[::1]:8007`` (scope kept as ``%N``) for messages and the CLI."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if len(addr) == 4 and addr[3]:
            host = f"{host}%{addr[3]}" if "%" not in str(host) else host
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return repr(addr)


@dataclasses.dataclass(frozen=True, slots=True)
class LocalAddress:
    """Where a datagram arrived: the address of this host it was sent to, and the interface it came in on.

    A protocol that defines ``datagram_received_on(data, addr, local)`` (or ``datagrams_received_on`` for lists
    of ``(data, addr, local)``) gets one with each datagram; ``transport.sendto(data, addr, source=local)``
    answers from that address. It matters on a socket bound to the wildcard address (``0.0.0.0``, ``::``) of a
    host with several addresses: a service address on ``lo`` (anycast, direct server return), or several
    links. Protocols without those methods pay nothing for it.

    * ``host``: the address as ``inet_ntop`` writes it (``::ffff:a.b.c.d`` for an IPv4 peer of a dual-stack
      socket, as the socket names its peers). For a datagram sent to a broadcast address or an IPv4 group it
      is the address of this host the kernel would answer from (``ipi_spec_dst``, ip(7)); for one sent to an
      IPv6 group, or when the kernel did not say, the wildcard (``0.0.0.0`` / ``::``), which as a source leaves
      the choice to the kernel.
    * ``interface``: the index of the interface the datagram came in on (``socket.if_indextoname`` names it;
      0 when unknown). As a source, used only with an IPv6 link-local host, whose scope it is.

    ``LocalAddress("10.0.0.100")`` is a source of your own choosing (any address of this host).
    """

    host: str
    interface: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or "%" in self.host:
            raise InvalidAddressError("host", "an IP address string (the interface goes in interface=)", self.host)
        ip_family(self.host)
        index = self.interface
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= C_INT_MAX:
            raise InvalidArgumentError("interface", f"an interface index, an int in 0..{C_INT_MAX}", index)


#: The address a datagram is sent from (``sendto(..., source=)``): a :class:`LocalAddress`, or an IP literal of
#: this host.
Source: TypeAlias = LocalAddress | str
