"""Fast-path features on real loopback sockets: GSO send, GRO receive, batches, kernel drop counters."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import udpio
from udpio import _sockopts

from ._helpers import Collector

#: Every test here runs once per receive strategy (tests/conftest.py).
pytestmark = [pytest.mark.usefixtures("receive_strategy"), pytest.mark.fallback]


def _gso_works(family: int, host: str) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return _sockopts.gso_supported(s)


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


def _datagrams(count: int, size: int) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(count)]


async def test_send_many_delivers_each_datagram(family: int, host: str) -> None:
    receiver, proto = await udpio.listen(Batches, host, 0, rcvbuf=1 << 20)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        # 130 equal datagrams (more than one GSO run of 64), then a shorter tail, then a larger one.
        payloads = [*_datagrams(130, 100), b"tail", b"L" * 300, b""]
        sender.send_many(payloads, receiver.get_extra_info("sockname"))
        assert await proto.take(len(payloads)) == payloads
        assert sender.counters.datagrams_out == len(payloads)
        assert sender.counters.bytes_out == sum(map(len, payloads))
    finally:
        sender.close()
        receiver.close()


@pytest.mark.receive_features("gro")
@pytest.mark.needs_readers("gro=True is ignored there; the other GRO tests check that every datagram still arrives")
async def test_gro_splits_coalesced_receives(family: int, host: str) -> None:
    if not _gso_works(family, host):
        pytest.skip("kernel without UDP GSO: GRO cannot be provoked on loopback")
    receiver, proto = await udpio.listen(Batches, host, 0, gro=True, rcvbuf=1 << 20)
    if not receiver.get_extra_info("gro"):
        receiver.close()
        pytest.skip("kernel without UDP_GRO")
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        payloads = [*_datagrams(64, 1000), b"short"]
        sender.send_many(payloads, receiver.get_extra_info("sockname"))
        assert await proto.take(len(payloads)) == payloads
        counters = receiver.counters
        assert counters.gro_batches >= 1, "the kernel delivered the GSO train without coalescing it"
        assert counters.datagrams_in == len(payloads)
    finally:
        sender.close()
        receiver.close()


@pytest.mark.receive_features("gro")
async def test_gro_with_per_datagram_protocol(host: str) -> None:
    receiver, proto = await udpio.listen(Collector, host, 0, gro=True)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        payloads = _datagrams(10, 50)
        sender.send_many(payloads, receiver.get_extra_info("sockname"))
        assert [(await proto.next())[0] for _ in payloads] == payloads
    finally:
        sender.close()
        receiver.close()


@pytest.mark.receive_features("gro")
async def test_gro_respects_max_size(host: str) -> None:
    receiver, proto = await udpio.listen(Batches, host, 0, gro=True, max_size=100)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        sender.send_many([b"a" * 200] * 4 + [b"ok"], receiver.get_extra_info("sockname"))
        assert await proto.take(1) == [b"ok"]
        assert receiver.counters.dropped_oversize == 4
    finally:
        sender.close()
        receiver.close()


async def test_send_many_checks_like_sendto(host: str, family: int) -> None:
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        with pytest.raises(udpio.DatagramTooLargeError):
            transport.send_many([b"x" * 70000], (host, 9))
        with pytest.raises(udpio.InvalidAddressError, match="localhost"):
            transport.send_many([b"x"], ("localhost", 9))
    finally:
        transport.close()
    with pytest.raises(udpio.EndpointClosedError):
        transport.send_many([b"x"], (host, 9))


async def test_send_batch_replies_to_each_peer(host: str, family: int) -> None:
    server, server_proto = await udpio.listen(Batches, host, 0)
    clients = [await udpio.listen(Collector, host, 0) for _ in range(3)]
    try:
        pairs = [(f"to {i}".encode(), t.get_extra_info("sockname")) for i, (t, _) in enumerate(clients)]
        server.send_batch(pairs)
        for i, (_, proto) in enumerate(clients):
            assert (await proto.next())[0] == f"to {i}".encode()
        assert server.counters.datagrams_out == 3
        with pytest.raises(udpio.InvalidAddressError):
            server.send_batch([(b"x", ("example.com", 9))])
        del server_proto
    finally:
        for t, _ in clients:
            t.close()
        server.close()


@pytest.mark.parametrize(
    "rxq_ovfl",
    [False, pytest.param(True, marks=pytest.mark.receive_features("kernel_drops"))],
    ids=["proc-net-udp", "SO_RXQ_OVFL"],
)
async def test_kernel_drops_are_counted(host: str, family: int, rxq_ovfl: bool) -> None:
    receiver, proto = await udpio.listen(
        Collector, host, 0, rcvbuf=4096, track_kernel_drops=rxq_ovfl
    )
    addr = receiver.get_extra_info("sockname")[:2]
    blaster = socket.socket(family, socket.SOCK_DGRAM)
    try:
        burst = 2000
        for _ in range(burst):  # all sent before the loop can read: the 4 KiB buffer overflows
            blaster.sendto(b"x" * 200, addr)
        # Then one marker at a time until one gets through: everything before it has been read or dropped.
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
        counters = receiver.counters
        assert counters.datagrams_in == received + 1
        # Every datagram sent is either delivered or counted by the kernel (markers lost before the one
        # that got through included); SO_RXQ_OVFL reports the count as of the last delivered datagram.
        assert counters.kernel_drops == (burst - received) + (markers - 1)
        assert counters.kernel_drops > 0
    finally:
        blaster.close()
        receiver.close()


@pytest.mark.receive_features("zero_copy", "gro")
@pytest.mark.needs_readers("zero_copy is refused there (tests/test_fallback.py checks that)")
async def test_zero_copy_delivers_memoryviews_valid_in_the_handler(host: str) -> None:
    seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    class Views(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[Any, Any]]) -> None:
            for view, _ in batch:
                seen.put_nowait((type(view).__name__, bytes(view)))  # copied while valid

    receiver, _ = await udpio.listen(Views, host, 0, zero_copy=True, gro=True, rcvbuf=1 << 20)
    sender, _ = await udpio.listen(Collector, host, 0)
    try:
        payloads = [*_datagrams(100, 700), b"", b"end"]
        sender.send_many(payloads, receiver.get_extra_info("sockname"))
        got = [await asyncio.wait_for(seen.get(), 5) for _ in payloads]
        assert {kind for kind, _ in got} == {"memoryview"}
        assert [data for _, data in got] == payloads
    finally:
        sender.close()
        receiver.close()


async def test_batches_are_bounded_in_bytes(host: str, raw_socket: socket.socket) -> None:
    from udpio._limits import BATCH_BYTES

    receiver, proto = await udpio.listen(Batches, host, 0, rcvbuf=1 << 22)
    try:
        addr = receiver.get_extra_info("sockname")[:2]
        for i in range(40):  # 320 KiB queued before the loop reads: several lists in one read event
            raw_socket.sendto(bytes([i]) * 8192, addr)
        sizes: list[int] = []
        got: list[bytes] = []
        while len(got) < 40:
            batch = await asyncio.wait_for(proto.queue.get(), 5)
            sizes.append(sum(len(d) for d, _ in batch))
            got += [d for d, _ in batch]
        assert got == [bytes([i]) * 8192 for i in range(40)]
        assert len(sizes) >= 5
        assert max(sizes) <= BATCH_BYTES + 8192
    finally:
        receiver.close()


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
async def test_empty_queue_probe_never_strands_a_zero_length_datagram(
    host: str, raw_socket: socket.socket, batched: bool
) -> None:
    """After a one-datagram event the transport asks FIONREAD whether more is queued; a queued zero-length
    datagram also reads as 0 bytes there. The event ends, and the loop must come back for it."""
    factory = Batches if batched else Collector
    transport, proto = await udpio.listen(factory, host, 0)

    async def take(count: int) -> list[bytes]:
        if isinstance(proto, Batches):
            return await proto.take(count)
        return [(await proto.next())[0] for _ in range(count)]

    try:
        addr = transport.get_extra_info("sockname")[:2]
        raw_socket.sendto(b"first", addr)
        assert await take(1) == [b"first"]  # a one-datagram event: the probe is armed
        raw_socket.sendto(b"a", addr)
        raw_socket.sendto(b"", addr)  # both queued before the loop reads
        assert await take(2) == [b"a", b""]
        assert transport.counters.datagrams_in == 3
    finally:
        transport.close()
