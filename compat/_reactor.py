"""The drop-in Twisted reactor: Twisted's asyncio reactor on udpio's loop (uvloop when installed), whose UDP
ports are udpio's.

``udpio.compat.install()`` (or ``trial --reactor=udpio``, ``twistd --reactor=udpio``, ``python -m udpio.compat
script.py``) installs it; existing Twisted code then runs unchanged. Only ``listenUDP``, ``listenMulticast``
and ``adoptDatagramPort`` differ from Twisted's ``AsyncioSelectorReactor``: they return the ports of
:mod:`udpio.compat._ports`. TCP, TLS, timers, threads, ``callFromThread``, processes and signals are
Twisted's own, running on the same loop, with what uvloop would change repaired: a child's exit reaches the
reactor through a pidfd and through a SIGCHLD handler that does not rely on the signal wake-up descriptor
(:mod:`udpio.compat._children`), and a descriptor libuv stops watching after an error event is registered
again (:meth:`UdpioReactor._readOrWrite`).

This module is also what the Twisted plugin names (``compat/twisted_plugin/twisted/plugins/udpio_reactor.py``):
Twisted calls its :func:`install` with no arguments.
"""

from __future__ import annotations

import asyncio
import select
import socket
import sys
import warnings
from typing import Any

from twisted.internet import error as terror
from twisted.internet._signals import SignalHandling, _MultiSignalHandling
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import IReactorMulticast, IReactorSocket, IReactorUDP
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.python.log import callWithLogger
from twisted.python.runtime import platformType
from zope.interface import implementer  # type: ignore[import-untyped]  # zope ships no type information

from udpio._errors import InvalidArgumentError
from udpio._loop import loop_kind, new_event_loop

from ._children import ChildSignals, watch_exit
from ._ports import DEFAULT_MAX_PACKET_SIZE, MulticastPort, UDPPort

__all__ = ["UdpioReactor", "install"]

SIGCHLD_ONLY_ON_UVLOOP = (
    "udpio's reactor on uvloop cannot watch this child through a pidfd (no pidfd_open(2) here: Linux 5.3 "
    "or later has it), so its exit is reported through SIGCHLD alone. That works until asyncio code on the "
    "same loop starts a subprocess of its own: libuv then takes SIGCHLD from Python for good, and a child "
    "that outlives its pipes never gets processEnded. A program that does both should use loop='asyncio'."
)


@implementer(IReactorUDP, IReactorMulticast, IReactorSocket)
class UdpioReactor(AsyncioSelectorReactor):
    """Twisted's ``AsyncioSelectorReactor`` whose UDP ports run on udpio's transport.

    ``eventloop`` defaults to a new loop from :func:`udpio.new_event_loop` (uvloop when installed, unless
    ``$UDPIO_LOOP`` says ``asyncio``), made the current event loop. Use :func:`install` rather than building
    one: Twisted wants exactly one installed reactor.

    UDP ports appear in ``getReaders()`` while they read, and ``removeAll()`` (hence ``disconnectAll()`` at
    shutdown, and trial's dirty-reactor check) takes them as it takes Twisted's own ports.

    ``hold_writes`` (default on): what a protocol writes from ``datagramReceived`` is sent when the read
    event's datagrams are all delivered, replies to one peer together in one GSO system call; a send error
    is then logged (as Twisted logs what ``datagramReceived`` raises) instead of raised by ``write``. Off,
    every ``write`` is one system call and raises its own errors, exactly as on Twisted.

    Processes, signals and TCP behave as on Twisted's reactors on either loop: ``spawnProcess`` children are
    reaped through a pidfd as well as SIGCHLD, and on uvloop a descriptor with an error pending after a read
    event is registered again (libuv would stop watching it). See docs/twisted.md, "Processes, signals and TCP
    on uvloop".
    """

    def __init__(self, eventloop: asyncio.AbstractEventLoop | None = None, *, hold_writes: bool = True) -> None:
        if not isinstance(hold_writes, bool):
            raise InvalidArgumentError("hold_writes", "True or False", hold_writes)
        self.hold_writes = hold_writes
        self._uvloop = False  # set once the loop is known: see _readOrWrite and spawnProcess
        self._warned_sigchld = False
        self._error_probe: select.poll | None = None  # uvloop only (no poll(2) on Windows): see _rearm_if_error
        self._udpPorts: dict[UDPPort, None] = {}  # insertion-ordered set
        created = eventloop is None
        loop = new_event_loop() if eventloop is None else eventloop
        try:
            if created:
                asyncio.set_event_loop(loop)
            super().__init__(loop)
            self._uvloop = loop_kind(loop) == "uvloop"
            if self._uvloop:
                self._error_probe = select.poll()  # one descriptor at a time, reused
        except BaseException:
            if created:
                asyncio.set_event_loop(None)
                loop.close()
            raise

    def __repr__(self) -> str:
        return f"<udpio.compat.UdpioReactor on {loop_kind(self._asyncioEventloop)}>"

    # -- uvloop: keep watching a descriptor after an error event ------------------------------------------

    def _readOrWrite(self, selectable: Any, read: bool) -> None:
        """Twisted's dispatch of a read or write event, then, on uvloop, after a read event, a check that the
        loop still watches the descriptor.

        libuv ends a poll watcher when ``epoll`` reports ``POLLERR`` (``uv__poll_io`` in src/unix/poll.c;
        libuv's docs: "polling is discontinued for the file handle") and uvloop then runs the reader and
        writer callbacks once and closes its handle, telling no one (MagicStack/uvloop#552,
        twisted/twisted#11904). A TCP connection reset while bytes are still unread gets exactly that: one
        ``doRead`` takes some of the bytes, the reset stays pending behind the rest, and the connection never
        reads again nor learns it is lost (Twisted's ``test_resumeProducingThrows`` waited forever). Twisted
        relies on a selector loop reporting the descriptor until the error has been read. So here a
        descriptor Twisted still watches that has ``POLLERR`` pending after a read event is registered
        afresh, and the next turn reads on, as a selector loop would.

        Only read events are checked (one ``poll(2)`` each): uvloop runs the reader first whenever there is
        one, and a write-only descriptor's pending error fails the ``send``/``write`` that event makes, which
        ends Twisted's connection (TCP, Unix sockets, pipes). On the standard loop nothing of this runs.
        """
        super()._readOrWrite(selectable, read)  # type: ignore[no-untyped-call]  # unannotated
        if read and self._uvloop:
            self._rearm_if_error(selectable)

    def _rearm_if_error(self, selectable: Any) -> None:
        probe = self._error_probe
        reading = selectable in self._readers
        writing = selectable in self._writers
        if probe is None or not (reading or writing):  # lost, or no longer watched: nothing to keep alive
            return
        fd = self._readers[selectable] if reading else self._writers[selectable]
        probe.register(fd, 0)  # no events asked: poll(2) reports POLLERR, POLLHUP and POLLNVAL regardless
        try:
            events = probe.poll(0)
        finally:
            probe.unregister(fd)
        if not events or not events[0][1] & select.POLLERR:
            return
        # Remove, then add: removing is what makes uvloop forget the handle it is closing (or has closed);
        # the new handle reports what is pending on the next turn. Removing from inside the callback that
        # uvloop's error path is running is the same as any callback removing its own reader.
        loop = self._asyncioEventloop
        if reading:
            loop.remove_reader(fd)
            loop.add_reader(fd, callWithLogger, selectable, self._readOrWrite, selectable, True)
        if writing:
            loop.remove_writer(fd)
            loop.add_writer(fd, callWithLogger, selectable, self._readOrWrite, selectable, False)

    # -- IReactorUDP, IReactorMulticast, IReactorSocket (datagram part) -----------------------------------

    def listenUDP(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> UDPPort:
        """Serve ``protocol`` on UDP ``port`` of ``interface`` (``""``: every IPv4 address; an IPv6 literal for
        IPv6); ``startProtocol`` has run when this returns. Raises ``CannotListenError`` (bind failed) and
        ``InvalidAddressError`` (``interface`` is not an IP address), as Twisted does."""
        udp_port = UDPPort(port, protocol, interface, maxPacketSize, self)
        udp_port.startListening()
        return udp_port

    def listenMulticast(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = DEFAULT_MAX_PACKET_SIZE,
        listenMultiple: bool = False,
    ) -> MulticastPort:
        """As :meth:`listenUDP`, with Twisted's multicast methods on the port (``joinGroup``, ``setTTL``...);
        ``listenMultiple`` lets several sockets share the port."""
        multicast_port = MulticastPort(port, protocol, interface, maxPacketSize, self, listenMultiple)
        multicast_port.startListening()
        return multicast_port

    def adoptDatagramPort(
        self,
        fileDescriptor: int,
        addressFamily: socket.AddressFamily,
        protocol: AbstractDatagramProtocol,
        maxPacketSize: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> UDPPort:
        """Serve ``protocol`` on a bound, non-blocking UDP socket made elsewhere. The port works on a duplicate
        of ``fileDescriptor``: the caller still owns it and may close it at once (as on Twisted). A connected
        socket gives a connected port. Raises ``UnsupportedAddressFamily`` for a family other than IPv4/IPv6
        and :class:`~udpio.InvalidSocketError` for a descriptor that cannot be served."""
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            raise terror.UnsupportedAddressFamily(addressFamily)
        udp_port = UDPPort._fromListeningDescriptor(self, fileDescriptor, addressFamily, protocol, maxPacketSize)
        udp_port.startListening()
        return udp_port

    # -- processes and signals (see _children.py) -------------------------------------------------------------

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        """Twisted's ``spawnProcess`` (same arguments, same transport), with the child's exit watched through
        a pidfd where the platform has them, so ``processEnded`` does not depend on SIGCHLD reaching the
        reactor (on uvloop it may not)."""
        transport = super().spawnProcess(*args, **kwargs)  # type: ignore[no-untyped-call]  # unannotated
        watched = watch_exit(transport, self._addInternalReader, self._removeInternalReader)
        if not watched and self._uvloop and transport.pid is not None and not self._warned_sigchld:
            # Not silent: this child depends on SIGCHLD, which libuv takes from Python for good once asyncio
            # code on this loop starts a subprocess of its own (see _children.py).
            self._warned_sigchld = True
            warnings.warn(SIGCHLD_ONLY_ON_UVLOOP, RuntimeWarning, stacklevel=2)
        return transport

    def _signalsFactory(self) -> SignalHandling:
        """Twisted's SIGINT/SIGTERM handling as it is, and its SIGCHLD handling with the wake-up that works on
        uvloop (:class:`~udpio.compat._children.ChildSignals` in place of Twisted's ``_ChildSignalHandling``)."""
        if platformType != "posix":
            return super()._signalsFactory()  # no SIGCHLD to handle
        return _MultiSignalHandling(
            (
                ReactorBase._signalsFactory(self),
                ChildSignals(self._addInternalReader, self._removeInternalReader),
            )
        )

    # -- the ports among the reactor's selectables ----------------------------------------------------------

    def _portStarted(self, port: UDPPort) -> None:
        self._udpPorts[port] = None

    def _portStopped(self, port: UDPPort) -> None:
        self._udpPorts.pop(port, None)

    def getReaders(self) -> list[Any]:
        """Twisted's readers plus the UDP ports that are reading."""
        readers: list[Any] = super().getReaders()  # type: ignore[no-untyped-call]  # unannotated
        return readers + [port for port in self._udpPorts if port.reading]

    def removeAll(self) -> list[Any]:
        """Stop watching everything, UDP ports included, and return what was watched (sockets stay open: the
        caller, e.g. ``disconnectAll``, closes them with ``connectionLost``)."""
        removed: list[Any] = super().removeAll()  # type: ignore[no-untyped-call]  # unannotated
        ports = list(self._udpPorts)
        self._udpPorts.clear()
        for port in ports:
            port._pauseReading()
        return removed + ports


def _already_installed() -> str:
    installed = sys.modules.get("twisted.internet.reactor")
    return (
        "udpio.compat.install() must run before anything imports twisted.internet.reactor, but a reactor "
        f"is already installed ({type(installed).__module__}.{type(installed).__qualname__}). Call install() "
        "first thing in the program, or let a runner do it: python -m udpio.compat script.py, "
        "trial --reactor=udpio, twistd --reactor=udpio."
    )


def install(
    eventloop: asyncio.AbstractEventLoop | None = None, *, loop: str | None = None, hold_writes: bool = True
) -> UdpioReactor:
    """Install the udpio reactor as Twisted's global reactor and return it.

    ``loop`` picks udpio's event loop: ``"auto"`` (uvloop when installed, the default, overridden by
    ``$UDPIO_LOOP``), ``"uvloop"`` or ``"asyncio"``; or pass a loop of your own as ``eventloop``. The new
    loop becomes asyncio's current loop, so asyncio code and Twisted code share it. ``hold_writes``: see
    :class:`UdpioReactor` (off gives Twisted's exact ``write`` timing and errors, at a cost in throughput).

    Raises ``ReactorAlreadyInstalledError`` saying so when ``twisted.internet.reactor`` was imported first
    (Twisted then has a reactor of its own), and :class:`~udpio.InvalidArgumentError` for an unknown
    ``loop`` or both arguments at once.
    """
    if eventloop is not None and loop is not None:
        raise InvalidArgumentError("loop", "None when an eventloop is given (pass one or the other)", loop)
    if "twisted.internet.reactor" in sys.modules:
        raise terror.ReactorAlreadyInstalledError(_already_installed())
    created = eventloop is None
    chosen = new_event_loop(loop) if eventloop is None else eventloop
    try:
        if created:
            asyncio.set_event_loop(chosen)
        reactor = UdpioReactor(chosen, hold_writes=hold_writes)
        from twisted.internet.main import installReactor  # noqa: PLC0415  # imports the reactor machinery

        try:
            installReactor(reactor)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        except terror.ReactorAlreadyInstalledError as exc:  # another thread got there between the two checks
            raise terror.ReactorAlreadyInstalledError(_already_installed()) from exc
    except BaseException:
        if created:
            asyncio.set_event_loop(None)
            chosen.close()
        raise
    return reactor
