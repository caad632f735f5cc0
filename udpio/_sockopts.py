"""Every socket option udpio sets or reads (multicast membership lives in ``_membership.py``).

Options the caller asked for fail loudly; best-effort options forgive only a named errno, decided here.
Numbers the :mod:`socket` module of Python 3.10/3.11 does not export are defined below with their source.
"""

from __future__ import annotations

import array
import errno
import socket
import struct
import sys

from ._addr import LocalAddress, Source, check_family, family_name, ip_family
from ._errors import InvalidAddressError, InvalidArgumentError
from ._limits import C_INT_MAX, LOCAL_ADDRESS_CACHE_SIZE

IS_LINUX = sys.platform.startswith("linux")

#: Each Linux-only option below is ``None`` where the platform has no such option (elsewhere than Linux; the
#: numbers are Linux's, for Pythons whose socket module does not export them yet). Code reads them at call time,
#: so tests hide one by setting it to ``None`` (tests/test_degrade.py) and see what that platform would do.
#: ``SO_RXQ_OVFL`` (socket(7), Linux >= 2.6.33): every datagram carries, as ancillary data, the uint32
#: count of datagrams the kernel dropped on this socket because its receive queue was full. Without it,
#: ``track_kernel_drops=True`` is ignored and ``kernel_drops`` comes from ``/proc/net/udp`` (or stays 0).
SO_RXQ_OVFL: int | None = getattr(socket, "SO_RXQ_OVFL", 40 if IS_LINUX else None)
#: ``UDP_SEGMENT`` (udp(7), Linux >= 4.18): GSO, one send of many equal-sized datagrams. Without it,
#: ``send_many`` sends each datagram with its own ``sendto``.
UDP_SEGMENT: int | None = getattr(socket, "UDP_SEGMENT", 103 if IS_LINUX else None)
#: ``UDP_GRO`` (udp(7), Linux >= 5.0): the kernel may coalesce equal-sized datagrams into one receive,
#: reporting the segment size as a ``UDP_GRO`` control message (an int). Without it, ``gro=True`` is
#: ignored (``get_extra_info("gro")`` is ``False``) and every datagram is received on its own.
UDP_GRO: int | None = getattr(socket, "UDP_GRO", 104 if IS_LINUX else None)
SOL_UDP: int = getattr(socket, "SOL_UDP", 17)

#: ``IP_PKTINFO`` (ip(7); include/uapi/linux/in.h; the :mod:`socket` module has it from Python 3.12): as a
#: socket option, deliver each IPv4 datagram's ``struct in_pktinfo`` as a control message; as a control
#: message of ``sendmsg``, choose the datagram's source address.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
#: ``IPV6_RECVPKTINFO`` (ipv6(7), RFC 3542 6.1; include/uapi/linux/in6.h): deliver each IPv6 datagram's
#: ``struct in6_pktinfo`` as an ``IPV6_PKTINFO`` control message (the option and the message have two numbers).
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

#: The socket error queue (ip(7)/ipv6(7) IP_RECVERR, IPV6_RECVERR; Linux). With IP_RECVERR on, the kernel
#: queues each ICMP error there, and a socket whose queue is not empty reports POLLERR until it is read:
#: unread, it makes the selector loop spin and makes libuv (uvloop) stop the reader for good. Each entry
#: carries a ``struct sock_extended_err`` (include/uapi/linux/errqueue.h): ``u32 ee_errno; u8 ee_origin,
#: ee_type, ee_code, ee_pad; u32 ee_info, ee_data``, then the offender's address.
#: Without it (``None``), nothing reads the error queue: ICMP errors reach ``error_received`` only as the
#: pending error of a connected socket (ECONNREFUSED), which needs no ``IP_RECVERR``.
IP_RECVERR: int | None = getattr(socket, "IP_RECVERR", 11 if IS_LINUX else None)
IPV6_RECVERR: int | None = getattr(socket, "IPV6_RECVERR", 25 if IS_LINUX else None)
_SO_EE_ORIGIN_LOCAL = 1  # raised by the send call itself (EMSGSIZE...), already reported there
_EXTENDED_ERR = struct.Struct("=IBBBBII")
#: Ancillary room for one error-queue entry: the extended error plus a sockaddr_in6 (28 bytes).
ERRQUEUE_SPACE = socket.CMSG_SPACE(_EXTENDED_ERR.size + 28) + socket.CMSG_SPACE(4)
MSG_ERRQUEUE: int = getattr(socket, "MSG_ERRQUEUE", 0x2000)
#: ``FIONREAD`` (``SIOCINQ`` for sockets, an ioctl): bytes of the next queued datagram (udp(7)).
#: ``None`` where there is no such ioctl (Windows): the transport then always drains until EAGAIN.
try:
    import termios
    from fcntl import ioctl as _ioctl
except ImportError:  # pragma: no cover - Windows
    FIONREAD: int | None = None
else:
    FIONREAD = getattr(termios, "FIONREAD", None)


def parse_icmp_error(level: int, kind: int, data: bytes) -> int:
    """The errno of an error-queue control message that reports an ICMP error (0 for anything else,
    including local errors, which the failing send call already raised)."""
    if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
        return 0
    code, origin = _EXTENDED_ERR.unpack_from(data)[:2]
    return 0 if origin == _SO_EE_ORIGIN_LOCAL else int(code)


def read_icmp_errors(sock: socket.socket, limit: int) -> list[int]:
    """Read the socket's error queue empty (at most ``limit`` entries); the errnos of the ICMP errors in it.

    Local errors are skipped (their send call failed and was reported). Without IP_RECVERR the queue is
    empty and this costs one failing ``recvmsg``; where there is no ``IP_RECVERR`` it does nothing.
    """
    found: list[int] = []
    if IP_RECVERR is None:  # no error queue on this platform
        return found
    for _ in range(limit):
        try:
            _, ancdata, _, _ = sock.recvmsg(1, ERRQUEUE_SPACE, MSG_ERRQUEUE)
        except OSError:  # EAGAIN: empty (the usual case, without IP_RECVERR); anything else: give up
            break
        for level, kind, cdata in ancdata:
            code = parse_icmp_error(level, kind, cdata)
            if code:
                found.append(code)
    return found


def receive_queue_empty(fileno: int, answer: array.array[int]) -> bool:
    """Whether the socket's receive queue is empty, asked with ``FIONREAD`` (``SIOCINQ``, udp(7)) into the
    caller's reusable one-int ``answer``; ``False`` where the ioctl is missing or fails.

    FIONREAD reports the size of the *next* datagram, so a queued zero-length datagram also reads as
    empty: a caller ends its read event, and the still-readable socket brings the loop straight back.
    """
    if FIONREAD is None:  # pragma: no cover - Windows
        return False
    try:
        _ioctl(fileno, FIONREAD, answer, True)
    except OSError:
        return False  # let the receive loop meet the error itself
    return answer[0] == 0

#: Errnos meaning "this kernel or protocol does not have that option": the only ones a best-effort
#: option forgives. ENOPROTOOPT is Linux's answer; EINVAL comes from older kernels for unknown UDP levels;
#: EOPNOTSUPP from BSD-derived stacks.
OPTION_MISSING = frozenset({errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP})


#: ``SO_RCVBUF``/``SO_SNDBUF`` take a C ``int`` (socket(7)); a larger Python int would fail inside
#: ``setsockopt`` with a TypeError instead of naming the value.
_MAX_BUFFER_SIZE = C_INT_MAX


def _check_buffer_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_BUFFER_SIZE:
        raise InvalidArgumentError(what, f"a positive int (bytes) up to {_MAX_BUFFER_SIZE}", value)
    return value


def open_socket(
    family: int,
    *,
    reuse_port: bool = False,
    reuse_addr: bool = False,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    broadcast: bool = False,
) -> socket.socket:
    """A new non-blocking UDP socket of ``family`` with the options asked for; closed again on any failure.

    ``SO_REUSEADDR`` stays off unless asked (CPython removed it from ``create_datagram_endpoint`` because on
    unicast UDP it lets another process steal the port: bpo-37228). IPv6 sockets get ``IPV6_V6ONLY`` set
    explicitly, so the behaviour does not depend on the ``net.ipv6.bindv6only`` sysctl.
    """
    check_family(family)
    if family == 0:
        raise InvalidArgumentError("family", "socket.AF_INET or socket.AF_INET6 for a new socket", family)
    if rcvbuf is not None:
        _check_buffer_size(rcvbuf, "rcvbuf")
    if sndbuf is not None:
        _check_buffer_size(sndbuf, "sndbuf")
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            set_reuse_port(sock)
        if rcvbuf is not None:
            set_rcvbuf(sock, rcvbuf)
        if sndbuf is not None:
            set_sndbuf(sock, sndbuf)
        if broadcast:
            set_broadcast(sock, True)
    except BaseException:
        sock.close()
        raise
    return sock


def set_reuse_port(sock: socket.socket) -> None:
    """Turn on ``SO_REUSEPORT``; raises :class:`NotImplementedError` where the platform lacks it."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        raise NotImplementedError(f"reuse_port=True: SO_REUSEPORT is not available on {sys.platform}")
    sock.setsockopt(socket.SOL_SOCKET, option, 1)


def get_reuse_port(sock: socket.socket) -> bool:
    """Whether ``SO_REUSEPORT`` is on (``False`` where the platform lacks it)."""
    option = getattr(socket, "SO_REUSEPORT", None)
    return option is not None and bool(sock.getsockopt(socket.SOL_SOCKET, option))


def set_reuse_addr(sock: socket.socket, on: bool) -> None:
    """Set ``SO_REUSEADDR`` (multicast listeners sharing a port need it; unicast ones must not have it)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(on))


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Set ``SO_RCVBUF``; Linux doubles the value and caps it at ``net.core.rmem_max`` (socket(7))."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _check_buffer_size(size, "rcvbuf"))


def get_rcvbuf(sock: socket.socket) -> int:
    """The receive buffer size the kernel really uses."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def set_sndbuf(sock: socket.socket, size: int) -> None:
    """Set ``SO_SNDBUF`` (doubled and capped at ``net.core.wmem_max`` on Linux)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _check_buffer_size(size, "sndbuf"))


def get_sndbuf(sock: socket.socket) -> int:
    """The send buffer size the kernel really uses."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def set_broadcast(sock: socket.socket, on: bool) -> None:
    """Allow or forbid sending to broadcast addresses (``SO_BROADCAST``)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(bool(on)))


def get_broadcast(sock: socket.socket) -> bool:
    """Whether sending to broadcast addresses is allowed."""
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))


def set_v6only(sock: socket.socket, on: bool) -> None:
    """Set ``IPV6_V6ONLY`` on an IPv6 socket before ``bind`` (ipv6(7)); off, it also serves IPv4 peers as
    ``::ffff:a.b.c.d``. udpio's own sockets are v6-only (:func:`open_socket`); the Twisted drop-in reactor
    turns it off because Twisted's IPv6 ports are dual-stack on Linux (``net.ipv6.bindv6only=0``)."""
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(bool(on)))


def get_v6only(sock: socket.socket) -> bool:
    """Whether an IPv6 socket refuses IPv4-mapped traffic."""
    return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


def is_dual_stack(sock: socket.socket | None) -> bool:
    """Whether ``sock`` serves IPv4 peers too, seen as ``::ffff:a.b.c.d``: an IPv6 socket with ``IPV6_V6ONLY``
    off (ipv6(7)). ``False`` for IPv4 sockets, for ``None`` (a transport without a socket) and for a closed one."""
    if sock is None or sock.family != socket.AF_INET6:
        return False
    try:
        return not get_v6only(sock)
    except OSError:  # EBADF: closed under us; it serves nobody
        return False


def pending_error(sock: socket.socket) -> int:
    """Read and clear ``SO_ERROR`` (the pending asynchronous error, e.g. ECONNREFUSED from ICMP)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def enable_rxq_ovfl(sock: socket.socket) -> bool:
    """Best effort: ask for the kernel drop counter on every datagram. ``False`` where the kernel lacks it."""
    if SO_RXQ_OVFL is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except OSError as exc:
        if exc.errno in OPTION_MISSING:
            return False
        raise
    return True


def parse_rxq_ovfl(data: bytes) -> int:
    """The cumulative drop count carried by an ``SO_RXQ_OVFL`` control message (a native uint32)."""
    return int(struct.unpack("=I", data[:4])[0])


def enable_gro(sock: socket.socket) -> bool:
    """Best effort: let the kernel coalesce received datagrams (``UDP_GRO``). ``False`` where unsupported."""
    if UDP_GRO is None:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        if exc.errno in OPTION_MISSING:
            return False
        raise
    return True


def gso_supported(sock: socket.socket) -> bool:
    """Whether ``UDP_SEGMENT`` works on this socket (probed with a harmless ``getsockopt``)."""
    if UDP_SEGMENT is None:
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError as exc:
        if exc.errno in OPTION_MISSING:
            return False
        raise
    return True


def gso_cmsg(segment_size: int) -> tuple[int, int, bytes]:
    """Ancillary data for ``sendmsg`` asking the kernel to cut the buffer into ``segment_size`` datagrams.

    udp(7): the value is a ``uint16_t``; the last segment may be shorter. Only called once
    :func:`gso_supported` said yes, so ``UDP_SEGMENT`` exists.
    """
    assert UDP_SEGMENT is not None  # internal invariant (gso_supported), not caller input
    return (SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment_size))


# -- the local address of each datagram (IP_PKTINFO / IPV6_RECVPKTINFO) ----------------------------------
#
# A socket bound to the wildcard address (0.0.0.0, ::) receives datagrams sent to any address of the host, and
# without more the kernel picks the source of each reply by route: a request sent to a service address on
# ``lo`` (anycast, direct server return) is answered from the host's own address, and the client's connected
# socket drops that reply. With these options on, each datagram carries its destination as a control message,
# and a reply sent with that address in the same control message leaves from it.

#: ``struct in_pktinfo`` (ip(7)): ``int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr``,
#: native byte order for the index, network order for the addresses.
_IN_PKTINFO = struct.Struct("=i4s4s")
#: ``struct in6_pktinfo`` (ipv6(7), RFC 3542 6.1): ``struct in6_addr ipi6_addr; int ipi6_ifindex``.
_IN6_PKTINFO = struct.Struct("=16si")
#: Room for both control messages: an IPv4 peer of a dual-stack socket brings both (see :func:`set_pktinfo`).
PKTINFO_SPACE = socket.CMSG_SPACE(_IN_PKTINFO.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size)
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, RFC 4291 2.5.5.2
_ANY4 = bytes(4)
_ANY6 = bytes(16)
#: A datagram whose destination is known only as "one of this host's addresses": the wildcard of the family.
#: Sent as a source it leaves the choice to the kernel (``ipi_spec_dst`` 0, ip(7); unspecified ``ipi6_addr``,
#: RFC 3542 6.1), which is what a reply without a source does.
UNKNOWN_LOCAL: dict[int, LocalAddress] = {
    socket.AF_INET: LocalAddress("0.0.0.0"),
    socket.AF_INET6: LocalAddress("::"),
}

# Parsed control messages, by their bytes: a server sees few distinct (address, interface) pairs, so after the
# first datagram to an address each one costs a dict lookup instead of unpacking, formatting and a dataclass.
# Bounded (cleared when full): the bytes come from the kernel, but a host may have many addresses.
_LOCAL4: dict[bytes, LocalAddress] = {}
_LOCAL4_MAPPED: dict[bytes, LocalAddress] = {}
_LOCAL6: dict[bytes, LocalAddress] = {}


def set_pktinfo(sock: socket.socket, on: bool) -> None:
    """Turn the per-datagram destination (``IP_PKTINFO`` / ``IPV6_RECVPKTINFO``) on or off; read it from
    ``recvmsg`` with :func:`local_address`.

    On a dual-stack IPv6 socket both are set. Since Linux 3.18 ("ipv6: fix IPV6_PKTINFO with v4 mapped")
    ``IPV6_RECVPKTINFO`` alone also reports IPv4 peers, with a mapped destination (``ip6_datagram_recv_common_ctl``
    in net/ipv6/datagram.c); before it, only ``IP_PKTINFO`` did. And only ``IP_PKTINFO`` carries ``ipi_spec_dst``,
    the kernel's own answer for a datagram sent to a broadcast address (see :func:`local_address`). With both
    on, an IPv4 datagram brings both messages, and the IPv4 one is used.
    """
    value = int(bool(on))
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, value)
        return
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, value)
    if not get_v6only(sock):
        # IPv4 options are accepted on an AF_INET6 socket (net/ipv6/ipv6_sockglue.c hands SOL_IP to the IPv4 code).
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, value)


def get_pktinfo(sock: socket.socket) -> bool:
    """Whether the socket reports each datagram's destination (the option of its own family)."""
    if sock.family == socket.AF_INET:
        return bool(sock.getsockopt(socket.IPPROTO_IP, IP_PKTINFO))
    return bool(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO))


def local_address(level: int, data: bytes, mapped: bool = False) -> LocalAddress | None:
    """The :class:`~udpio.LocalAddress` an ``IP_PKTINFO`` (``level`` ``IPPROTO_IP``) or ``IPV6_PKTINFO``
    control message carries; ``mapped``: the socket is IPv6, so an IPv4 address is written ``::ffff:a.b.c.d``
    as the socket names its IPv4 peers. ``None`` for a message too short to be one.

    IPv4: the host is ``ipi_spec_dst``, "the local address of the packet" (ip(7)): the destination itself when
    it is an address of this host; for a datagram sent to a broadcast address or a group, the address of this
    host the kernel would answer from (``fib_compute_spec_dst``, net/ipv4/fib_frontend.c), never the broadcast
    or group address, which cannot be a source. The kernel fills ``ipi_spec_dst`` and ``ipi_ifindex`` when the
    datagram is queued, and only if the option was on by then (``ipv4_pktinfo_prepare``,
    net/ipv4/ip_sockglue.c): for a datagram queued before the option was set both are 0, and the header's
    destination (``ipi_addr``) stands in when it is unicast.

    IPv6: the header's destination (``ipi6_addr``); a group address, which cannot be a source, is reported as
    ``::`` (any: the kernel selects the source, RFC 6724, on the interface given).
    """
    if level == socket.IPPROTO_IP:
        cache = _LOCAL4_MAPPED if mapped else _LOCAL4
        found = cache.get(data)
        if found is not None:
            return found
        if len(data) < _IN_PKTINFO.size:
            return None
        index, spec_dst, header_dst = _IN_PKTINFO.unpack_from(data)
        packed = spec_dst
        if packed == _ANY4 and 0 < header_dst[0] < 224:  # not 0/8, a group (224/4) or a broadcast (255.x)
            packed = header_dst  # queued before the option was set: the header's unicast destination
        if mapped:
            host = socket.inet_ntop(socket.AF_INET6, _MAPPED_PREFIX + packed)
        else:
            host = socket.inet_ntop(socket.AF_INET, packed)
    else:
        cache = _LOCAL6
        found = cache.get(data)
        if found is not None:
            return found
        if len(data) < _IN6_PKTINFO.size:
            return None
        packed, index = _IN6_PKTINFO.unpack_from(data)
        host = "::" if packed[0] == 0xFF else socket.inet_ntop(socket.AF_INET6, packed)
    local = LocalAddress(host, max(index, 0))
    if len(cache) >= LOCAL_ADDRESS_CACHE_SIZE:
        cache.clear()
    cache[bytes(data)] = local
    return local


def pktinfo_cmsg(family: int, source: Source, dual_stack: bool) -> tuple[int, int, bytes]:
    """The control message that makes ``sendmsg`` on a socket of ``family`` send from ``source`` (a
    :class:`~udpio.LocalAddress`, or an IP literal string).

    IPv4 (ip(7)): ``ipi_spec_dst`` is the source; ``ipi_ifindex`` stays 0. A non-zero index would pin the
    route lookup to that interface, and where no route leaves through it the kernel sends as if the peer
    were on its link (``ip_route_output_key_hash_rcu``, net/ipv4/route.c: "Apparently, routing tables are
    wrong. Assume, that the destination is on link."), so a reply to a client behind a router would be lost on
    a host whose routes are asymmetric; Unbound and Knot DNS clear it for the same reason. With routes that
    are symmetric the reply still leaves on the interface the request came in on: the route chooses it.

    IPv6 (ipv6(7), RFC 3542 6.1): ``ipi6_addr`` is the source; ``ipi6_ifindex`` is set only for a link-local
    source, whose address means nothing without its interface (RFC 4007), else 0 as for IPv4. On a dual-stack
    socket an IPv4 source is written ``::ffff:a.b.c.d`` and sent as ``IPV6_PKTINFO``: the kernel hands the
    datagram to the IPv4 code, which takes a mapped ``ipi6_addr`` as the IPv4 source (``ip_cmsg_send``,
    net/ipv4/ip_sockglue.c).

    Raises :class:`~udpio.InvalidAddressError` for a source that is not an address of the socket's family.
    """
    if isinstance(source, str):
        try:
            source = LocalAddress(source)
        except InvalidAddressError:
            raise InvalidAddressError("source", "an IP address of this host (not a name)", source) from None
    elif not isinstance(source, LocalAddress):
        raise InvalidAddressError("source", "a udpio.LocalAddress or an IP address string", source)
    host = source.host
    if family == socket.AF_INET:
        if ip_family(host) != socket.AF_INET:
            raise InvalidAddressError("source", "an IPv4 address (this socket is IPv4)", host)
        return (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, socket.inet_aton(host), _ANY4))
    if ip_family(host) == socket.AF_INET6:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    elif dual_stack:
        packed = _MAPPED_PREFIX + socket.inet_aton(host)
    else:
        raise InvalidAddressError("source", "an IPv6 address (this socket is IPv6-only)", host)
    if packed.startswith(_MAPPED_PREFIX) and not dual_stack:
        raise InvalidAddressError("source", "an IPv6 address (this socket is IPv6-only)", host)
    link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80  # fe80::/10
    return (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, source.interface if link_local else 0))


def is_mapped_source(cmsg: tuple[int, int, bytes]) -> bool:
    """Whether a control message of :func:`pktinfo_cmsg` carries an IPv4 source (a mapped one on IPv6)."""
    return cmsg[0] == socket.IPPROTO_IP or cmsg[2].startswith(_MAPPED_PREFIX)


def is_mapped_host(host: str) -> bool:
    """Whether ``host`` is an IPv4-mapped IPv6 literal (``::ffff:a.b.c.d``, in any of its spellings)."""
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0]).startswith(_MAPPED_PREFIX)
    except (OSError, ValueError):
        return False


def describe(sock: socket.socket) -> dict[str, object]:
    """The options of ``sock`` as the kernel reports them (for ``udpio`` diagnostics and tests)."""
    info: dict[str, object] = {
        "family": family_name(sock.family),
        "rcvbuf": get_rcvbuf(sock),
        "sndbuf": get_sndbuf(sock),
        "broadcast": get_broadcast(sock),
        "reuse_port": get_reuse_port(sock),
        "reuse_addr": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
    }
    if sock.family == socket.AF_INET6:
        info["v6only"] = get_v6only(sock)
    return info
