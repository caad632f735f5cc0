"""udpio: fast, safe UDP for asyncio, on uvloop by default, with a Twisted compatibility layer.

The public API is exactly what ``__all__`` lists; everything else lives in private modules.
"""

from ._addr import MAX_PAYLOAD_IPV4 as MAX_PAYLOAD_IPV4
from ._addr import MAX_PAYLOAD_IPV6 as MAX_PAYLOAD_IPV6
from ._addr import Address as Address
from ._addr import format_address as format_address
from ._counters import Counters as Counters
from ._echo import EchoProtocol as EchoProtocol
from ._echo import EchoServer as EchoServer
from ._echo import serve_echo as serve_echo
from ._echo import start_echo as start_echo
from ._endpoint import adopt as adopt
from ._endpoint import connect as connect
from ._endpoint import listen as listen
from ._errors import DatagramTooLargeError as DatagramTooLargeError
from ._errors import EndpointBrokenError as EndpointBrokenError
from ._errors import EndpointBusyError as EndpointBusyError
from ._errors import EndpointClosedError as EndpointClosedError
from ._errors import HostNotFoundError as HostNotFoundError
from ._errors import InvalidAddressError as InvalidAddressError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import InvalidPortError as InvalidPortError
from ._errors import InvalidSocketError as InvalidSocketError
from ._loop import loop_kind as loop_kind
from ._loop import new_event_loop as new_event_loop
from ._loop import run as run
from ._protocols import ConnectedProtocol as ConnectedProtocol
from ._protocols import PeerRefused as PeerRefused
from ._protocols import start_periodic_sender as start_periodic_sender
from ._stream import DatagramEndpoint as DatagramEndpoint
from ._stream import open_endpoint as open_endpoint
from ._transport import DatagramTransport as DatagramTransport

__version__ = "0.1.0"

__all__ = [
    "MAX_PAYLOAD_IPV4",
    "MAX_PAYLOAD_IPV6",
    "Address",
    "ConnectedProtocol",
    "Counters",
    "DatagramEndpoint",
    "DatagramTooLargeError",
    "DatagramTransport",
    "EchoProtocol",
    "EchoServer",
    "EndpointBrokenError",
    "EndpointBusyError",
    "EndpointClosedError",
    "HostNotFoundError",
    "InvalidAddressError",
    "InvalidArgumentError",
    "InvalidPortError",
    "InvalidSocketError",
    "PeerRefused",
    "adopt",
    "connect",
    "format_address",
    "listen",
    "loop_kind",
    "new_event_loop",
    "open_endpoint",
    "run",
    "serve_echo",
    "start_echo",
    "start_periodic_sender",
]
