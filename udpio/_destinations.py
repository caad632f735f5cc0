"""Where a transport may send: destinations validated once, then remembered (bounded) for the hot path.

The send path inlines the cache lookup (``addr in destinations.cache and type(addr[1]) is int``) and calls
:meth:`Destinations.check` only on a miss. The exact-int check is what makes the cache honest: ``True`` and
``1.0`` equal ``1`` and hash alike, so a set alone would take ``(host, True)`` for ``(host, 1)``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from ._addr import Address, check_port, format_address, ip_family
from ._errors import InvalidAddressError
from ._limits import ADDRESS_CACHE_SIZE


class Destinations:
    """The destinations of one socket of ``family``: any IP literal of that family, or only ``peer`` once the
    socket is connected. ``v6only()`` says whether an IPv6 socket refuses IPv4-mapped peers (asked only to
    word an error)."""

    def __init__(self, family: int, peer: Address | None, v6only: Callable[[], bool]) -> None:
        self.family = family
        self.peer = peer
        #: Validated destinations (cleared when full, so ever new destinations cannot grow it).
        self.cache: set[Any] = set()
        self._v6only = v6only

    def connected(self, peer: Address) -> None:
        """The socket was connected to ``peer``: only it (or ``None``) is a destination from now on."""
        self.peer = peer
        self.cache.clear()

    def check(self, addr: Any) -> Address | None:
        """What to send to for ``addr`` (``None`` on a connected socket), remembered when it is an address.
        Raises :class:`~udpio.InvalidAddressError` / :class:`~udpio.InvalidPortError` naming the value."""
        peer = self.peer
        if peer is not None:
            if addr is None or addr == peer:
                return None
            raise InvalidAddressError("addr", f"None or the connected peer {format_address(peer)}", addr)
        if addr is None:
            raise InvalidAddressError("addr", "a (host, port) destination on an unconnected endpoint", None)
        try:
            if addr in self.cache and type(addr[1]) is int:
                return addr  # type: ignore[no-any-return]  # validated when it was cached
        except TypeError:  # unhashable (a list): refused below
            pass
        if self.family == socket.AF_INET6:
            if not isinstance(addr, tuple) or len(addr) not in (2, 4):
                raise InvalidAddressError("addr", "a (host, port) or (host, port, flowinfo, scope_id) tuple", addr)
        elif not isinstance(addr, tuple) or len(addr) != 2:
            raise InvalidAddressError("addr", "a (host, port) tuple", addr)
        check_port(addr[1])
        if len(addr) == 4 and not all(type(field) is int for field in addr[2:]):
            raise InvalidAddressError("addr", "a 4-tuple whose flowinfo and scope_id are ints", addr)
        if ip_family(addr[0]) != self.family:
            raise InvalidAddressError("addr", self._family_advice(), addr)
        if len(self.cache) >= ADDRESS_CACHE_SIZE:
            self.cache.clear()
        self.cache.add(addr)
        return addr  # type: ignore[no-any-return]  # checked above: a tuple of an IP literal and ints

    def _family_advice(self) -> str:
        if self.family == socket.AF_INET:
            return "an IPv4 destination (this socket is IPv4)"
        if self._v6only():
            # udpio's own IPv6 sockets are IPv6-only (IPV6_V6ONLY): ::ffff:a.b.c.d would fail with ENETUNREACH.
            return (
                "an IPv6 destination: this socket is IPv6-only; to reach IPv4 peers, listen on an IPv4 socket "
                "(or adopt a dual-stack one)"
            )
        return "an IPv6 destination (this dual-stack socket reaches IPv4 peers as ::ffff:a.b.c.d)"
