"""The awaitable DatagramEndpoint: send/recv, iteration, bounded queue, lifecycle errors."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import udpio

#: Every test here runs once per receive strategy (tests/conftest.py).
pytestmark = [pytest.mark.usefixtures("receive_strategy"), pytest.mark.fallback]


async def test_send_recv_roundtrip(family: int, host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as server:
        async with await udpio.open_endpoint(remote=server.local_address[:2]) as client:
            assert client.remote_address is not None
            await client.send(b"question")
            data, addr = await server.recv()
            assert data == b"question"
            await server.send(b"answer", addr)
            assert (await client.recv())[0] == b"answer"
    assert server.closed and client.closed


async def test_async_for_ends_when_closed(host: str) -> None:
    server = await udpio.open_endpoint(host, 0)
    async with await udpio.open_endpoint(remote=server.local_address[:2]) as client:
        for i in range(3):
            await client.send(bytes([i]))
        got = []
        async for data, _ in server:
            got.append(data)
            if len(got) == 3:
                server.close()
        assert got == [b"\x00", b"\x01", b"\x02"]
    await server.wait_closed()


async def test_recv_after_close_raises(host: str) -> None:
    ep = await udpio.open_endpoint(host, 0)
    await ep.aclose()
    with pytest.raises(udpio.EndpointClosedError, match="closed"):
        await ep.recv()
    with pytest.raises(udpio.EndpointClosedError):
        await ep.send(b"x", (host, 9))


async def test_close_wakes_a_waiting_receiver(host: str) -> None:
    ep = await udpio.open_endpoint(host, 0)
    receiver = asyncio.ensure_future(ep.recv())
    await asyncio.sleep(0)  # let the receiver start waiting (a scheduling step, not a timing wait)
    ep.close()
    with pytest.raises(udpio.EndpointClosedError):
        await asyncio.wait_for(receiver, 5)
    await ep.wait_closed()


async def test_two_receivers_is_busy(host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as ep:
        first = asyncio.ensure_future(ep.recv())
        await asyncio.sleep(0)
        with pytest.raises(udpio.EndpointBusyError, match="already receiving"):
            await ep.recv()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


@pytest.mark.needs_readers(
    "the test counts on one read event draining all 21 datagrams before recv() wakes; the loop's own transport"
    " delivers one datagram per loop iteration"
)
async def test_queue_is_bounded_and_overflow_counted(host: str, raw_socket: socket.socket) -> None:
    async with await udpio.open_endpoint(host, 0, queue_size=5, rcvbuf=1 << 20) as ep:
        for i in range(20):
            raw_socket.sendto(bytes([i]), ep.local_address[:2])
        # A marker sent last: once it is counted as received, all 20 were processed by the transport.
        raw_socket.sendto(b"end", ep.local_address[:2])
        got = [(await ep.recv())[0] for _ in range(5)]
        assert got == [bytes([i]) for i in range(5)]
        assert ep.counters.datagrams_in == 21
        assert ep.counters.dropped_queue == 16


async def test_refused_surfaces_from_recv(host: str, family: int) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        dead = probe.getsockname()[:2]
    async with await udpio.open_endpoint(remote=dead) as ep:
        await ep.send(b"hello?")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(ep.recv(), 5)
        await ep.send(b"again")  # still usable
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(ep.recv(), 5)


async def test_adopt_through_open_endpoint(host: str, family: int, raw_socket: socket.socket) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    try:
        async with await udpio.open_endpoint(sock=sock) as ep:
            raw_socket.sendto(b"via adopted", sock.getsockname()[:2])
            assert (await ep.recv())[0] == b"via adopted"
        with pytest.raises(udpio.InvalidArgumentError, match="either sock= or host/port/remote"):
            await udpio.open_endpoint(host, sock=sock)
    finally:
        sock.close()


async def test_send_threadsafe_from_another_thread(host: str) -> None:
    async with await udpio.open_endpoint(host, 0) as server:
        async with await udpio.open_endpoint(remote=server.local_address[:2]) as client:
            thread = threading.Thread(target=client.send_threadsafe, args=(b"from a thread",))
            thread.start()
            data, _ = await server.recv()
            thread.join()
            assert data == b"from a thread"


async def test_bad_queue_size() -> None:
    with pytest.raises(udpio.InvalidArgumentError, match=r"queue_size must be an int >= 1 \(datagrams\), got 0"):
        await udpio.open_endpoint(queue_size=0)
