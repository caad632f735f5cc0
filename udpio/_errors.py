"""Every exception udpio raises on purpose.

Three families, each used the same way by every endpoint:

* bad arguments: subclasses of :class:`InvalidArgumentError` (itself a :class:`ValueError`) that carry the
  offending value and say what was expected;
* lifecycle: :class:`EndpointClosedError` (closed by you), :class:`EndpointBrokenError` (broken under you),
  :class:`EndpointBusyError` (two readers at once);
* OS failures stay :class:`OSError` subclasses (the errno is kept), with the address that failed in the message.
"""

from __future__ import annotations

import errno as _errno
import socket
from typing import Any

from ._limits import MAX_PORT


class InvalidArgumentError(ValueError):
    """A caller passed a value udpio cannot use; ``value`` holds it."""

    def __init__(self, what: str, expected: str, value: Any) -> None:
        self.what = what
        self.expected = expected
        self.value = value
        super().__init__(f"{what} must be {expected}, got {value!r}")


class InvalidPortError(InvalidArgumentError):
    """A port outside 0..65535 or not an int (or 0 where a destination is needed: 1..65535)."""

    def __init__(self, value: Any, what: str = "port", expected: str = f"an int in 0..{MAX_PORT}") -> None:
        super().__init__(what, expected, value)


class InvalidAddressError(InvalidArgumentError):
    """A host that is not a usable IP address (unparsable, wrong family, or a name where an IP is required)."""


class DatagramTooLargeError(InvalidArgumentError):
    """A datagram longer than the family allows (65507 bytes over IPv4, 65527 over IPv6) or than a set limit."""

    def __init__(self, size: int, limit: int, family_name: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"datagram size over {family_name}", f"at most {limit} bytes", size
        )
        # ValueError.args keeps the standard message; give the size up front for humans.
        self.args = (f"datagram of {size} bytes exceeds the {family_name} maximum of {limit} bytes",)


class InvalidSocketError(InvalidArgumentError):
    """A socket or file descriptor that cannot be adopted; the caller's socket is left untouched."""

    def __init__(self, value: Any, reason: str) -> None:
        self.reason = reason
        super().__init__("adopted socket", reason, value)


class EndpointClosedError(Exception):
    """The endpoint was closed by its owner; nothing more can be sent or received."""

    def __init__(self, what: str = "endpoint") -> None:
        super().__init__(f"{what} is closed")


class EndpointBrokenError(Exception):
    """The endpoint's socket failed under it (closed underneath, fatal OS error); ``__cause__`` says why."""

    def __init__(self, what: str = "endpoint") -> None:
        super().__init__(f"{what} is broken: its socket failed")


class EndpointBusyError(Exception):
    """Another task is already waiting to receive on this endpoint."""

    def __init__(self, what: str = "endpoint") -> None:
        super().__init__(f"another task is already receiving on this {what}")


class HostNotFoundError(socket.gaierror):
    """A host name could not be resolved (an :class:`OSError`, as the resolver's own error)."""

    def __init__(self, host: str, cause: socket.gaierror) -> None:
        super().__init__(cause.errno, f"cannot resolve host {host!r}: {cause.strerror}")
        self.host = host


def bind_error(exc: OSError, address: object) -> OSError:
    """Return ``exc`` as the same OSError subclass with the address that could not be bound in its message."""
    reason = exc.strerror or _errno.errorcode.get(exc.errno or 0, str(exc))
    new = type(exc)(exc.errno, f"cannot bind UDP socket to {address!r}: {reason}")
    return new


# -- multicast ----------------------------------------------------------------------------------------


#: What a multicast group must be, as error messages say it.
GROUP_RANGES = "an IPv4 address in 224.0.0.0/4 or an IPv6 address in ff00::/8"


class InvalidGroupError(InvalidAddressError):
    """A multicast group that is not an IP address in 224.0.0.0/4 (IPv4) or ff00::/8 (IPv6)."""

    def __init__(self, value: Any, expected: str = GROUP_RANGES) -> None:
        super().__init__("multicast group", expected, value)


class UnknownInterfaceError(InvalidArgumentError):
    """A network interface (name, index or address) this host does not have."""

    def __init__(self, value: Any, reason: str = "the name, index or address of an interface on this host") -> None:
        super().__init__("interface", reason, value)


class MembershipError(OSError):
    """A join or leave the kernel refused for a reason udpio names; the errno is kept.

    ``group``, ``interface`` (an :class:`udpio.Interface`) and ``source`` (``None`` for an any-source
    membership) say which membership it was.
    """

    def __init__(self, err: int, message: str, group: str, interface: Any, source: str | None) -> None:
        super().__init__(err, message)
        self.group = group
        self.interface = interface
        self.source = source


def _membership_text(group: str, interface: Any, source: str | None) -> str:
    where = getattr(interface, "name", interface)
    text = f"group {group} on interface {where}"
    return text if source is None else f"{text} from source {source}"


class AlreadyJoinedError(MembershipError):
    """Joining a group (or a group and source) this socket has already joined on that interface."""

    def __init__(self, err: int, group: str, interface: Any, source: str | None = None) -> None:
        super().__init__(err, f"already joined {_membership_text(group, interface, source)}", group, interface, source)


class NotJoinedError(MembershipError):
    """Leaving a group (or a group and source) this socket has not joined on that interface."""

    def __init__(self, err: int, group: str, interface: Any, source: str | None = None) -> None:
        super().__init__(err, f"not joined: {_membership_text(group, interface, source)}", group, interface, source)


class NoMulticastRouteError(OSError):
    """The kernel has no route to send to ``group`` out of ``interface``; the message says why."""

    def __init__(self, err: int, group: str, interface: Any, reason: str) -> None:
        where = getattr(interface, "name", interface)
        super().__init__(err, f"cannot send to multicast group {group} on interface {where}: {reason}")
        self.group = group
        self.interface = interface
