"""The compiled I/O core between two network namespaces joined by a veth pair (made and removed here):
what loopback cannot show. A link-local IPv6 sender carries a scope id, and a 1500-byte MTU makes the kernel
refuse GSO runs of larger datagrams, which send_pairs must then send one by one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Iterator

import pytest

from udpio import _sockopts

from . import _netns
from .test_core import Limits, Recorder, Sink, drain_socket, pump

pytestmark = pytest.mark.netns

if os.environ.get("UDPIO_NO_EXTENSIONS"):
    pytest.skip("UDPIO_NO_EXTENSIONS is set: this run is the pure-Python path's", allow_module_level=True)
core = pytest.importorskip("udpio._core", reason="the compiled I/O core is not built here")
_REASON = _netns.skip_reason()
if _REASON:
    pytest.skip(f"namespace tests skipped: {_REASON}", allow_module_level=True)


@contextlib.contextmanager
def linked() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by one veth, "va" in the first and "vb" in the second (MTU 1500), with
    fe80::1 / fe80::2 (no duplicate address detection, so usable at once) and 10.78.0.1 / 10.78.0.2."""
    with _netns.netns("core1") as one, _netns.netns("core2") as two:
        _netns.ip("link", "add", "va", "netns", one, "type", "veth", "peer", "name", "vb", "netns", two)
        for ns, dev, v6, v4 in ((one, "va", "fe80::1/64", "10.78.0.1/24"), (two, "vb", "fe80::2/64", "10.78.0.2/24")):
            _netns.ip("addr", "add", v6, "dev", dev, "nodad", ns=ns)
            _netns.ip("addr", "add", v4, "dev", dev, ns=ns)
            _netns.ip("link", "set", dev, "mtu", "1500", "up", ns=ns)
        yield one, two


def _socket_in(ns: str, family: int, bind: tuple[object, ...]) -> socket.socket:
    with _netns.entered(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(bind)
        except BaseException:
            sock.close()
            raise
    return sock


def test_link_local_senders_carry_their_scope_id_as_recvfrom_shows_it() -> None:
    with linked() as (one, two):
        index_a = int(_netns.ip("-o", "link", "show", "va", ns=one).split(":")[0])
        index_b = int(_netns.ip("-o", "link", "show", "vb", ns=two).split(":")[0])
        with contextlib.ExitStack() as stack:
            rx = stack.enter_context(_socket_in(one, socket.AF_INET6, ("fe80::1", 0, 0, index_a)))
            ref = stack.enter_context(_socket_in(one, socket.AF_INET6, ("fe80::1", 0, 0, index_a)))
            tx = stack.enter_context(_socket_in(two, socket.AF_INET6, ("fe80::2", 0, 0, index_b)))
            rx.setblocking(False)
            ref.settimeout(10)
            tx.sendto(b"ref", ("fe80::1", ref.getsockname()[1], 0, index_b))
            expected = ref.recvfrom(16)[1]
            assert expected[0] == "fe80::2" and expected[3] == index_a
            tx.sendto(b"scoped", ("fe80::1", rx.getsockname()[1], 0, index_b))
            sink, rec = Sink(), Recorder()
            receiver = core.Receiver(sink, rx.fileno(), Limits(), datagram_received=rec.datagram_received)
            pump(receiver, rx, lambda: len(rec.got) == 1, timeout=10)
            assert rec.got == [(b"scoped", expected)]
            # And back: send_pairs writes the scope id into the destination it sends to.
            assert core.send_pairs(rx, [(b"reply", expected)], 0) == 1
            tx.settimeout(10)
            assert tx.recvfrom(16)[0] == b"reply"


def test_gso_refused_by_the_route_falls_back_to_one_datagram_per_message() -> None:
    """2000-byte segments over a 1500-byte MTU: the kernel refuses the GSO run (EINVAL, udp(7)); every
    datagram still goes, IP-fragmented as a plain send would be."""
    with linked() as (one, two), contextlib.ExitStack() as stack:
        rx = stack.enter_context(_socket_in(one, socket.AF_INET, ("10.78.0.1", 0)))
        tx = stack.enter_context(_socket_in(two, socket.AF_INET, ("10.78.0.2", 0)))
        _sockopts.set_rcvbuf(rx, 1 << 22)
        rx.setblocking(False)
        if not _sockopts.gso_supported(tx):
            pytest.skip("kernel without UDP GSO")
        dest = rx.getsockname()
        # The kernel does refuse such a run (so the fallback below is what delivers them): EINVAL from
        # udp_send_skb on older kernels, EMSGSIZE on newer ones.
        with pytest.raises(OSError) as info:
            tx.sendmsg([b"x" * 4000], [_sockopts.gso_cmsg(2000)], 0, dest)
        assert info.value.errno in (errno.EINVAL, errno.EMSGSIZE)
        pairs = [(bytes([i]) * 2000, dest) for i in range(10)] + [(bytes([i]) * 500, dest) for i in range(10, 14)]
        assert core.send_pairs(tx, pairs, 0) == len(pairs)
        got: list[bytes] = []
        while len(got) < len(pairs):
            assert select.select([rx], [], [], 10)[0], f"only {len(got)} of {len(pairs)} arrived"
            got += [data for data, _ in drain_socket(rx)]
        assert got == [data for data, _ in pairs]
