"""Each Linux socket feature udpio uses, hidden as on a platform without it: the feature degrades as documented
(docs/fastpath.md, "Platforms without Linux's socket options").

A feature is hidden by setting its constant in ``udpio._sockopts`` to ``None``, which is what that module holds
on a platform that lacks it; the sockets stay real. Each test first checks that this machine has the feature
(else there is nothing to hide and it skips), so it can fail: the same assertions with the feature present
would see GSO, GRO, the SO_RXQ_OVFL option or the error queue at work.
"""

from __future__ import annotations

import array
import asyncio
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import udpio
from udpio import _receive, _sockopts

from ._helpers import Collector


def _probe(family: int, host: str, check: Any) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return bool(check(s))


class Batches(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[tuple[bytes, Any]]] = asyncio.Queue()

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        self.queue.put_nowait(batch)

    async def take(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            got += [data for data, _ in await asyncio.wait_for(self.queue.get(), 5)]
        return got


async def test_without_udp_segment_send_many_sends_one_by_one(
    family: int, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _probe(family, host, _sockopts.gso_supported):
        pytest.skip("this kernel has no UDP GSO: nothing to hide")
    monkeypatch.setattr(_sockopts, "UDP_SEGMENT", None)
    receiver, proto = await udpio.listen(Batches, host, 0, rcvbuf=1 << 20)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        assert _sockopts.gso_supported(sender.get_extra_info("socket")) is False
        payloads = [*(bytes([i]) * 100 for i in range(70)), b"tail", b""]
        sender.send_many(payloads, receiver.get_extra_info("sockname"))
        assert await proto.take(len(payloads)) == payloads
        assert sender.counters.datagrams_out == len(payloads)
        assert sender.counters.send_errors == 0
    finally:
        sender.close()
        receiver.close()


async def test_without_udp_gro_gro_is_off_and_every_datagram_arrives_alone(
    family: int, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _probe(family, host, _sockopts.enable_gro):
        pytest.skip("this kernel has no UDP GRO: nothing to hide")
    monkeypatch.setattr(_sockopts, "UDP_GRO", None)
    receiver, proto = await udpio.listen(Batches, host, 0, gro=True, rcvbuf=1 << 20)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        assert receiver.get_extra_info("gro") is False
        sock = receiver.get_extra_info("socket")
        assert sock.getsockopt(_sockopts.SOL_UDP, 104) == 0  # UDP_GRO (udp(7)) was never set
        payloads = [bytes([i]) * 1000 for i in range(32)]
        sender.send_many(payloads, receiver.get_extra_info("sockname"))  # GSO: the train GRO would coalesce
        assert await proto.take(len(payloads)) == payloads
        assert receiver.counters.gro_batches == 0
        assert receiver.get_extra_info("receive_strategy") != "recvmsg"  # nothing asks for control messages
    finally:
        sender.close()
        receiver.close()


async def test_without_so_rxq_ovfl_kernel_drops_come_from_proc(
    family: int, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _probe(family, host, _sockopts.enable_rxq_ovfl):
        pytest.skip("this kernel has no SO_RXQ_OVFL: nothing to hide")
    monkeypatch.setattr(_sockopts, "SO_RXQ_OVFL", None)
    receiver, proto = await udpio.listen(Collector, host, 0, rcvbuf=4096, track_kernel_drops=True)
    sock = receiver.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, 40) == 0  # SO_RXQ_OVFL (socket(7)) was never set
    addr = receiver.get_extra_info("sockname")[:2]
    blaster = socket.socket(family, socket.SOCK_DGRAM)
    try:
        burst = 2000
        for _ in range(burst):  # all sent before the loop can read: the 4 KiB buffer overflows
            blaster.sendto(b"x" * 200, addr)
        # One marker at a time until one gets through: everything before it was read or dropped.
        received = markers = 0
        while True:
            blaster.sendto(b"marker", addr)
            markers += 1
            try:
                while True:
                    data, _ = await proto.next(timeout=0.2)
                    if data == b"marker":
                        break
                    received += 1
                break
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes on Python 3.10
                continue
        # Counted by the kernel and read from /proc/net/udp when the counters are read.
        assert receiver.counters.kernel_drops == (burst - received) + (markers - 1) > 0
    finally:
        blaster.close()
        receiver.close()


def _closed_port(family: int, host: str) -> Any:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()


async def test_without_ip_recverr_a_connected_endpoint_still_hears_refusals(
    family: int, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ECONNREFUSED on a connected socket is its pending error (udp(7)): no error queue needed."""
    monkeypatch.setattr(_sockopts, "IP_RECVERR", None)
    monkeypatch.setattr(_sockopts, "IPV6_RECVERR", None)
    transport, proto = await udpio.connect(Collector, *_closed_port(family, host)[:2])
    try:
        transport.sendto(b"anyone?")
        assert isinstance(await proto.next(), ConnectionRefusedError)
        assert transport.counters.errors_received + transport.counters.send_errors == 1
    finally:
        transport.close()


@pytest.fixture
def recverr_socket(family: int, host: str) -> Iterator[socket.socket]:
    """A socket with IP_RECVERR on (the kernel's own number) and one ICMP error waiting in its error queue."""
    if _sockopts.IP_RECVERR is None:
        pytest.skip("no IP_RECVERR on this platform: nothing to hide")
    level, option = (
        (socket.IPPROTO_IP, _sockopts.IP_RECVERR)
        if family == socket.AF_INET
        else (socket.IPPROTO_IPV6, _sockopts.IPV6_RECVERR)
    )
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.setsockopt(level, option, 1)
        sock.sendto(b"anyone?", _closed_port(family, host))
        poller = select.poll()
        poller.register(sock, select.POLLERR)
        assert poller.poll(5000), "the ICMP error never reached the error queue"
        yield sock
    finally:
        sock.close()


def test_without_ip_recverr_the_error_queue_is_left_alone(
    recverr_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sockopts, "IP_RECVERR", None)
    assert _sockopts.read_icmp_errors(recverr_socket, 10) == []
    monkeypatch.undo()
    # The entry is still there: udpio made no read (with the option visible it reads and reports it).
    assert _sockopts.read_icmp_errors(recverr_socket, 10) != []


@pytest.mark.parametrize("strategy", ["per_datagram", "batch"])
async def test_without_fionread_the_receive_loop_drains_until_eagain(
    host: str, raw_socket: socket.socket, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python strategies end a one-datagram event early when FIONREAD says the queue is empty; without
    FIONREAD they read on until EAGAIN, and deliver the same datagrams (a zero-length one included)."""
    answer = array.array("i", [0])
    with socket.socket(raw_socket.family, socket.SOCK_DGRAM) as idle:
        idle.bind((host, 0))
        assert _sockopts.receive_queue_empty(idle.fileno(), answer) is True  # FIONREAD works here
        monkeypatch.setattr(_sockopts, "FIONREAD", None)
        assert _sockopts.receive_queue_empty(idle.fileno(), answer) is False  # "don't know": read on
    with _receive.forced(strategy):
        transport, proto = await udpio.listen(Batches if strategy == "batch" else Collector, host, 0)

    async def take(count: int) -> list[bytes]:
        if isinstance(proto, Batches):
            return await proto.take(count)
        return [(await proto.next())[0] for _ in range(count)]

    try:
        addr = transport.get_extra_info("sockname")[:2]
        raw_socket.sendto(b"first", addr)
        assert await take(1) == [b"first"]
        raw_socket.sendto(b"a", addr)
        raw_socket.sendto(b"", addr)
        assert await take(2) == [b"a", b""]
        assert transport.counters.datagrams_in == 3
        assert transport.get_extra_info("receive_strategy") == strategy
    finally:
        transport.close()
