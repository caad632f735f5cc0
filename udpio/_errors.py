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


class InvalidArgumentError(ValueError):
    """A caller passed a value udpio cannot use; ``value`` holds it."""

    def __init__(self, what: str, expected: str, value: Any) -> None:
        self.what = what
        self.expected = expected
        self.value = value
        super().__init__(f"{what} must be {expected}, got {value!r}")


class InvalidPortError(InvalidArgumentError):
    """A port outside 0..65535 or not an int."""

    def __init__(self, value: Any, what: str = "port") -> None:
        super().__init__(what, "an int in 0..65535", value)


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
