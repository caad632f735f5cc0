"""udpio: fast, safe UDP for asyncio, on uvloop by default, with a Twisted compatibility layer.

The public API is exactly what ``__all__`` lists; everything else lives in private modules.
"""

from ._addr import Address as Address
from ._addr import LocalAddress as LocalAddress
from ._addr import format_address as format_address
from ._awaitable import DatagramEndpoint as DatagramEndpoint
from ._awaitable import open_endpoint as open_endpoint
from ._connected import ConnectedProtocol as ConnectedProtocol
from ._connected import PeerRefused as PeerRefused
from ._counters import Counters as Counters
from ._echo import EchoProtocol as EchoProtocol
from ._echo import EchoServer as EchoServer
from ._echo import serve_echo as serve_echo
from ._echo import start_echo as start_echo
from ._errors import AlreadyJoinedError as AlreadyJoinedError
from ._errors import DatagramTooLargeError as DatagramTooLargeError
from ._errors import EndpointBrokenError as EndpointBrokenError
from ._errors import EndpointBusyError as EndpointBusyError
from ._errors import EndpointClosedError as EndpointClosedError
from ._errors import HostNotFoundError as HostNotFoundError
from ._errors import InvalidAddressError as InvalidAddressError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import InvalidGroupError as InvalidGroupError
from ._errors import InvalidPortError as InvalidPortError
from ._errors import InvalidSocketError as InvalidSocketError
from ._errors import MembershipError as MembershipError
from ._errors import NoMulticastRouteError as NoMulticastRouteError
from ._errors import NotJoinedError as NotJoinedError
from ._errors import UnknownInterfaceError as UnknownInterfaceError
from ._factories import adopt as adopt
from ._factories import connect as connect
from ._factories import listen as listen
from ._interfaces import Interface as Interface
from ._interfaces import list_interfaces as list_interfaces
from ._interfaces import resolve_interface as resolve_interface
from ._io_core import IO_CORE as IO_CORE
from ._limits import MAX_PAYLOAD_IPV4 as MAX_PAYLOAD_IPV4
from ._limits import MAX_PAYLOAD_IPV6 as MAX_PAYLOAD_IPV6
from ._loop import loop_kind as loop_kind
from ._loop import new_event_loop as new_event_loop
from ._loop import run as run
from ._multicast import GroupJoined as GroupJoined
from ._multicast import GroupLeft as GroupLeft
from ._multicast import Membership as Membership
from ._multicast import MulticastControl as MulticastControl
from ._multicast import MulticastEndpoint as MulticastEndpoint
from ._multicast import listen_multicast as listen_multicast
from ._multicast import multicast as multicast
from ._multicast import open_multicast as open_multicast
from ._notify import Acknowledged as Acknowledged
from ._notify import AcknowledgeSent as AcknowledgeSent
from ._notify import DatagramIgnored as DatagramIgnored
from ._notify import NotifyLogic as NotifyLogic
from ._notify import NotifyProtocol as NotifyProtocol
from ._notify import NotifyReceived as NotifyReceived
from ._notify import NotifyRefused as NotifyRefused
from ._notify import NotifySent as NotifySent
from ._notify import NotifyStep as NotifyStep
from ._periodic import start_periodic_sender as start_periodic_sender
from ._policy import DEFAULT_BLOCKED_PORTS as DEFAULT_BLOCKED_PORTS
from ._policy import DROP_AMPLIFICATION as DROP_AMPLIFICATION
from ._policy import DROP_BAD_ADDRESS as DROP_BAD_ADDRESS
from ._policy import DROP_DENIED as DROP_DENIED
from ._policy import DROP_GLOBAL_RATE as DROP_GLOBAL_RATE
from ._policy import DROP_LOOP as DROP_LOOP
from ._policy import DROP_MAPPED_SOURCE as DROP_MAPPED_SOURCE
from ._policy import DROP_NOT_ALLOWED as DROP_NOT_ALLOWED
from ._policy import DROP_NOT_UNICAST as DROP_NOT_UNICAST
from ._policy import DROP_OWN_PORT as DROP_OWN_PORT
from ._policy import DROP_SERVICE_PORT as DROP_SERVICE_PORT
from ._policy import DROP_SOURCE_PORT_ZERO as DROP_SOURCE_PORT_ZERO
from ._policy import DROP_SOURCE_RATE as DROP_SOURCE_RATE
from ._policy import DropReason as DropReason
from ._policy import PolicyConfig as PolicyConfig
from ._policy import SafetyPolicy as SafetyPolicy
from ._transport import DatagramTransport as DatagramTransport
from ._workers import EchoWorkers as EchoWorkers
from ._workers import serve_echo_workers as serve_echo_workers
from ._workers import start_echo_workers as start_echo_workers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BLOCKED_PORTS",
    "DROP_AMPLIFICATION",
    "DROP_BAD_ADDRESS",
    "DROP_DENIED",
    "DROP_GLOBAL_RATE",
    "DROP_LOOP",
    "DROP_MAPPED_SOURCE",
    "DROP_NOT_ALLOWED",
    "DROP_NOT_UNICAST",
    "DROP_OWN_PORT",
    "DROP_SERVICE_PORT",
    "DROP_SOURCE_PORT_ZERO",
    "DROP_SOURCE_RATE",
    "IO_CORE",
    "MAX_PAYLOAD_IPV4",
    "MAX_PAYLOAD_IPV6",
    "AcknowledgeSent",
    "Acknowledged",
    "Address",
    "AlreadyJoinedError",
    "ConnectedProtocol",
    "Counters",
    "DatagramEndpoint",
    "DatagramIgnored",
    "DatagramTooLargeError",
    "DatagramTransport",
    "DropReason",
    "EchoProtocol",
    "EchoServer",
    "EchoWorkers",
    "EndpointBrokenError",
    "EndpointBusyError",
    "EndpointClosedError",
    "GroupJoined",
    "GroupLeft",
    "HostNotFoundError",
    "Interface",
    "InvalidAddressError",
    "InvalidArgumentError",
    "InvalidGroupError",
    "InvalidPortError",
    "InvalidSocketError",
    "LocalAddress",
    "Membership",
    "MembershipError",
    "MulticastControl",
    "MulticastEndpoint",
    "NoMulticastRouteError",
    "NotJoinedError",
    "NotifyLogic",
    "NotifyProtocol",
    "NotifyReceived",
    "NotifyRefused",
    "NotifySent",
    "NotifyStep",
    "PeerRefused",
    "PolicyConfig",
    "SafetyPolicy",
    "UnknownInterfaceError",
    "adopt",
    "connect",
    "format_address",
    "list_interfaces",
    "listen",
    "listen_multicast",
    "loop_kind",
    "multicast",
    "new_event_loop",
    "open_endpoint",
    "open_multicast",
    "resolve_interface",
    "run",
    "serve_echo",
    "serve_echo_workers",
    "start_echo",
    "start_echo_workers",
    "start_periodic_sender",
]
