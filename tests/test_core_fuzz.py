"""Property tests of the compiled I/O core's memory handling, on real loopback sockets.

Each example sends datagrams of sizes 0..65507 (zero-length, exactly max_size, one byte over, cut by the
kernel) and drives a Receiver through as many events as it takes, with handlers that keep every bytes object
they get (the receive arena is reused across batches: a view into it would show later datagrams), raise, or
stop the Receiver mid-batch, with or without local addresses (IP_PKTINFO / IPV6_PKTINFO). Run also under
``PYTHONMALLOC=debug`` and ``-X dev`` by .ci/run.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udpio import LocalAddress, _sockopts
from udpio._limits import MAX_PAYLOAD_IPV4

from .conftest import IPV6
from .test_core import Limits, Sink, drain_socket, receivers

core = pytest.importorskip("udpio._core", reason="the compiled I/O core is not built here")

#: Examples per property: enough to meet the edges every run, bounded for CI on a shared 2-core machine
#: (UDPIO_FUZZ_EXAMPLES raises it for a longer hunt).
EXAMPLES = int(os.environ.get("UDPIO_FUZZ_EXAMPLES", "60"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FAMILIES = [socket.AF_INET, socket.AF_INET6] if IPV6 else [socket.AF_INET]
HOSTS = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}

SIZES = st.one_of(
    st.integers(0, 80),
    st.integers(0, MAX_PAYLOAD_IPV4),
    st.sampled_from([0, 1, 1472, 9000, 65535 - 28 - 1, MAX_PAYLOAD_IPV4]),
)


def _max_size(draw: Any, sizes: list[int]) -> int | None:
    """None, or a bound placed on the edges of what is sent (size, size - 1)."""
    choice = draw(st.sampled_from(["none", "edge", "any"]))
    if choice == "none":
        return None
    if choice == "edge":
        size = draw(st.sampled_from(sizes))
        return max(0, size - draw(st.integers(0, 1)))
    return int(draw(st.integers(0, MAX_PAYLOAD_IPV4)))


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    sizes = draw(st.lists(SIZES, min_size=1, max_size=40))
    return {
        "family": draw(st.sampled_from(FAMILIES)),
        "sizes": sizes,
        "batch": draw(st.booleans()),
        "local": draw(st.booleans()),
        "max_size": _max_size(draw, sizes),
        "per_event": draw(st.integers(1, 300)),
        "batch_bytes": draw(st.integers(1, 70000)),
        "raise_every": draw(st.none() | st.integers(1, 4)),
        "stop_after": draw(st.none() | st.integers(1, 40)),
    }


@PROPERTY
@given(scenario=scenarios())
def test_every_datagram_is_delivered_whole_or_counted(scenario: dict[str, Any]) -> None:
    family = scenario["family"]
    host = HOSTS[family]
    limits = Limits(max_size=scenario["max_size"], per_event=scenario["per_event"],
                    batch_bytes=scenario["batch_bytes"])
    payloads = [os.urandom(size) for size in scenario["sizes"]]
    bound = limits.recv_size - 1
    expected = [p for p in payloads if len(p) <= bound]

    with socket.socket(family, socket.SOCK_DGRAM) as rx, socket.socket(family, socket.SOCK_DGRAM) as tx:
        rx.setblocking(False)
        _sockopts.set_rcvbuf(rx, 1 << 22)
        rx.bind((host, 0))
        tx.bind((host, 0))
        if scenario["local"]:
            _sockopts.set_pktinfo(rx, True)
        for data in payloads:
            tx.sendto(data, rx.getsockname())

        sink = Sink()
        locals_: list[LocalAddress] = []
        kept: list[tuple[Any, Any]] = []  # every object a handler was given, kept to the end
        calls = 0
        holder: list[Any] = []

        def after_call() -> None:
            nonlocal calls
            calls += 1
            if scenario["stop_after"] == calls:
                holder[0].stop()
            if scenario["raise_every"] and calls % scenario["raise_every"] == 0:
                raise ValueError(f"call {calls}")

        def one(data: bytes, addr: Any, *local: LocalAddress) -> None:
            kept.append((data, addr))
            locals_.extend(local)
            after_call()

        lists: list[list[tuple[bytes, Any]]] = []

        def many(batch: list[Any]) -> None:
            lists.append([item[:2] for item in batch])
            kept.extend(item[:2] for item in batch)
            locals_.extend(item[2] for item in batch if len(item) == 3)
            after_call()

        handler = {"datagrams_received": many} if scenario["batch"] else {"datagram_received": one}
        if scenario["local"]:  # the same handlers, given each datagram's local address too
            handler = {name + "_on": function for name, function in handler.items()}
        receiver = core.Receiver(sink, rx.fileno(), limits, **handler)
        holder.append(receiver)

        def finished() -> bool:
            c = sink.counters
            return receiver.stopped or c.datagrams_in + c.dropped_oversize == len(payloads)

        deadline = time.monotonic() + 20
        while not finished():
            assert time.monotonic() < deadline, "timed out"
            select.select([rx], [], [], 1)
            receiver.read_event()

        delivered = [data for data, _ in kept]
        assert all(type(d) is bytes for d in delivered)
        assert {addr for _, addr in kept} <= {tx.getsockname()}
        local_index = socket.if_nametoindex("lo")
        assert locals_ == ([LocalAddress(host, local_index)] * len(kept) if scenario["local"] else [])
        # Whole, in order, and unchanged by every later receive into the same arena.
        assert delivered == expected[: len(delivered)]
        assert len(sink.failures) == (calls // scenario["raise_every"] if scenario["raise_every"] else 0)
        if scenario["batch"]:
            assert all(sum(len(d) for d, _ in batch) < limits.batch_bytes + bound + 1 for batch in lists)
            assert all(batch for batch in lists)
        c = sink.counters
        # Read but not delivered (the Receiver stopped mid-batch): received, and dropped on close.
        assert c.datagrams_in - c.dropped_on_close == len(delivered)
        if receiver.stopped:
            assert calls == scenario["stop_after"]
            receiver.read_event()  # after stop(): returns at once, reads nothing
            assert calls == scenario["stop_after"]
        else:
            assert delivered == expected
            assert c.dropped_on_close == 0
            assert sink.counters.datagrams_in == len(expected)
            assert sink.counters.bytes_in == sum(map(len, expected))
            assert sink.counters.dropped_oversize == len(payloads) - len(expected)
        assert sink.receive_errors == []


@st.composite
def send_plans(draw: Any) -> dict[str, Any]:
    count = draw(st.integers(1, 150))
    size = st.one_of(st.integers(0, 40), st.integers(0, 2000), st.sampled_from([0, 1000, 9000, 30000]))
    # Destinations repeat in runs (where GSO applies) and switch (where it cannot).
    runs = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 80)), min_size=1, max_size=10))
    dests = [peer for peer, length in runs for _ in range(length)][:count]
    sizes = draw(st.lists(size, min_size=len(dests), max_size=len(dests)))
    return {
        "family": draw(st.sampled_from(FAMILIES)),
        "dests": dests,
        "sizes": sizes,
        "start": draw(st.integers(0, len(dests))),
        "gso": draw(st.booleans()),
        "kind": draw(st.sampled_from([bytes, bytearray, memoryview])),
    }


@PROPERTY
@given(plan=send_plans())
def test_send_pairs_delivers_each_pair_to_its_peer_in_order(plan: dict[str, Any]) -> None:
    family = plan["family"]
    with receivers(family, HOSTS[family], 3) as peers, socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.bind((HOSTS[family], 0))
        tx.setblocking(False)
        chosen = zip(plan["dests"], plan["sizes"], strict=True)
        pairs = [(plan["kind"](os.urandom(size)), peers[d].getsockname()) for d, size in chosen]
        assert core.send_pairs(tx, pairs, plan["start"], gso=plan["gso"]) == len(pairs)
        for peer in peers:
            got = [data for data, _ in drain_socket(peer)]
            assert got == [bytes(d) for d, a in pairs[plan["start"]:] if a == peer.getsockname()]


@pytest.mark.skipif(not hasattr(memoryview, "__buffer__"), reason="__buffer__ needs Python 3.12")
def test_send_pairs_survives_a_list_emptied_by_a_buffer_exporter() -> None:
    """Getting a buffer can run Python code (``__buffer__``, PEP 688): here it empties the list being sent.
    send_pairs holds a reference to each pair it uses and re-reads the list's size, so nothing dangles."""
    with receivers(socket.AF_INET, "127.0.0.1", 1) as (peer,), socket.socket(socket.AF_INET,
                                                                                socket.SOCK_DGRAM) as tx:
        dest = peer.getsockname()
        pairs: list[Any] = [(b"a", dest), None, (b"never", dest)]

        class Sneaky:
            def __buffer__(self, flags: int) -> memoryview:
                pairs.clear()
                return memoryview(bytearray(b"sneaky"))

        pairs[1] = (Sneaky(), dest)
        assert core.send_pairs(tx, pairs, 0) == 2
        assert pairs == []
        assert [d for d, _ in drain_socket(peer)] == [b"a", b"sneaky"]
