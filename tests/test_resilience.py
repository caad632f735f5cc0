"""Keeps working under floods, garbage, soaks and faults; every datagram accounted for.

Bounds (all floods and soaks are bounded in time; the whole module runs in well under a minute):

* garbage flood: :data:`FLOOD_SECONDS` of random sizes 0..65507 and random bytes at full speed from a sender
  process (``tests/_flood.py``), against the echo server (default and strict policy) and the multicast
  Notify/Acknowledge protocol on ``lo``. Exact accounting, no tolerance: what the sender sent equals what the
  server received plus what the kernel dropped on its socket (``counters.kernel_drops``, /proc/net/udp);
  what the server received was answered or dropped under a reason; what it answered was received by the
  sender or dropped by the kernel on the sender's socket;
* soak: ``udpio echo`` in its own process under a steady load from ever new forged 127/8 sources for
  :data:`SOAK_SECONDS`; its RSS (psutil) may not grow more than :data:`SOAK_RSS_GROWTH_LIMIT` over the
  soak after warm-up, and the per-source table must stay at its bound (evictions counted);
* faults: a peer that vanishes (ICMP refused), send errors (unreachable, prohibited, ENOBUFS, EMSGSIZE) in
  private network namespaces, a receiver that stops reading and a send buffer that fills (flow control), a
  socket closed underneath the transport, a handler that raises on every datagram, workers killed with
  SIGKILL (and a parent killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

import udpio

from . import _netns
from ._helpers import Collector
from .conftest import IPV6

ROOT = os.geteuid() == 0
#: Full-speed garbage flood duration, per run.
FLOOD_SECONDS = 1.5
#: Soak duration, warm-up excluded, and the RSS growth it may show (the per-source table at its bound of
#: 2000 entries is ~0.5 MB; a leak of one object per datagram would show tens of MB).
SOAK_SECONDS = 4.0
SOAK_WARMUP = 1.0
SOAK_RATE = 4000.0
SOAK_RSS_GROWTH_LIMIT = 8 * 1024 * 1024
TIMEOUT = 20.0

#: Linux errno-adjacent numbers the Python 3.10/3.11 socket module does not export: ip(7) IP_RECVERR,
#: ipv6(7) IPV6_DONTFRAG.
IP_RECVERR = 11
IPV6_DONTFRAG = 62


# -- helpers ---------------------------------------------------------------------------------------


class Watched(udpio.EchoProtocol):
    """The echo protocol plus an event set after every batch, so a test can wait for the server to catch up
    with a condition on its counters, without sleeping."""

    def __init__(self, policy: udpio.SafetyPolicy | str | None = "default") -> None:
        super().__init__(policy)  # type: ignore[arg-type]
        self.progress = asyncio.Event()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.pauses = 0

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        super().datagrams_received(batch)
        self.progress.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)

    def pause_writing(self) -> None:
        self.pauses += 1


async def watched_echo(host: str = "127.0.0.1", policy: Any = "default", **options: Any) -> udpio.EchoServer:
    transport, protocol = await udpio.listen(lambda: Watched(policy), host, 0, **options)
    return udpio.EchoServer(transport, protocol)


async def until(protocol: Watched, condition: Any, what: str) -> None:
    """Wait for ``condition()`` to hold, re-checking after each batch the server handles."""
    while not condition():
        protocol.progress.clear()
        try:
            await asyncio.wait_for(protocol.progress.wait(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def flood(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, int]]]:
    """Run ``tests/_flood.py ARGS --drain``; yields once its sending is over, with its report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests._flood", *args, "--drain",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT + FLOOD_SECONDS)
        yield proc, json.loads(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def drained(proc: asyncio.subprocess.Process) -> dict[str, int]:
    """Tell the sender to read its replies; its count and its socket's kernel drops."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"drain\n")
    await proc.stdin.drain()
    report: dict[str, int] = json.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
    return report


def answered_or_dropped(c: udpio.Counters) -> None:
    """Every datagram received was answered or dropped under a named reason."""
    assert c.datagrams_in == (
        c.datagrams_out + c.dropped_policy + c.dropped_send_buffer + c.send_errors + c.dropped_on_close
    ), c
    assert sum(c.policy_drops.values()) == c.dropped_policy


def needs_netns() -> None:
    reason = _netns.skip_reason()
    if reason:
        pytest.skip(reason)


def _netns_exec(ns: str, *command: str) -> None:
    """Set up a namespace (routes, qdiscs): a few milliseconds of a blocking call, before the test's I/O."""
    subprocess.run(["ip", "netns", "exec", ns, *command], check=True, capture_output=True, timeout=30)


def in_namespace(ns: str, family: int, host: str, *options: tuple[int, int, int]) -> socket.socket:
    """A bound non-blocking UDP socket created inside namespace ``ns`` (it stays there)."""
    with _netns.entered(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for level, name, value in options:
            sock.setsockopt(level, name, value)
        sock.bind((host, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- garbage floods --------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["default-policy", "strict-policy"])
async def test_garbage_flood_every_datagram_accounted_for(strict: bool) -> None:
    # strict: loopback not exempt and a low per-source rate, so the policy refuses most of the flood.
    policy = udpio.SafetyPolicy(rate=500, burst=100, exempt=()) if strict else "default"
    server = await watched_echo(policy=policy)
    protocol: Watched = server.protocol  # type: ignore[assignment]
    async with server:
        async with flood("garbage", "127.0.0.1", str(server.port), "--duration", str(FLOOD_SECONDS)) as (
            proc, sent,
        ):
            assert sent["sent"] > 1000 and sent["failed"] == 0
            await until(
                protocol,
                lambda: server.counters.datagrams_in + server.counters.kernel_drops == sent["sent"],
                "the server to handle the whole flood",
            )
            c = server.counters
            # What was sent = what the server received + what the kernel dropped on its socket.
            assert c.datagrams_in + c.kernel_drops == sent["sent"]
            assert c.dropped_oversize == 0 and c.handler_errors == 0
            answered_or_dropped(c)
            if strict:
                assert c.policy_drops.get(udpio.DROP_SOURCE_RATE, 0) > 0
            else:
                assert c.dropped_policy == 0
            # What was answered reached the sender's socket: read there, or dropped there by its kernel.
            replies = await drained(proc)
            assert replies["received"] + replies["kernel_drops"] == c.datagrams_out
        print(f"\ngarbage flood ({'strict' if strict else 'default'}): sent {sent['sent']} "
              f"({sent['bytes']} bytes) in {FLOOD_SECONDS}s; {c.datagrams_in} handled, "
              f"{c.kernel_drops} kernel drops, {c.datagrams_out} answered, policy {c.policy_drops}")
    # Still alive and serving after the flood? It was, until shut down cleanly just above.
    assert server.transport.is_closing()


class CountingNotify(udpio.NotifyProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.progress = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.progress.set()


async def test_garbage_flood_against_the_multicast_protocol() -> None:
    group = f"239.{os.getpid() % 250}.{os.urandom(1)[0]}.7"
    transport, member = await udpio.listen_multicast(CountingNotify, 0, group=group, interface="lo", host=group)
    try:
        port = transport.get_extra_info("sockname")[1]
        async with flood("garbage", group, str(port), "--duration", str(FLOOD_SECONDS)) as (_, sent):
            assert sent["sent"] > 1000
            while transport.counters.datagrams_in + transport.counters.kernel_drops < sent["sent"]:
                member.progress.clear()
                await asyncio.wait_for(member.progress.wait(), TIMEOUT)
            c = transport.counters
            assert c.datagrams_in + c.kernel_drops == sent["sent"]
            # Random bytes are never Notify/Acknowledge: every one was looked at and ignored, none answered.
            assert member.logic.ignored == c.datagrams_in
            assert c.datagrams_out == 0 and c.handler_errors == 0
        # The member still works after the flood.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            sender.bind(("127.0.0.1", 0))
            sender.settimeout(TIMEOUT)
            sender.sendto(b"Notify", (group, port))
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, sender.recv, 100)
            assert data == b"Acknowledge"
    finally:
        transport.close()
        await asyncio.wait_for(member.closed, TIMEOUT)


# -- soak -------------------------------------------------------------------------------------------


def _wait_receive_queue_empty(port: int, timeout: float) -> None:
    """Wait until the UDP socket bound to 127.0.0.1:``port`` has nothing queued (``rx_queue`` of
    /proc/net/udp, proc(5)), so every datagram sent has been read or counted as a kernel drop. On a busy
    machine the server can lag behind the sender; stopping it before it drained its queue would leave the
    last datagrams neither received nor dropped."""
    local = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/udp", encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        queued = [int(row[4].split(":")[1], 16) for row in rows if row[1] == local]
        if not queued or queued[0] == 0 or time.monotonic() > deadline:
            return
        time.sleep(0.02)  # polling the kernel's table: there is no event for "queue drained"


@pytest.mark.skipif(not ROOT, reason="forged sources need a raw socket (root)")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_soak_rss_stays_bounded_with_ever_new_sources(loop: str) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "udpio", "--loop", loop, "echo", "127.0.0.1", "0", "--no-exempt",
         "--max-sources", "2000", "--rate", "50"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        match = re.search(r":(\d+)$", server.stderr.readline().strip())
        assert match, "no listening line"
        port = match.group(1)
        process = psutil.Process(server.pid)
        sender = subprocess.Popen(
            [sys.executable, "-m", "tests._flood", "sources", "127.0.0.1", port,
             "--duration", str(SOAK_WARMUP + SOAK_SECONDS), "--rate", str(SOAK_RATE), "--size", "200"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            time.sleep(SOAK_WARMUP)  # pacing on purpose: let the per-source table fill up first
            baseline = process.memory_info().rss
            samples = []
            while sender.poll() is None:
                samples.append(process.memory_info().rss)
                time.sleep(0.1)  # sampling period
            out, _ = sender.communicate(timeout=TIMEOUT)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        sent = json.loads(out)["sent"]
        _wait_receive_queue_empty(int(port), TIMEOUT)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=TIMEOUT)
    assert server.returncode == 0, err
    summary = err.strip().splitlines()[-1]
    growth = max(samples) - baseline
    print(f"\nsoak ({loop}): {sent} datagrams from new sources over {SOAK_WARMUP + SOAK_SECONDS}s; "
          f"RSS baseline {baseline / 2**20:.1f} MiB, max {max(samples) / 2**20:.1f} MiB, "
          f"growth {growth / 2**20:.2f} MiB (limit {SOAK_RSS_GROWTH_LIMIT / 2**20:.0f}); {summary}")
    assert growth <= SOAK_RSS_GROWTH_LIMIT
    numbers = re.search(r"received (\d+) datagrams.*sources forgotten (\d+)", summary)
    assert numbers, summary
    received, forgotten = map(int, numbers.groups())
    kernel = re.search(r"kernel (\d+)", summary)
    assert received + (int(kernel.group(1)) if kernel else 0) == sent
    assert forgotten >= received - 2000 - received // 10  # nearly every source was new: the table churned


# -- faults: peers and send errors -----------------------------------------------------------------------


async def test_peer_that_vanishes_is_refused_and_the_server_keeps_serving(host: str, family: int) -> None:
    """With IP_RECVERR the ICMP port-unreachable for a reply reaches the unconnected server socket: counted,
    reported to error_received, and (on uvloop too, whose poll handle stops after POLLERR) reading goes on."""
    server = await watched_echo(host)
    protocol: Watched = server.protocol  # type: ignore[assignment]
    sock = server.transport.get_extra_info("socket")
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR, ipv6(7)
    async with server:
        for round_ in range(3):
            with socket.socket(family, socket.SOCK_DGRAM) as gone:
                gone.bind((host, 0))
                gone.sendto(b"reply to nobody", server.address)
                # Closed before the reply arrives: the reply meets a closed port.
            exc = await asyncio.wait_for(protocol.errors.get(), TIMEOUT)
            assert isinstance(exc, ConnectionRefusedError)
            assert server.counters.errors_received == round_ + 1
            with socket.socket(family, socket.SOCK_DGRAM) as alive:
                alive.bind((host, 0))
                alive.settimeout(TIMEOUT)
                alive.sendto(b"still there?", server.address)
                loop = asyncio.get_running_loop()
                assert await loop.run_in_executor(None, alive.recv, 100) == b"still there?"
        answered_or_dropped(server.counters)


async def test_connected_sends_to_a_vanished_peer_never_raise(host: str, family: int) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    transport, proto = await udpio.connect(Collector, host, port)
    try:
        refused = 0
        for _ in range(200):
            transport.sendto(b"anyone?")  # refusals arrive on later calls; none may raise
            await asyncio.sleep(0)  # let the loop read the ICMP error (yield, not a timed wait)
        while not proto.queue.empty():
            exc = proto.queue.get_nowait()
            assert isinstance(exc, ConnectionRefusedError)
            refused += 1
        c = transport.counters
        assert refused >= 1
        assert refused == c.errors_received + c.send_errors
        assert c.datagrams_out + c.send_errors == 200
    finally:
        transport.close()


SEND_ERROR_CASES = {
    # name: (setup commands inside the namespace, destination, socket options, expected errno)
    "no-route": ([], ("10.1.2.3", 9), (), errno.ENETUNREACH),
    "unreachable-route": ([["ip", "route", "add", "unreachable", "10.9.0.0/16"]], ("10.9.0.1", 9), (),
                          errno.EHOSTUNREACH),
    "prohibited-route": ([["ip", "route", "add", "prohibit", "10.8.0.0/16"]], ("10.8.0.1", 9), (), errno.EACCES),
    # A qdisc that drops everything: with IP_RECVERR the drop comes back as ENOBUFS (udp_send_skb, Linux).
    "device-queue-full": ([["tc", "qdisc", "add", "dev", "lo", "root", "pfifo", "limit", "0"]],
                          ("127.0.0.1", 9), ((socket.IPPROTO_IP, IP_RECVERR, 1),), errno.ENOBUFS),
}


@pytest.mark.netns
@pytest.mark.parametrize("case", sorted(SEND_ERROR_CASES))
async def test_send_errors_are_counted_and_reported_never_raised(case: str) -> None:
    needs_netns()
    commands, dest, options, expected = SEND_ERROR_CASES[case]
    with _netns.netns("r7") as ns:
        for command in commands:
            _netns_exec(ns, *command)
        sock = in_namespace(ns, socket.AF_INET, "127.0.0.1", *options)
        try:
            transport, proto = await udpio.adopt(Collector, sock)
        finally:
            sock.close()
        try:
            for attempt in range(1, 4):
                transport.sendto(b"x" * 100, dest)  # must not raise
                exc = await proto.next()
                assert isinstance(exc, OSError) and exc.errno == expected, exc
                assert transport.counters.send_errors == attempt
            assert not transport.is_closing()  # the endpoint stays usable
            assert transport.counters.datagrams_out == 0
        finally:
            transport.close()
            await asyncio.wait_for(proto.lost, TIMEOUT)


@pytest.mark.skipif(not IPV6, reason="IPv6 loopback ::1 cannot be bound")
async def test_emsgsize_is_counted_and_reported() -> None:
    """IPV6_DONTFRAG forbids local fragmentation: 65527 bytes + headers exceed lo's 65536-byte MTU."""
    transport, proto = await udpio.listen(Collector, "::1", 0)
    try:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        transport.sendto(b"x" * udpio.MAX_PAYLOAD_IPV6, ("::1", 9))
        exc = await proto.next()
        assert isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE
        assert transport.counters.send_errors == 1
        transport.sendto(b"small", transport.get_extra_info("sockname"))  # still usable
        data, _ = await proto.next()
        assert data == b"small"
    finally:
        transport.close()


# -- faults: receivers that stop reading, full send buffers ----------------------------------------------


async def test_receiver_that_stops_reading_costs_the_server_nothing() -> None:
    """On loopback the kernel drops replies at the silent receiver (its socket's counter), never makes the
    server wait; everything the server answered is there or counted there."""
    async with await udpio.start_echo("127.0.0.1", 0) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # tiny: it overflows at once
            silent.bind(("127.0.0.1", 0))
            marker.bind(("127.0.0.1", 0))
            marker.settimeout(TIMEOUT)
            total = 3000
            for i in range(total):
                silent.sendto(b"%05d" % i + bytes(500), server.address)
                if i % 100 == 99:  # pace by round trips so the server's own queue never overflows
                    # Numbered: one unchanging payload, repeated, is what the loop guard refuses now and then.
                    mark = b"mark %d" % i
                    marker.sendto(mark, server.address)
                    loop = asyncio.get_running_loop()
                    assert await loop.run_in_executor(None, marker.recv, 100) == mark
            received = 0
            silent.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    silent.recv(1000)
                    received += 1
            drops = udpio._counters.proc_net_drops(silent)
        c = server.counters
        assert c.kernel_drops == 0 and c.dropped_send_buffer == 0
        assert c.datagrams_out == total + total // 100
        assert drops is not None and drops > 0
        assert received + drops == total


@pytest.mark.netns
async def test_full_send_buffer_pauses_and_drops_are_counted() -> None:
    """A rate-limited lo (tbf qdisc) in a private namespace makes the server's send buffer fill (EAGAIN):
    replies are buffered up to the hard limit, pause_writing is called, the rest is dropped and counted,
    and at shutdown what is still buffered is flushed or dropped and counted."""
    needs_netns()
    with _netns.netns("r7fc") as ns:
        _netns_exec(ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "10mbit", "burst", "2kb",
                    "limit", "1mb")
        server_sock = in_namespace(ns, socket.AF_INET, "127.0.0.1", (socket.SOL_SOCKET, socket.SO_SNDBUF, 1024))
        client = in_namespace(ns, socket.AF_INET, "127.0.0.1")
        try:
            limit = 20_000
            transport, protocol = await udpio.adopt(Watched, server_sock, buffer_limit=limit)
        finally:
            server_sock.close()
        transport.set_write_buffer_limits(high=8_000)  # pause well before the hard limit
        server = udpio.EchoServer(transport, protocol)
        try:
            total = 60  # 60 kB: within the client's own default send buffer, three times the server's limit
            for i in range(total):
                client.sendto(b"%04d" % i + bytes(996), server.address)
            peak = 0

            def all_in() -> bool:
                nonlocal peak
                peak = max(peak, transport.get_write_buffer_size())
                return server.counters.datagrams_in >= total

            await until(protocol, all_in, "every request to arrive")
            assert peak <= limit
            c = server.counters
            assert protocol.pauses >= 1
            assert c.dropped_send_buffer > 0
            await server.shutdown(timeout=5.0)
            c = server.counters
            assert c.datagrams_in == total
            answered_or_dropped(c)
            # Every reply the server counts as sent reaches the client.
            got = 0
            loop = asyncio.get_running_loop()
            while got < c.datagrams_out:
                await asyncio.wait_for(loop.sock_recv(client, 2000), TIMEOUT)
                got += 1
            print(f"\nflow control: {total} requests, {c.datagrams_out} answered, "
                  f"{c.dropped_send_buffer} dropped at the {limit}-byte buffer limit, "
                  f"{c.dropped_on_close} dropped on close, {protocol.pauses} pause_writing")
        finally:
            server.transport.abort()
            client.close()


# -- faults: the socket closed underneath, handlers that raise ----------------------------------------------------


async def test_socket_closed_underneath_mid_batch_loses_nothing_silently(host: str) -> None:
    """Something closes the server's socket while a batch is being answered: the reply that meets EBADF is a
    send error, the rest of the batch is counted as dropped on close, the endpoint reports itself broken."""

    class ClosesItsSocket(Watched):
        def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
            if len(batch) >= 2:
                self.transport.get_extra_info("socket").close()  # type: ignore[union-attr]
            super().datagrams_received(batch)

    transport, protocol = await udpio.listen(ClosesItsSocket, host, 0)
    lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    protocol.connection_lost = lost.set_result  # type: ignore[method-assign]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((host, 0))
        # One call queues all five before the server wakes up: they come in one batch.
        for i in range(5):
            client.sendto(b"%d" % i, transport.get_extra_info("sockname"))
        exc = await asyncio.wait_for(lost, TIMEOUT)
    assert isinstance(exc, udpio.EndpointBrokenError)
    c = transport.counters
    assert c.datagrams_in == 5
    assert c.send_errors == 1 and c.dropped_on_close == 4
    answered_or_dropped(c)


async def test_socket_closed_underneath_between_events_then_clean_shutdown(host: str) -> None:
    server = await watched_echo(host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((host, 0))
        client.settimeout(TIMEOUT)
        client.sendto(b"before", server.address)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, client.recv, 100) == b"before"
        server.transport.get_extra_info("socket").close()
        await asyncio.wait_for(server.shutdown(), TIMEOUT)  # no exception, connection_lost, socket closed
    assert server.transport.is_closing()
    answered_or_dropped(server.counters)


async def test_handler_raising_on_every_datagram_is_counted_and_logged_rate_limited(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Raises(Collector):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if data.startswith(b"boom"):
                raise ValueError(f"bad datagram {data!r}")
            super().datagram_received(data, addr)

    caplog.set_level(logging.ERROR, logger="udpio")
    transport, proto = await udpio.listen(Raises, host, 0)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((host, 0))
            peer = udpio.format_address(client.getsockname())
            for i in range(1000):
                client.sendto(b"boom %d" % i, transport.get_extra_info("sockname"))
                if i % 100 == 99:
                    client.sendto(b"ok", transport.get_extra_info("sockname"))
                    data, _ = await proto.next()
                    assert data == b"ok"  # serving all along
        assert transport.counters.handler_errors == 1000
        lines = [r for r in caplog.records if "handling datagram from" in r.getMessage()]
        assert 1 <= len(lines) <= 2  # the first, then one per 5 s at most: a flood cannot flood the log
        assert peer in lines[0].getMessage()
    finally:
        transport.close()


# -- workers ---------------------------------------------------------------------------------------


async def echo_many(address: Any, clients: int, per_client: int) -> int:
    """Round trips from ``clients`` sockets (different source ports: the kernel spreads them over workers)."""
    loop = asyncio.get_running_loop()
    answered = 0
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(clients)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.settimeout(TIMEOUT)
        for _ in range(per_client):
            for s in socks:
                s.sendto(b"ping", address)
        for s in socks:
            for _ in range(per_client):
                if await loop.run_in_executor(None, s.recv, 100) == b"ping":
                    answered += 1
    finally:
        for s in socks:
            s.close()
    return answered


async def test_workers_share_the_port_and_account_for_everything() -> None:
    pool = await udpio.start_echo_workers(2, "127.0.0.1", 0, report_interval=0.2)
    async with pool:
        assert len(set(pool.pids)) == 2
        assert await echo_many(pool.address, clients=8, per_client=25) == 200
    c = pool.counters  # final reports of both workers, after stop
    assert c.datagrams_in == c.datagrams_out == 200
    answered_or_dropped(c)
    assert pool.restarts == 0


async def test_worker_killed_with_sigkill_is_restarted_and_loses_no_queued_datagram() -> None:
    pool = await udpio.start_echo_workers(2, "127.0.0.1", 0, report_interval=0.2)
    try:
        first = list(pool.pids)
        assert await echo_many(pool.address, clients=4, per_client=5) == 20
        for pid in first:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        # Both dead: datagrams sent now wait in the sockets the parent keeps, and the new workers answer them.
        assert await echo_many(pool.address, clients=6, per_client=5) == 30
        await asyncio.wait_for(pool.wait_serving(restarts=2), TIMEOUT)
        assert pool.restarts == 2 and pool.exit_codes == [-signal.SIGKILL] * 2
        assert set(pool.pids).isdisjoint(first)
    finally:
        await pool.stop()
    for pid in [*first, *pool.pids]:
        assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _children_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def _read_until(stream: Any, pattern: str, deadline: float) -> str:
    """Read lines from a blocking text stream until one matches ``pattern`` (bounded by ``deadline``)."""
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if re.search(pattern, line):
            return str(line)
    raise AssertionError(f"no line matching {pattern!r}")


def test_cli_workers_restart_after_sigkill_and_stop_on_sigterm() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "udpio", "echo", "127.0.0.1", "0", "--workers", "2", "--stats-interval", "0.2"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        line = _read_until(parent.stderr, r"2 workers listening on", deadline)
        port = int(line.strip().rsplit(":", 1)[1])
        workers = _children_of(parent.pid)
        assert len(workers) == 2
        workers[0].send_signal(signal.SIGKILL)
        _read_until(parent.stderr, r"workers restarted 1$", deadline)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"after restart", ("127.0.0.1", port))
            assert client.recv(100) == b"after restart"
        now = _children_of(parent.pid)
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=TIMEOUT)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
    assert parent.returncode == 0, err
    assert "workers restarted 1" in err.strip().splitlines()[-1]
    _, alive = psutil.wait_procs(now, timeout=TIMEOUT)
    assert not alive


def test_workers_stop_when_the_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "udpio", "echo", "127.0.0.1", "0", "--workers", "2"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stderr is not None
        _read_until(parent.stderr, r"workers listening on", time.monotonic() + TIMEOUT)
        workers = _children_of(parent.pid)
        assert len(workers) == 2
        parent.kill()  # no chance to stop them: they notice their stdin pipe closing
        parent.wait(timeout=TIMEOUT)
        _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
        assert not alive
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate()
