"""Endpoints on a loop that refuses ``add_reader``/``add_writer`` (udpio/_fallback.py), on real sockets.

The loop is tests/conftest.py's ``NoReadersLoop``: the standard loop whose ``add_reader``/``add_writer`` raise
:class:`NotImplementedError`, as Windows' ``ProactorEventLoop`` does. The endpoint tests of test_endpoint.py,
test_stream.py, test_multicast.py, test_echo_safety.py and test_fastpath.py run on it too; this module checks
what is particular to the path.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import udpio
from udpio import _fallback
from udpio._transport import DatagramTransport, loop_has_readers

from ._helpers import Collector
from .conftest import NoReadersLoop

pytestmark = pytest.mark.fallback("only")

#: Public methods LoopTransport inherits unchanged from DatagramTransport, each because it works through the
#: parts the base builds (send path, destinations, counters, error routes) and never through add_reader.
#: A public method added to DatagramTransport fails test_every_public_method_is_accounted_for until it is
#: either overridden in _fallback.py or listed here.
INHERITED = {
    "abort",
    "close",
    "connect",
    "counters",
    "get_extra_info",
    "get_protocol",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "is_closing",
    "is_reading",
    "send_batch",
    "send_many",
    "sendto",
    "sendto_or_raise",
    "set_handler_error_hook",
    "set_write_buffer_limits",
}


def test_every_public_method_is_accounted_for() -> None:
    public = {name for name in dir(DatagramTransport) if not name.startswith("_")}
    overridden = {name for name in public if name in vars(_fallback.LoopTransport)}
    assert public - overridden - INHERITED == set(), "override it in _fallback.py or list it in INHERITED"
    assert public >= INHERITED


async def test_the_loop_transport_serves_with_the_same_surface(host: str) -> None:
    transport, protocol = await udpio.listen(Collector, host, 0)
    try:
        assert isinstance(transport, udpio.DatagramTransport)
        assert isinstance(transport, _fallback.LoopTransport)
        assert transport.get_extra_info("receive_strategy") == "loop_transport"
        assert isinstance(transport.get_extra_info("socket"), socket.socket)
        assert "loop transport" in repr(transport)
        assert not loop_has_readers(asyncio.get_running_loop(), transport.get_extra_info("socket").fileno())
    finally:
        transport.close()
        await protocol.lost


async def test_the_probe_is_per_loop_class() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, NoReadersLoop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert loop_has_readers(loop, sock.fileno()) is False
    plain = asyncio.SelectorEventLoop()  # not new_event_loop(): on Python 3.10 the tests' policy makes a NoReadersLoop
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            assert loop_has_readers(plain, sock.fileno()) is True
    finally:
        plain.close()


async def test_zero_copy_is_refused_and_the_socket_closed(host: str) -> None:
    with pytest.raises(udpio.InvalidArgumentError, match="zero_copy must be False on a loop without add_reader"):
        await udpio.listen(Collector, host, 0, zero_copy=True)
    # A socket left open would fail the test through its ResourceWarning (filterwarnings = error).


async def test_gro_and_kernel_drop_tracking_are_ignored_as_where_the_kernel_lacks_them(
    host: str, raw_socket: socket.socket
) -> None:
    transport, protocol = await udpio.listen(Collector, host, 0, gro=True, track_kernel_drops=True)
    try:
        assert transport.get_extra_info("gro") is False
        raw_socket.sendto(b"a" * 100, transport.get_extra_info("sockname"))
        assert await protocol.next() == (b"a" * 100, raw_socket.getsockname())
        assert transport.counters.kernel_drops == 0  # read from /proc/net/udp, as without SO_RXQ_OVFL
    finally:
        transport.close()
        await protocol.lost


class Batches(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[tuple[bytes, Any]]] = asyncio.Queue()

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.batches.put_nowait(batch)


async def test_batch_protocols_get_one_item_lists(host: str, raw_socket: socket.socket) -> None:
    transport, protocol = await udpio.listen(Batches, host, 0)
    try:
        for i in range(3):
            raw_socket.sendto(b"%d" % i, transport.get_extra_info("sockname"))
        for i in range(3):
            batch = await asyncio.wait_for(protocol.batches.get(), 5)
            assert batch == [(b"%d" % i, raw_socket.getsockname())]
    finally:
        transport.close()


async def test_a_read_event_wrapper_runs_around_each_datagram(host: str, raw_socket: socket.socket) -> None:
    transport, protocol = await udpio.listen(Collector, host, 0)
    seen: list[str] = []

    def wrapper(read_event: Any) -> None:
        seen.append("before")
        read_event()
        seen.append("after")

    try:
        transport.set_read_event_wrapper(wrapper)
        raw_socket.sendto(b"x", transport.get_extra_info("sockname"))
        await protocol.next()
        assert seen == ["before", "after"]
    finally:
        transport.close()
        await protocol.lost


@pytest.mark.parametrize("inner_pauses", [True, False], ids=["loop-transport-pauses", "held"])
async def test_pause_and_resume_reading(
    host: str, raw_socket: socket.socket, inner_pauses: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused, nothing is delivered; resumed, everything sent meanwhile arrives in order. Where the loop's
    transport cannot pause (the proactor loop's; Python < 3.11.3's selector loop), datagrams are held, at most
    MAX_HELD, and the rest counted in dropped_queue."""
    if inner_pauses:
        transport, protocol = await udpio.listen(Collector, host, 0)
        if not transport._inner_pauses:
            transport.close()
            pytest.skip("this Python's selector datagram transport has no pause_reading (before 3.11.3)")
    else:
        monkeypatch.setattr(_fallback, "pausable", lambda inner: False)
        monkeypatch.setattr(_fallback, "MAX_HELD", 3)
        transport, protocol = await udpio.listen(Collector, host, 0, rcvbuf=1 << 20)
    handed_over = 0
    all_read = asyncio.Event()
    hand_over = transport.inner_received

    def counted(data: bytes, addr: Any) -> None:  # what the loop's transport hands to udpio's, counted
        nonlocal handed_over
        hand_over(data, addr)
        handed_over += 1
        if handed_over == 5:
            all_read.set()

    monkeypatch.setattr(transport, "inner_received", counted)
    try:
        address = transport.get_extra_info("sockname")
        transport.pause_reading()
        assert not transport.is_reading()
        for i in range(5):
            raw_socket.sendto(b"%d" % i, address)
        if inner_pauses:
            # A marker through a second endpoint on the same loop: once it arrived, the loop has run through
            # the datagrams sent to the paused one, which therefore were not delivered (they wait in the kernel).
            other_t, other = await udpio.listen(Collector, host, 0)
            raw_socket.sendto(b"marker", other_t.get_extra_info("sockname"))
            await other.next()
            other_t.close()
        else:
            # The loop's transport reads on, one datagram per loop iteration: wait until it handed over all
            # five (three held, two counted).
            await asyncio.wait_for(all_read.wait(), 5)
        assert protocol.queue.empty()
        transport.resume_reading()
        expected = 5 if inner_pauses else 3
        got = [(await protocol.next())[0] for _ in range(expected)]
        assert got == [b"%d" % i for i in range(expected)]
        assert transport.counters.dropped_queue == 5 - expected
    finally:
        transport.close()
        await protocol.lost


async def test_the_writer_is_retried_on_a_timer() -> None:
    """The send path's add_writer/remove_writer on a loop without them: the writer runs until removed."""
    loop = asyncio.get_running_loop()
    view = _fallback._RetryingWriterLoop(loop)
    calls: list[int] = []
    done: asyncio.Future[None] = loop.create_future()

    def writer() -> None:
        calls.append(1)
        if len(calls) == 3:
            assert view.remove_writer(7) is True
            done.set_result(None)

    view.add_writer(7, writer)
    await asyncio.wait_for(done, 5)
    assert view.remove_writer(7) is False
    assert view.time == loop.time  # everything else is the loop's own


async def test_echo_serves_and_is_policed_on_this_loop(host: str) -> None:
    policy = udpio.SafetyPolicy(rate=5, burst=2, exempt=())
    async with await udpio.start_echo(host, 0, policy=policy) as server:
        async with await udpio.open_endpoint(remote=server.address) as ep:
            for i in range(4):
                await ep.send(b"%d" % i)
            assert [(await ep.recv())[0] for _ in range(2)] == [b"0", b"1"]
        assert server.counters.policy_drops == {"source_rate": 2}
        assert server.transport.get_extra_info("receive_strategy") == "loop_transport"


def test_sync_start_is_refused() -> None:
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    transport = _fallback.LoopTransport(loop, sock, asyncio.DatagramProtocol())
    try:
        with pytest.raises(NotImplementedError, match=r"started by udpio\._fallback\.start"):
            transport.start()
    finally:
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert sock.fileno() == -1
