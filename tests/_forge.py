"""Forged UDP datagrams and private namespaces to send them in (tests only; needs root).

Every socket here is created inside a namespace the calling test made (``_netns.entered``), so nothing a
forged header says can reach the host's own interfaces. With ``IPPROTO_RAW`` the whole IP header is ours:
IPv4 (ip(7) IP_HDRINCL: the kernel fills the checksum and length, and a zero source, so 0.0.0.0 cannot be
forged this way) and IPv6 (ipv6(7): an IPv6 raw socket of protocol IPPROTO_RAW includes the header; UDP over
IPv6 needs its checksum, RFC 8200 8.1, computed here).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Iterator

from . import _netns

IPPROTO_UDP = 17


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 packet (header and UDP, checksum 0: "none", RFC 768) from ``src`` to ``dst``."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, IPPROTO_UDP, 0,
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )
    return header + udp


def udp6(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv6 packet (header and UDP with its checksum) from ``src`` to ``dst``."""
    source, dest = socket.inet_pton(socket.AF_INET6, src[0]), socket.inet_pton(socket.AF_INET6, dst[0])
    length = 8 + len(payload)
    pseudo = source + dest + struct.pack("!I3xB", length, IPPROTO_UDP)
    body = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    check = checksum(pseudo + body) or 0xFFFF  # 0 means "no checksum", which IPv6 forbids
    body = struct.pack("!HHHH", src[1], dst[1], length, check) + payload
    return struct.pack("!IHBB", 6 << 28, length, IPPROTO_UDP, 64) + source + dest + body


def raw_sender(ns: str, family: int) -> socket.socket:
    """A header-including raw socket created in namespace ``ns`` (it stays there)."""
    with _netns.entered(ns):
        return socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)


def send_forged(raw: socket.socket, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """Send one datagram that claims to come from ``src``."""
    if raw.family == socket.AF_INET:
        raw.sendto(udp4(src, dst, payload), (dst[0], 0))
    else:
        raw.sendto(udp6(src, dst, payload), (dst[0], 0))


def _mac(ns: str, device: str) -> str:
    return str(json.loads(_netns.ip("-j", "link", "show", device, ns=ns))[0]["address"])


def shape(ns: str, device: str) -> str:
    """Make ``device`` a slow link: ``netem delay 40ms`` where the kernel has netem, else a token bucket at
    8 kbit/s (a 50-byte frame takes 50 ms to go out). Either way a round trip is far longer than the
    5 ms in which the default per-source bucket gets a token back. Returns what was set."""
    for qdisc in (("netem", "delay", "40ms"), ("tbf", "rate", "8kbit", "burst", "200", "latency", "5s")):
        try:
            _netns.ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", device, "root", *qdisc)
        except RuntimeError:
            continue
        return " ".join(qdisc)
    raise RuntimeError(f"no qdisc can slow down {device} here (neither netem nor tbf)")


@contextlib.contextmanager
def linked_pair(tag: str, *, slow: bool = False) -> Iterator[tuple[str, str, str]]:
    """Two namespaces joined by a veth pair: ``a`` has 10.77.0.1/24 and fd77::1/64, ``b`` 10.77.0.2/24 and
    fd77::2/64; neighbours are static (no ARP or neighbour discovery: a forged source must not depend on
    them). ``slow`` shapes both ends (:func:`shape`). Yields ``(a, b, qdisc)``; both are deleted on exit."""
    with _netns.netns(f"{tag}a") as a, _netns.netns(f"{tag}b") as b:
        _netns.ip("link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b, ns=a)
        for ns, dev, v4, v6 in ((a, "va", "10.77.0.1/24", "fd77::1/64"), (b, "vb", "10.77.0.2/24", "fd77::2/64")):
            _netns.ip("addr", "add", v4, "dev", dev, ns=ns)
            _netns.ip("-6", "addr", "add", v6, "dev", dev, "nodad", ns=ns)
            _netns.ip("link", "set", dev, "up", ns=ns)
        mac_a, mac_b = _mac(a, "va"), _mac(b, "vb")
        peers = ((a, "va", "10.77.0.2", "fd77::2", mac_b), (b, "vb", "10.77.0.1", "fd77::1", mac_a))
        for ns, dev, peer4, peer6, mac in peers:
            _netns.ip("neigh", "replace", peer4, "lladdr", mac, "dev", dev, "nud", "permanent", ns=ns)
            _netns.ip("-6", "neigh", "replace", peer6, "lladdr", mac, "dev", dev, "nud", "permanent", ns=ns)
        qdisc = ""
        if slow:
            qdisc = shape(a, "va")
            shape(b, "vb")
        yield a, b, qdisc
