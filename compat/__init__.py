"""udpio.compat: the Twisted compatibility layer (requires the ``udpio[twisted]`` extra)."""

try:
    # twisted.internet, not just twisted: any folder named twisted/ without an __init__.py on sys.path makes a
    # bare ``import twisted`` succeed as a namespace package where Twisted is not installed (the repository had
    # one at its root until the plugin moved to compat/twisted_plugin/).
    import twisted.internet  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without Twisted installed
    raise ImportError("udpio.compat needs Twisted: pip install 'udpio[twisted]'") from exc

# Handlers across stacks (asyncio protocols on Twisted, Twisted protocols on udpio): see _adapters.py.
from ._adapters import TwistedAdapter as TwistedAdapter  # after the Twisted check above
from ._adapters import TwistedPortTransport as TwistedPortTransport
from ._adapters import UdpioMulticastPort as UdpioMulticastPort
from ._adapters import UdpioPort as UdpioPort
from ._adapters import adopt_twisted as adopt_twisted
from ._adapters import listen_multicast_twisted as listen_multicast_twisted
from ._adapters import listen_twisted as listen_twisted
from ._adapters import twisted_address as twisted_address

# The drop-in reactor (trial/twistd --reactor=udpio, python -m udpio.compat script.py): see _reactor.py.
from ._ports import MulticastPort as MulticastPort
from ._ports import UDPPort as UDPPort
from ._reactor import UdpioReactor as UdpioReactor
from ._reactor import install as install

__all__ = [
    "MulticastPort",
    "TwistedAdapter",
    "TwistedPortTransport",
    "UDPPort",
    "UdpioMulticastPort",
    "UdpioPort",
    "UdpioReactor",
    "adopt_twisted",
    "install",
    "listen_multicast_twisted",
    "listen_twisted",
    "twisted_address",
]
