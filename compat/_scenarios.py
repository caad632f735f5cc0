"""The Twisted tutorial's four UDP scenarios, written once as asyncio handlers, run on every stack.

Scenarios (``SCENARIOS``): ``echo`` (an echo server and a periodic sender, including a zero-length datagram and
one that makes the server's handler raise), ``adopt`` (serving a socket built beforehand, the caller closing its
own copy at once), ``connected`` (connected UDP: the kernel filters a stranger out, then the peer goes away and
answers with ICMP port-unreachable, twice), ``multicast`` (two members share a port and a group on the loopback
interface; a notifier sends ``Notify`` to the group and each member answers ``Acknowledge`` by unicast).

Stacks (``STACKS``): udpio on the standard loop and on uvloop, Twisted's epoll reactor and asyncio reactor,
Twisted's asyncio reactor over uvloop (a popular combination with a trap, see docs/twisted.md), the udpio drop-in
reactor (``udpio.compat.install()``), and ``udpio-twisted-api`` (the handlers wrapped in
:class:`~udpio.compat.TwistedAdapter` and served by :func:`~udpio.compat.listen_twisted`, so the two adapters
are checked end to end).

The handlers (:class:`Role` subclasses) are plain ``asyncio.DatagramProtocol`` objects that only use the
transport (``sendto``, ``close``, ``get_extra_info``) and the stack's clock (:meth:`Stack.call_later`), so the
same objects run everywhere. Each callback is recorded in a :class:`Trace`, per role, with peers named by role
instead of port numbers, so traces from different runs compare equal when the behaviour is the same.

A Twisted reactor can be installed once per process, so each stack runs in its own process:
``python -m udpio.compat._scenarios STACK [--scenario NAME ...]`` prints the traces as JSON on stdout
(:mod:`udpio.compat._compare` starts those processes and compares their output).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import importlib
import json
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

#: The stacks, in the order the comparison table shows them; the first is the reference.
STACKS = (
    "udpio-asyncio",
    "udpio-uvloop",
    "twisted-epoll",
    "twisted-asyncio",
    "twisted-asyncio-uvloop",
    "udpio-reactor",
    "udpio-twisted-api",
)
SCENARIOS = ("echo", "adopt", "connected", "multicast")

#: One observable event: ``(kind, *details)``, all strings (JSON-friendly, comparable across processes).
Event: TypeAlias = tuple[str, ...]
Cancel: TypeAlias = Callable[[], None]

#: The periodic sender's period: long enough for a loopback round trip on a loaded machine to usually finish
#: first (the traces do not depend on it: each role's events are compared in that role's own order).
TICK = 0.02
#: How long the connected client waits for an ICMP error (or the port's loss) before recording silence.
#: On loopback the error is back within microseconds; this only bounds a stack that never reports it.
SILENCE_AFTER = 2.0
#: A scenario not finished after this many seconds is recorded as timed out and torn down.
SCENARIO_TIMEOUT = 20.0

LOOPBACK = "127.0.0.1"
#: An administratively scoped group (RFC 2365), joined on the loopback interface only. Not the tutorial's
#: 224.0.0.1: that is the all-hosts group, which every host is a member of anyway.
MULTICAST_GROUP = "239.255.77.77"
#: What the echo client sends, in order: the zero-length datagram is valid input; "raise" makes the server's
#: handler raise after recording it, and the endpoint must keep serving (no echo for that one).
ECHO_MESSAGES = (b"hello 0", b"", b"raise", b"hello 1", b"hello 2")
ADOPT_MESSAGES = (b"hello 0", b"hello 1", b"hello 2")


class ScenarioUnavailable(Exception):
    """This stack cannot run this scenario here (the reason is recorded instead of a trace)."""


# --------------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------------


class Trace:
    """Events per role, in the order each role saw them; peers are named by the role bound to their port."""

    def __init__(self) -> None:
        self.roles: dict[str, list[Event]] = {}
        self._names: dict[int, str] = {}

    def name_port(self, port: int, name: str) -> None:
        """Name the endpoint on ``port`` (the first name given wins: shared ports get one name)."""
        self._names.setdefault(port, name)

    def peer(self, addr: Any) -> str:
        """The role name for a source address (``"unknown"`` if no role is bound to that port)."""
        if isinstance(addr, tuple) and len(addr) >= 2:
            return self._names.get(addr[1], "unknown")
        return "unknown"

    def record(self, role: str, *event: str) -> None:
        self.roles.setdefault(role, []).append(event)


class Role(asyncio.DatagramProtocol):
    """A handler that records every callback; subclasses add behaviour in the ``on_*`` hooks."""

    def __init__(self, run: ScenarioRun, name: str, *, register: bool = True) -> None:
        self.run = run
        self.name = name
        self.register = register
        self.transport: asyncio.DatagramTransport | None = None
        self.lost = False
        run.roles.append(self)

    # asyncio callbacks: record, then behave

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint gives a DatagramTransport
        if self.register:
            self.run.trace.name_port(self.port, self.name)
        self.run.trace.record(self.name, "made")
        self.on_made()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.run.trace.record(self.name, "recv", repr(data), self.run.trace.peer(addr))
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.run.trace.record(self.name, "error", type(exc).__name__)
        self.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.run.trace.record(self.name, "lost", type(exc).__name__ if exc is not None else "None")
        self.on_lost()
        self.run.role_lost()

    # behaviour hooks

    def on_made(self) -> None:
        """After ``connection_made``."""

    def on_datagram(self, data: bytes, addr: Any) -> None:
        """After ``datagram_received``."""

    def on_error(self, exc: Exception) -> None:
        """After ``error_received``."""

    def on_lost(self) -> None:
        """After ``connection_lost``."""

    # helpers

    @property
    def port(self) -> int:
        assert self.transport is not None  # internal invariant: only called once made
        return int(self.transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def send(self, data: bytes, addr: Any = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class EchoRole(Role):
    """The tutorial's ``Echo``: every datagram goes back to its sender; ``b"raise"`` makes the handler raise."""

    def on_datagram(self, data: bytes, addr: Any) -> None:
        if data == b"raise":
            raise ValueError("a handler failing on purpose: the endpoint must keep serving")
        self.send(data, addr)


class CollectRole(Role):
    """Counts datagrams and calls ``expect``'s callback once the expected number has arrived."""

    def __init__(self, run: ScenarioRun, name: str, *, register: bool = True) -> None:
        super().__init__(run, name, register=register)
        self.received = 0
        self._expected = -1
        self._then: Callable[[], None] | None = None

    def expect(self, count: int, then: Callable[[], None]) -> None:
        self._expected, self._then = count, then

    def on_datagram(self, data: bytes, addr: Any) -> None:
        self.received += 1
        if self.received == self._expected and self._then is not None:
            self._then()


# --------------------------------------------------------------------------------------------------
# Stacks
# --------------------------------------------------------------------------------------------------

Ready: TypeAlias = Callable[[BaseException | None], None]


class Stack(abc.ABC):
    """What a scenario needs from a stack; every set-up ends in the protocol's ``connection_made``."""

    name: str

    #: Where set-up errors that surface after the set-up call returned (udpio's coroutines) are reported.
    failed: Callable[[BaseException], None] = staticmethod(lambda exc: None)

    def on_failure(self, failed: Callable[[BaseException], None]) -> None:
        """Report later set-up errors to ``failed`` (the running scenario's :meth:`ScenarioRun.fail`)."""
        self.failed = failed

    @abc.abstractmethod
    def listen(self, protocol: Role, host: str = LOOPBACK, port: int = 0) -> None:
        """Serve ``protocol`` on ``(host, port)``."""

    @abc.abstractmethod
    def adopt(self, protocol: Role, sock: socket.socket) -> None:
        """Serve ``protocol`` on ``sock``; the caller may close ``sock`` as soon as this returns."""

    @abc.abstractmethod
    def connect(self, protocol: Role, host: str, port: int) -> None:
        """Serve ``protocol`` on a loopback port connected to ``(host, port)``."""

    @abc.abstractmethod
    def listen_multicast(
        self, protocol: Role, port: int, *, bind: str, group: str | None, interface: str, ready: Ready
    ) -> None:
        """A port sharing ``port`` (listen-multiple), sending through ``interface``, joined to ``group`` on
        ``interface`` if given; ``ready(None)`` once joined, ``ready(exc)`` on failure."""

    @abc.abstractmethod
    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancel:
        """Call ``fn`` after ``delay`` seconds; returns a function that cancels it."""

    @abc.abstractmethod
    def run(self, start: Callable[[Callable[[], None]], None]) -> None:
        """Run the loop until ``start(stop)``'s scenarios call ``stop``."""


class UdpioStack(Stack):
    """udpio's endpoints on an asyncio loop (``bridged``: the handlers through both compat adapters)."""

    def __init__(self, name: str, loop: str, *, bridged: bool = False) -> None:
        self.name = name
        self._loop_kind = loop
        self._bridged = bridged
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any, done: Ready | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            exc = None if t.cancelled() else t.exception()
            if done is not None:
                done(exc)
            elif exc is not None:
                self.failed(exc)

        task.add_done_callback(finished)

    def listen(self, protocol: Role, host: str = LOOPBACK, port: int = 0) -> None:
        import udpio  # noqa: PLC0415  # imported in the stack's own process only

        if self._bridged:
            from ._adapters import TwistedAdapter, listen_twisted  # noqa: PLC0415

            self._spawn(listen_twisted(port, TwistedAdapter(protocol), host))
        else:
            self._spawn(udpio.listen(lambda: protocol, host, port))

    def adopt(self, protocol: Role, sock: socket.socket) -> None:
        import udpio  # noqa: PLC0415

        # Twisted's adoptDatagramPort takes the descriptor at once; udpio.adopt does when its task runs, so
        # keep a reference of our own until then (the caller closes its socket right after this returns).
        own = sock.dup()

        async def adopt() -> None:
            try:
                if self._bridged:
                    from ._adapters import TwistedAdapter, adopt_twisted  # noqa: PLC0415

                    await adopt_twisted(own, TwistedAdapter(protocol))
                else:
                    await udpio.adopt(lambda: protocol, own)
            finally:
                own.close()

        self._spawn(adopt())

    def connect(self, protocol: Role, host: str, port: int) -> None:
        import udpio  # noqa: PLC0415

        if self._bridged:
            from ._adapters import TwistedAdapter, listen_twisted  # noqa: PLC0415

            self._spawn(listen_twisted(0, TwistedAdapter(protocol, connect=(host, port)), LOOPBACK))
        else:
            self._spawn(udpio.connect(lambda: protocol, host, port, local_host=LOOPBACK))

    def listen_multicast(
        self, protocol: Role, port: int, *, bind: str, group: str | None, interface: str, ready: Ready
    ) -> None:
        import udpio  # noqa: PLC0415

        listen_multicast = getattr(udpio, "listen_multicast", None)
        if listen_multicast is None:
            raise ScenarioUnavailable("udpio.listen_multicast does not exist here")
        if self._bridged:
            from ._adapters import TwistedAdapter, listen_multicast_twisted  # noqa: PLC0415

            async def bridged() -> None:
                # As a Twisted protocol would: outgoing interface, then the join, each a Deferred.
                mport = await listen_multicast_twisted(
                    port, TwistedAdapter(protocol), bind, listen_multiple=True, multicast_interface=interface
                )
                loop = asyncio.get_running_loop()
                await mport.setOutgoingInterface(interface).asFuture(loop)
                if group is not None:
                    await mport.joinGroup(group, interface).asFuture(loop)

            self._spawn(bridged(), ready)
        else:

            async def native() -> None:
                await listen_multicast(
                    lambda: protocol, port, group=group, interface=interface, host=bind, listen_multiple=True
                )

            self._spawn(native(), ready)

    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancel:
        return asyncio.get_running_loop().call_later(delay, fn).cancel

    def run(self, start: Callable[[Callable[[], None]], None]) -> None:
        import udpio  # noqa: PLC0415

        async def main() -> None:
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def stop() -> None:
                if not finished.done():
                    finished.set_result(None)

            start(stop)
            await finished
            for task in list(self._tasks):
                task.cancel()

        udpio.run(main(), loop=self._loop_kind)


class TwistedStack(Stack):
    """A Twisted reactor (whichever is installed), the handlers wrapped in :class:`TwistedAdapter`."""

    def __init__(self, name: str, reactor: Any) -> None:
        self.name = name
        self.reactor = reactor

    def listen(self, protocol: Role, host: str = LOOPBACK, port: int = 0) -> None:
        from ._adapters import TwistedAdapter  # noqa: PLC0415

        self.reactor.listenUDP(port, TwistedAdapter(protocol), interface=host)

    def adopt(self, protocol: Role, sock: socket.socket) -> None:
        from ._adapters import TwistedAdapter  # noqa: PLC0415

        self.reactor.adoptDatagramPort(sock.fileno(), sock.family, TwistedAdapter(protocol))

    def connect(self, protocol: Role, host: str, port: int) -> None:
        from ._adapters import TwistedAdapter  # noqa: PLC0415

        self.reactor.listenUDP(0, TwistedAdapter(protocol, connect=(host, port)), interface=LOOPBACK)

    def listen_multicast(
        self, protocol: Role, port: int, *, bind: str, group: str | None, interface: str, ready: Ready
    ) -> None:
        from ._adapters import TwistedAdapter  # noqa: PLC0415

        mport = self.reactor.listenMulticast(port, TwistedAdapter(protocol), interface=bind, listenMultiple=True)
        # The outgoing interface first: nothing may be sent to the group before it points at loopback.
        d = mport.setOutgoingInterface(interface)
        if group is not None:
            d.addCallback(lambda _: mport.joinGroup(group, interface))
        d.addCallbacks(lambda _: ready(None), lambda failure: ready(failure.value))

    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancel:
        call = self.reactor.callLater(delay, fn)

        def cancel() -> None:
            if call.active():
                call.cancel()

        return cancel

    def run(self, start: Callable[[Callable[[], None]], None]) -> None:
        def stop() -> None:
            if self.reactor.running:
                self.reactor.stop()

        self.reactor.callWhenRunning(start, stop)
        self.reactor.run(installSignalHandlers=False)


def make_stack(name: str) -> Stack:
    """Build stack ``name``, installing its reactor: call once per process, before Twisted's reactor is
    imported. Raises :class:`ScenarioUnavailable` when the stack cannot exist here."""
    import udpio  # noqa: PLC0415

    if name == "udpio-asyncio":
        return UdpioStack(name, "asyncio")
    if name == "udpio-uvloop":
        from udpio._loop import uvloop_available  # noqa: PLC0415

        if not uvloop_available():
            raise ScenarioUnavailable("uvloop is not installed")
        return UdpioStack(name, "uvloop")
    if name == "udpio-twisted-api":
        return UdpioStack(name, "asyncio", bridged=True)
    if name == "twisted-epoll":
        try:
            from twisted.internet import epollreactor  # noqa: PLC0415
        except ImportError as exc:
            raise ScenarioUnavailable(f"no epoll here: {exc}") from exc
        epollreactor.install()  # type: ignore[no-untyped-call]  # unannotated in Twisted
    elif name == "twisted-asyncio":
        from twisted.internet import asyncioreactor  # noqa: PLC0415

        # Twisted's asyncio reactor (and Twisted's UDP ports) on the standard loop.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    elif name == "twisted-asyncio-uvloop":
        from twisted.internet import asyncioreactor  # noqa: PLC0415

        from udpio._loop import uvloop_available  # noqa: PLC0415

        if not uvloop_available():
            raise ScenarioUnavailable("uvloop is not installed")
        # A popular combination: Twisted's own asyncio reactor (Twisted's UDP ports) over uvloop.
        loop = udpio.new_event_loop("uvloop")
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    elif name == "udpio-reactor":
        compat = importlib.import_module(__package__ or "udpio.compat")
        install = getattr(compat, "install", None)
        if install is None:
            raise ScenarioUnavailable("udpio.compat.install (the drop-in reactor) does not exist yet")
        install()
    else:
        raise ScenarioUnavailable(f"unknown stack {name!r}; known: {', '.join(STACKS)}")
    from twisted.internet import reactor  # noqa: PLC0415  # the reactor just installed

    return TwistedStack(name, reactor)


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------


class ScenarioRun(abc.ABC):
    """One scenario on one stack: roles, their trace, and the end (all roles lost, failure or timeout)."""

    name: str

    def __init__(self, stack: Stack, done: Callable[[ScenarioRun], None]) -> None:
        self.stack = stack
        self.trace = Trace()
        self.roles: list[Role] = []
        self.status = "running"
        self.reason = ""
        self._done = done
        self._cancel_timeout: Cancel = lambda: None
        self._cancels: list[Cancel] = []
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        self._cancel_timeout = self.stack.call_later(SCENARIO_TIMEOUT, self._timed_out)
        try:
            self.begin()
        except ScenarioUnavailable as exc:
            self._finish("unavailable", str(exc))
        except Exception as exc:
            self.fail(exc)

    @abc.abstractmethod
    def begin(self) -> None:
        """Set up the first endpoint; the rest follows from the handlers' callbacks."""

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` unless the scenario has ended by then; failures end the scenario."""

        def guarded() -> None:
            if self.status != "running":
                return
            try:
                fn()
            except ScenarioUnavailable as exc:
                self._finish("unavailable", str(exc))
            except Exception as exc:
                self.fail(exc)

        self._cancels.append(self.stack.call_later(delay, guarded))

    def step(self, fn: Callable[[], None]) -> None:
        """Run a set-up step now, ending the scenario cleanly if it fails."""
        if self.status != "running":
            return
        try:
            fn()
        except ScenarioUnavailable as exc:
            self._finish("unavailable", str(exc))
        except Exception as exc:
            self.fail(exc)

    def raw_socket(self) -> socket.socket:
        """A plain loopback socket owned by the scenario (closed when it ends)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.setblocking(False)
        sock.bind((LOOPBACK, 0))
        return sock

    def fail(self, exc: BaseException) -> None:
        self._finish("failed", f"{type(exc).__name__}: {exc}")

    def role_lost(self) -> None:
        if self.status == "running" and all(role.lost for role in self.roles):
            self._finish("ok", "")

    def _timed_out(self) -> None:
        self._finish("timeout", f"not finished after {SCENARIO_TIMEOUT:g} s")

    def _finish(self, status: str, reason: str) -> None:
        if self.status != "running":
            return
        self.status, self.reason = status, reason
        self._cancel_timeout()
        for cancel in self._cancels:
            cancel()
        for sock in self._sockets:
            sock.close()
        for role in self.roles:
            role.close()
        # Give the closes a moment to complete (connection_lost is called soon, on every stack).
        self.stack.call_later(0.05, lambda: self._done(self))

    def result(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "roles": {role: [list(event) for event in events] for role, events in self.trace.roles.items()},
        }


class EchoScenario(ScenarioRun):
    """Plain UDP: an echo server and a client sending on a period (the tutorial's thread, done right)."""

    name = "echo"

    def begin(self) -> None:
        self.server = _EchoServer(self, "server")
        self.client = _EchoClient(self, "client")
        self.stack.listen(self.server)


class _EchoServer(EchoRole):
    run: EchoScenario

    def on_made(self) -> None:
        self.run.step(lambda: self.run.stack.listen(self.run.client))


class _PeriodicClient(CollectRole):
    """Sends ``messages`` to the run's server one tick apart (the tutorial's periodic sender), expects every
    echo but the one the server's handler raises on, then closes both ends."""

    run: EchoScenario | AdoptScenario
    messages: tuple[bytes, ...] = ()

    def on_made(self) -> None:
        expected = [m for m in self.messages if m != b"raise"]
        self.expect(len(expected), self.finished)
        self._tick(0)

    def _tick(self, index: int) -> None:
        self.send(self.messages[index], self.run.server.address)
        if index + 1 < len(self.messages):
            self.run.later(TICK, lambda: self._tick(index + 1))

    def finished(self) -> None:
        self.close()
        self.run.server.close()


class _EchoClient(_PeriodicClient):
    messages = ECHO_MESSAGES


class AdoptScenario(ScenarioRun):
    """A socket built elsewhere (bound, non-blocking) is adopted; the caller closes its copy at once."""

    name = "adopt"

    def begin(self) -> None:
        prebuilt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            prebuilt.setblocking(False)
            prebuilt.bind((LOOPBACK, 0))
            self.prebuilt_port = prebuilt.getsockname()[1]
            self.server = _Adopted(self, "adopted")
            self.client = _AdoptClient(self, "client")
            self.stack.adopt(self.server, prebuilt)
        finally:
            prebuilt.close()  # as the tutorial does: the stack holds its own reference


class _Adopted(EchoRole):
    run: AdoptScenario

    def on_made(self) -> None:
        # Observable: the adopted port is the socket that was built, not a new one.
        same = self.port == self.run.prebuilt_port
        self.run.trace.record(self.name, "bound", "prebuilt socket" if same else "another socket")
        self.run.step(lambda: self.run.stack.listen(self.run.client))


class _AdoptClient(_PeriodicClient):
    messages = ADOPT_MESSAGES


class ConnectedScenario(ScenarioRun):
    """Connected UDP: only the peer is heard; when the peer has gone, each send is refused (ICMP), and once the
    peer is back on the same port the same client port reaches it again."""

    name = "connected"

    def begin(self) -> None:
        self.server = _ConnectedServer(self, "server")
        self.client = _ConnectedClient(self, "client")
        self.stack.listen(self.server)

    def restart_server(self) -> None:
        self.server_again = _ServerAgain(self, "server again")
        self.stack.listen(self.server_again, LOOPBACK, self.server.port)


class _ConnectedServer(EchoRole):
    run: ConnectedScenario

    def on_made(self) -> None:
        self.run.step(lambda: self.run.stack.connect(self.run.client, LOOPBACK, self.port))

    def on_lost(self) -> None:
        # Every stack closes the socket just *after* connection_lost returns: send from the next callback, when
        # the peer's port is really gone and the client's datagrams meet a closed port.
        self.run.later(0, lambda: self.run.client.after_close(0))


class _ServerAgain(EchoRole):
    run: ConnectedScenario

    def on_made(self) -> None:
        self.run.client.send(b"hello again")


class _ConnectedClient(Role):
    run: ConnectedScenario

    def __init__(self, run: ScenarioRun, name: str) -> None:
        super().__init__(run, name)
        self.echoes = 0
        self.refused = 0
        self._cancel_silence: Cancel = lambda: None

    def on_made(self) -> None:
        # A stranger writes to the client first: a connected port must never see it (the kernel filters),
        # and it would arrive before the echo, which is sent later over the same loopback.
        stranger = self.run.raw_socket()
        self.run.trace.name_port(stranger.getsockname()[1], "stranger")
        stranger.sendto(b"stranger", self.address)
        self.send(b"hello 0")

    def on_datagram(self, data: bytes, addr: Any) -> None:
        self.echoes += 1
        if self.echoes == 1:
            self.send(b"hello 1")
        elif self.echoes == 2:
            self.run.server.close()
        else:  # the echo of "hello again": the port survived the refusals
            self.close()
            self.run.server_again.close()

    def after_close(self, attempt: int) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            return
        self.send(f"after close {attempt}".encode())
        self._cancel_silence()
        self._cancel_silence = self.run.stack.call_later(SILENCE_AFTER, self._silence)

    def _silence(self) -> None:
        self.run.trace.record(self.name, "silence", f"no error and no loss within {SILENCE_AFTER:g} s")
        self.close()

    def on_error(self, exc: Exception) -> None:
        if not isinstance(exc, ConnectionRefusedError):
            return
        self._cancel_silence()
        self.refused += 1
        if self.refused < 2:
            self.after_close(self.refused)
        else:
            self.run.step(self.run.restart_server)

    def on_lost(self) -> None:
        self._cancel_silence()


class MulticastScenario(ScenarioRun):
    """The tutorial's Notify/Acknowledge: two members share a port and a group on loopback; a notifier sends
    ``Notify`` to the group and each member answers ``Acknowledge`` to the notifier by unicast."""

    name = "multicast"

    def begin(self) -> None:
        self.members = [_Member(self, "member 1", register=False), _Member(self, "member 2", register=False)]
        self.notifier = _Notifier(self, "notifier")
        self.group_port = 0
        self._join(0)

    def _join(self, index: int) -> None:
        member = self.members[index]

        def ready(exc: BaseException | None) -> None:
            if exc is not None:
                self.fail(exc)
                return
            self.trace.record(member.name, "joined")
            if index == 0:
                self.group_port = member.port
                self.trace.name_port(member.port, "members")
                self.step(lambda: self._join(1))
            else:
                self.step(self._notify)

        self.stack.listen_multicast(
            member, self.group_port, bind=MULTICAST_GROUP, group=MULTICAST_GROUP, interface=LOOPBACK, ready=ready
        )

    def _notify(self) -> None:
        def ready(exc: BaseException | None) -> None:
            if exc is not None:
                self.fail(exc)
                return
            self.trace.record(self.notifier.name, "ready")
            self.notifier.expect(len(self.members), self._finished)
            self.notifier.send(b"Notify", (MULTICAST_GROUP, self.group_port))

        self.stack.listen_multicast(
            self.notifier, 0, bind=LOOPBACK, group=None, interface=LOOPBACK, ready=ready
        )

    def _finished(self) -> None:
        for role in self.roles:
            role.close()


class _Member(Role):
    def on_datagram(self, data: bytes, addr: Any) -> None:
        # bytes compared with bytes (the tutorial compared bytes with a str, which is never equal).
        if data == b"Notify":
            self.send(b"Acknowledge", addr)


class _Notifier(CollectRole):
    pass


SCENARIO_CLASSES: dict[str, type[ScenarioRun]] = {
    cls.name: cls for cls in (EchoScenario, AdoptScenario, ConnectedScenario, MulticastScenario)
}


def run_stack(stack_name: str, scenarios: Sequence[str] = SCENARIOS) -> dict[str, Any]:
    """Run ``scenarios`` one after the other on ``stack_name`` (installs its reactor: once per process)."""
    try:
        stack = make_stack(stack_name)
    except ScenarioUnavailable as exc:
        return {"stack": stack_name, "status": "unavailable", "reason": str(exc), "scenarios": {}}
    results: dict[str, Any] = {}
    pending = list(scenarios)
    current: list[ScenarioRun] = []

    def start(stop: Callable[[], None]) -> None:
        def next_scenario(finished: ScenarioRun | None = None) -> None:
            if finished is not None:
                results[finished.name] = finished.result()
            if not pending:
                stop()
                return
            run = SCENARIO_CLASSES[pending.pop(0)](stack, next_scenario)
            current[:] = [run]
            stack.on_failure(run.fail)
            run.start()

        next_scenario()

    stack.run(start)
    return {"stack": stack_name, "status": "ok", "reason": "", "scenarios": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m udpio.compat._scenarios", description="Run the tutorial's scenarios on one stack."
    )
    parser.add_argument("stack", choices=STACKS)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all four")
    args = parser.parse_args(argv)
    result = run_stack(args.stack, args.scenario or SCENARIOS)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
