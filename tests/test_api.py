"""The public surface, the loop runner and the periodic sender."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys

import pytest

import udpio

#: The public API, exactly: a name added to or dropped from ``udpio.__all__`` must be added or dropped here.
EXPECTED = {
    # constants
    "DEFAULT_BLOCKED_PORTS", "DROP_AMPLIFICATION", "DROP_BAD_ADDRESS", "DROP_DENIED", "DROP_GLOBAL_RATE",
    "DROP_NOT_ALLOWED", "DROP_OWN_PORT", "DROP_SERVICE_PORT", "DROP_SOURCE_PORT_ZERO", "DROP_SOURCE_RATE",
    "DROP_LOOP", "DROP_MAPPED_SOURCE", "DROP_NOT_UNICAST",
    "MAX_PAYLOAD_IPV4", "MAX_PAYLOAD_IPV6",
    # endpoints and their transport
    "listen", "connect", "adopt", "DatagramTransport", "Counters", "Address", "LocalAddress", "format_address",
    "open_endpoint", "DatagramEndpoint", "ConnectedProtocol", "PeerRefused", "start_periodic_sender",
    # multicast
    "listen_multicast", "open_multicast", "multicast", "MulticastControl", "MulticastEndpoint", "Membership",
    "GroupJoined", "GroupLeft", "Interface", "list_interfaces", "resolve_interface",
    # echo, policy, workers, notify
    "start_echo", "serve_echo", "EchoProtocol", "EchoServer", "SafetyPolicy", "PolicyConfig", "DropReason",
    "EchoWorkers", "start_echo_workers",
    "serve_echo_workers", "NotifyLogic", "NotifyProtocol", "NotifyStep", "NotifySent", "NotifyReceived",
    "Acknowledged", "AcknowledgeSent", "DatagramIgnored", "NotifyRefused",
    # loops and the I/O path
    "run", "new_event_loop", "loop_kind", "IO_CORE",
    # errors
    "InvalidArgumentError", "InvalidPortError", "InvalidAddressError", "InvalidSocketError", "InvalidGroupError",
    "UnknownInterfaceError", "DatagramTooLargeError", "HostNotFoundError", "EndpointClosedError",
    "EndpointBrokenError", "EndpointBusyError", "MembershipError", "AlreadyJoinedError", "NotJoinedError",
    "NoMulticastRouteError",
}
#: udpio.compat's public API, exactly.
EXPECTED_COMPAT = {
    "MulticastPort", "TwistedAdapter", "TwistedPortTransport", "UDPPort", "UdpioMulticastPort", "UdpioPort",
    "UdpioReactor", "adopt_twisted", "install", "listen_multicast_twisted", "listen_twisted", "twisted_address",
}


def test_public_names_are_exported() -> None:
    assert set(udpio.__all__) == EXPECTED
    assert len(udpio.__all__) == len(EXPECTED)  # no name listed twice
    for name in udpio.__all__:
        assert getattr(udpio, name) is not None
    assert udpio.__all__ == sorted(udpio.__all__, key=lambda n: (not n.isupper(), n))


def test_compat_public_names_are_exported() -> None:
    compat = pytest.importorskip("udpio.compat")
    assert set(compat.__all__) == EXPECTED_COMPAT
    assert len(compat.__all__) == len(EXPECTED_COMPAT)
    for name in compat.__all__:
        assert getattr(compat, name) is not None


def test_import_udpio_does_not_import_twisted() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, udpio; print('twisted' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_run_uses_requested_loop(kind: str) -> None:
    async def which() -> str:
        return udpio.loop_kind()

    assert udpio.run(which(), loop=kind) == kind


def test_run_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def which() -> str:
        return udpio.loop_kind()

    monkeypatch.setenv("UDPIO_LOOP", "asyncio")
    assert udpio.run(which()) == "asyncio"
    monkeypatch.setenv("UDPIO_LOOP", "tokio")
    coro = which()
    with pytest.raises(udpio.InvalidArgumentError, match=r"\$UDPIO_LOOP must be one of .* got 'tokio'"):
        udpio.run(coro)
    coro.close()


async def test_periodic_sender_sends_hello_on_schedule(host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as server:
        async with await udpio.open_endpoint(remote=server.local_address[:2]) as client:
            task = udpio.start_periodic_sender(client.transport, interval=0.01)
            try:
                for _ in range(3):
                    data, _ = await asyncio.wait_for(server.recv(), 5)
                    assert data.startswith(b"hello, i am ")
            finally:
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_periodic_sender_stops_when_transport_closes(host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as server:
        client = await udpio.open_endpoint(remote=server.local_address[:2])
        task = udpio.start_periodic_sender(client.transport, interval=0.01)
        await server.recv()
        client.close()
        await asyncio.wait_for(task, 5)  # ends by itself, no exception
        await client.wait_closed()


async def test_periodic_sender_rejects_bad_interval(host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as ep:
        with pytest.raises(ValueError, match="interval must be > 0 seconds, got 0"):
            udpio.start_periodic_sender(ep.transport, interval=0)


async def test_echo_server_serves_and_closes(family: int, host: str) -> None:
    server = await udpio.start_echo(host, 0)
    assert server.port != 0
    async with await udpio.open_endpoint(remote=server.address[:2]) as ep:
        for payload in (b"", b"x", b"y" * 1200):
            await ep.send(payload)
            assert (await ep.recv())[0] == payload
    server.close()
    await server.wait_closed()
    assert server.counters.datagrams_out == 3


async def test_serve_echo_closes_socket_on_cancel(host: str) -> None:
    # Find a free port, then let serve_echo bind it; cancelling must close (else the re-bind below fails).
    server = await udpio.start_echo(host, 0)
    port = server.port
    server.close()
    await server.wait_closed()
    task = asyncio.ensure_future(udpio.serve_echo(host, port))
    async with await udpio.open_endpoint(remote=(host, port)) as ep:
        while True:  # the server is up once it answers
            await ep.send(b"up?")
            try:
                await asyncio.wait_for(ep.recv(), 0.2)
                break
            except (TimeoutError, asyncio.TimeoutError, ConnectionRefusedError):  # distinct on Python 3.10
                continue
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = await udpio.start_echo(host, port)
    again.close()
    await again.wait_closed()


def test_compat_without_twisted_names_the_extra() -> None:
    """Without Twisted, ``import udpio.compat`` says which extra to install, even from a checkout (whose root
    once held a twisted/plugins/ folder that made a bare ``import twisted`` succeed as a namespace package;
    tests/test_packaging.py checks that no such folder comes back). The child runs with ``-S`` (no
    site-packages: no Twisted) from the repository root and loads compat/ as ``udpio.compat`` by path, as the
    installed package maps it."""
    root = pathlib.Path(__file__).parent.parent
    code = (
        "import importlib.util, sys, udpio\n"
        "spec = importlib.util.spec_from_file_location(\n"
        "    'udpio.compat', 'compat/__init__.py', submodule_search_locations=['compat'])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['udpio.compat'] = module\n"
        "try:\n"
        "    spec.loader.exec_module(module)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'udpio[twisted]'" in out.stdout, out.stdout + out.stderr
