"""The transport's options: one frozen object, validated once where the public function builds it.

Every public function that makes an endpoint (:func:`udpio.listen`, :func:`udpio.connect`, :func:`udpio.adopt`,
:func:`udpio.listen_multicast`, and those built on them) takes these options as explicit keyword parameters,
so a type checker rejects a misspelt or mistyped one; the function that owns the socket turns them into a
:class:`TransportOptions` and hands that object down to the transport. Socket options (``rcvbuf``,
``reuse_port``...) are not here: they are applied, and validated, by ``_sockopts.open_socket``.
"""

from __future__ import annotations

import dataclasses

from ._errors import InvalidArgumentError
from ._limits import DEFAULT_BUFFER_LIMIT, MAX_PAYLOAD_IPV6, max_payload


def check_bool(value: object, what: str) -> bool:
    """``value`` if it is ``True`` or ``False``; anything else (``1``, ``"no"``) is refused by name."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(what, "True or False", value)
    return value


def check_optional_bool(value: object, what: str) -> bool | None:
    """``value`` if it is ``None``, ``True`` or ``False`` (``None``: decided later, by udpio); else refused."""
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(what, "None, True or False", value)
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransportOptions:
    """How a transport reads and buffers; see :func:`udpio.listen` for what each option does.

    * ``max_size``: larger datagrams are dropped and counted (``None``: any size the family allows);
    * ``gro``: ask for UDP GRO (coalesced receives, split again before delivery);
    * ``track_kernel_drops``: ``SO_RXQ_OVFL`` on every receive;
    * ``zero_copy``: deliver ``memoryview`` slices of a reused buffer, valid only during the handler call;
    * ``buffer_limit``: hard cap of the send buffer, in bytes.
    """

    max_size: int | None = None
    gro: bool = False
    track_kernel_drops: bool = False
    zero_copy: bool = False
    buffer_limit: int = DEFAULT_BUFFER_LIMIT

    def __post_init__(self) -> None:
        max_size = self.max_size
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or not 0 <= max_size <= MAX_PAYLOAD_IPV6
        ):
            raise InvalidArgumentError("max_size", f"None or an int in 0..{MAX_PAYLOAD_IPV6} (bytes)", max_size)
        limit = self.buffer_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgumentError("buffer_limit", "an int >= 0 (bytes)", limit)
        check_bool(self.gro, "gro")
        check_bool(self.track_kernel_drops, "track_kernel_drops")
        check_bool(self.zero_copy, "zero_copy")

    def check_family(self, family: int) -> None:
        """Refuse a ``max_size`` the socket's family cannot carry (65527 is fine over IPv6 only)."""
        if self.max_size is not None and self.max_size > max_payload(family):
            raise InvalidArgumentError("max_size", f"at most {max_payload(family)}", self.max_size)
