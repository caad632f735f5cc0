# Type stub for the optional C extension udpio._core (udpio/_core.c); see udpio/_io_core.py.
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._addr import LocalAddress

RECV_BATCH: Final[int]
SEND_BATCH: Final[int]
GSO_MAX_SEGMENTS: Final[int]
GSO_MAX_BYTES: Final[int]
MAX_BUFFER_SIZE: Final[int]

class Receiver:
    def __init__(
        self,
        sink: Any,
        fileno: int,
        limits: Any,
        *,
        datagram_received: Callable[[bytes, Any], object] | None = ...,
        datagrams_received: Callable[[list[tuple[bytes, Any]]], object] | None = ...,
        datagram_received_on: Callable[[bytes, Any, LocalAddress], object] | None = ...,
        datagrams_received_on: Callable[[list[tuple[bytes, Any, LocalAddress]]], object] | None = ...,
        buffer_size: int = ...,
    ) -> None: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def batch(self) -> bool: ...
    @property
    def pktinfo(self) -> bool: ...
    def read_event(self) -> None: ...
    def stop(self) -> None: ...

def send_pairs(
    sock: socket.socket | int,
    pairs: Sequence[tuple[Any, Any] | tuple[Any, Any, tuple[int, int, bytes] | None]],
    start: int,
    *,
    gso: bool = ...,
) -> int: ...
