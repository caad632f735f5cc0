"""Which datagrams a server may answer: reflection guard, rate limits, allow/deny lists. No sockets here.

A UDP server on the open internet answers whoever the source address *claims* to be, and that address can be
forged. Two abuses follow (US-CERT TA14-017A lists the services involved):

* **amplification**: a small request that triggers a larger reply lets an attacker multiply the traffic it
  aims at a victim. An echo reply is the request itself, so echo cannot amplify; :meth:`SafetyPolicy.check_reply`
  states the rule for servers whose replies are computed;
* **loops and reflection**: a request forged to come from another UDP service (echo 7, chargen 19, DNS 53...)
  makes the two servers answer each other forever (the echo/chargen loop, CVE-1999-0103). Datagrams from those
  ports, from port 0 (never a real sender: RFC 768 lets it mean "no reply expected") and from the server's own
  port are dropped.

Rate limits (token buckets per source and in total) cap what any address, forged or not, can get out of the
server; allow/deny lists of CIDR networks say who may talk to it at all.

:class:`SafetyPolicy` is fed ``(addr, now)`` and answers ``None`` (answer it) or a drop reason, one of the
``DROP_*`` constants, which the I/O layer counts (``Counters.count_policy_drop``). Time enters as an argument,
so the policy is tested without a loop or a clock. Not thread-safe: one policy per server, used on its loop.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import socket
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from ._addr import check_port
from ._errors import InvalidAddressError, InvalidArgumentError

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Source port 0: no real sender uses it (bind(0) means "pick a port"); only a forged datagram carries it.
DROP_SOURCE_PORT_ZERO = "source_port_zero"
#: From a well-known UDP service port (:data:`DEFAULT_BLOCKED_PORTS`): answering would start a loop or
#: reflect traffic at that service.
DROP_SERVICE_PORT = "service_port"
#: From the server's own port: itself (a forged copy of its own address) or another instance of the same
#: service elsewhere; two echo servers answering each other loop forever.
DROP_OWN_PORT = "own_port"
#: The source is in a denied network.
DROP_DENIED = "denied"
#: An allow list is set and the source is not in it.
DROP_NOT_ALLOWED = "not_allowed"
#: The source's token bucket is empty.
DROP_SOURCE_RATE = "source_rate"
#: The server-wide token bucket is empty.
DROP_GLOBAL_RATE = "global_rate"
#: A reply larger than its request (:meth:`SafetyPolicy.check_reply`).
DROP_AMPLIFICATION = "amplification"
#: ``addr`` is not an IP address tuple as the socket module gives it: nothing could be sent back to it.
DROP_BAD_ADDRESS = "bad_address"

#: Every reason a :class:`SafetyPolicy` can give, in the order its checks run.
DROP_REASONS = (
    DROP_SOURCE_PORT_ZERO,
    DROP_SERVICE_PORT,
    DROP_OWN_PORT,
    DROP_DENIED,
    DROP_NOT_ALLOWED,
    DROP_SOURCE_RATE,
    DROP_GLOBAL_RATE,
    DROP_AMPLIFICATION,
    DROP_BAD_ADDRESS,
)

#: Source ports never answered: UDP services that answer anything (so a forged request makes them loop with
#: us) or that are known reflectors. 7 echo, 13 daytime, 17 qotd, 19 chargen, 37 time (RFC 862/867/865/864/868),
#: 53 DNS, 69 TFTP, 111 portmapper, 123 NTP, 137 NetBIOS name, 161 SNMP, 389 CLDAP, 427 SLP (CVE-2023-29552),
#: 1900 SSDP, 3283 Apple Remote Desktop, 3702 WS-Discovery, 5353 mDNS, 5683 CoAP, 11211 memcached.
DEFAULT_BLOCKED_PORTS: frozenset[int] = frozenset(
    {7, 13, 17, 19, 37, 53, 69, 111, 123, 137, 161, 389, 427, 1900, 3283, 3702, 5353, 5683, 11211}
)

#: Networks exempt from rate limits by default: loopback. A datagram with a loopback source cannot arrive from
#: outside the host (Linux discards it as a "martian" on every other interface, RFC 1122 3.2.1.3), so it comes
#: from a local process, which a rate limit cannot stop anyway (it can open as many sockets as it likes).
#: Benchmarks and tests on loopback get full speed; the reflection guard still applies to them.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

#: Default per-source rate, datagrams per second. A person or a probe sends a few a second; 200/s leaves room
#: for a fast ``udpio ping`` while a forged victim gets at most 200 replies a second from this server.
DEFAULT_SOURCE_RATE = 200.0
#: Default server-wide rate, datagrams per second: caps the total a flood of forged sources can get out of
#: the server (sources exempt from rate limits are not counted).
DEFAULT_GLOBAL_RATE = 20_000.0

#: Per-source buckets kept at most; the least recently seen source is forgotten beyond it (counted in
#: :attr:`SafetyPolicy.evictions`), so a flood from forged sources cannot grow memory without limit. An entry
#: costs about 250 bytes (key string, bucket, ordered-dict node): 16384 of them stay under 5 MB. A forgotten
#: source comes back with a full bucket; the global bucket still bounds what that gives an attacker.
MAX_TRACKED_SOURCES = 16_384
#: Verdicts of the allow/deny/exempt lists remembered per address string, so the lists are matched once per
#: address rather than once per datagram; the cache is cleared when full (bounded, like the transport's).
_VERDICT_CACHE_SIZE = 4096

# Internal verdicts of the address lists, next to the DROP_DENIED / DROP_NOT_ALLOWED reasons.
_PASS = ""  # answer without rate limits (exempt, or no limit configured)
_LIMIT = "limit"  # subject to the rate limits


def check_rate(value: object, what: str = "rate") -> float:
    """Return ``value`` as a float if it is a finite number > 0 (datagrams per second), else raise
    :class:`~udpio.InvalidArgumentError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(what, "a finite number > 0 (datagrams per second)", value)
    return float(value)


def check_burst(value: object, what: str = "burst") -> float:
    """Return ``value`` as a float if it is a finite number >= 1 (datagrams), else raise
    :class:`~udpio.InvalidArgumentError` naming it (a bucket smaller than one datagram would refuse all)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise InvalidArgumentError(what, "a finite number >= 1 (datagrams)", value)
    return float(value)


def check_max_sources(value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise :class:`~udpio.InvalidArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError("max_sources", "an int >= 1", value)
    return value


def parse_network(value: object) -> Network:
    """A CIDR network (``"192.0.2.0/24"``, ``"2001:db8::/32"``, a bare address meaning /32 or /128) or an
    ``ipaddress`` network object; anything else raises :class:`~udpio.InvalidAddressError` naming it.

    Host bits must be zero (``"10.0.0.1/8"`` is refused): a list that says more than it means is a typo.
    """
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str):
        raise InvalidAddressError("network", "a CIDR string such as '192.0.2.0/24' or '2001:db8::/32'", value)
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise InvalidAddressError("network", f"a CIDR network with its host bits zero ({exc})", value) from None


def parse_networks(values: Iterable[object], what: str) -> tuple[Network, ...]:
    """:func:`parse_network` over a list (a single string is refused: it would be read character by character)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(what, "a list of CIDR networks", values)
    return tuple(parse_network(v) for v in values)


def _check_ports(values: Iterable[object]) -> frozenset[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError("blocked_ports", "a collection of ports", values)
    return frozenset(check_port(p, "blocked port") for p in values)


#: An IP as ``(version, integer)``, and a network as ``(version, network integer, mask integer)``: matching
#: is then two integer operations, where ``ipaddress`` objects cost microseconds per address.
_IP: TypeAlias = tuple[int, int]
_Net: TypeAlias = tuple[int, int, int]
#: The first 12 bytes of an IPv4-mapped IPv6 address (RFC 4291 2.5.5.2), ``::ffff:a.b.c.d``.
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _source_ip(host: str) -> _IP | None:
    """A source host string as the socket module gives it, as ``(version, int)``; IPv4-mapped IPv6 (a
    dual-stack socket's view of an IPv4 peer) as the IPv4 address it is, so IPv4 lists match it; a scope
    (``fe80::1%eth0``) is ignored for matching. ``None`` if it is no IP literal."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED_PREFIX:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def _as_ints(net: Network) -> _Net:
    return net.version, int(net.network_address), int(net.netmask)


def _matches(ip: _IP, nets: tuple[_Net, ...]) -> bool:
    version, value = ip
    return any(version == v and value & mask == base for v, base, mask in nets)


class _Bucket:
    """A token bucket's state; rate and burst live in the policy (the same for every source)."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class SafetyPolicy:
    """Decides, per datagram, whether a server may answer it; any server can use one (the echo server does
    by default).

    Checks, in order, each with its ``DROP_*`` reason:

    1. reflection guard (``reflection_guard=True``): source port 0, a port in ``blocked_ports`` (default
       :data:`DEFAULT_BLOCKED_PORTS`), or the server's own port (after :meth:`bind`);
    2. ``deny``, then ``allow`` (if not empty): lists of CIDR networks, IPv4 and IPv6 (IPv4-mapped IPv6
       sources match IPv4 networks);
    3. per-source token bucket, ``rate`` datagrams/s with ``burst`` (default one second's worth), state for
       at most ``max_sources`` sources (least recently seen forgotten first); ``rate=None`` turns it off;
    4. server-wide token bucket, ``global_rate`` / ``global_burst``; ``global_rate=None`` turns it off.

    Sources in ``exempt`` networks (default :data:`LOOPBACK_NETWORKS`) skip steps 3 and 4 only.

    Bad options raise :class:`~udpio.InvalidArgumentError` (or its subclasses) naming the value.
    """

    def __init__(
        self,
        *,
        reflection_guard: bool = True,
        blocked_ports: Iterable[int] = DEFAULT_BLOCKED_PORTS,
        rate: float | None = DEFAULT_SOURCE_RATE,
        burst: float | None = None,
        global_rate: float | None = DEFAULT_GLOBAL_RATE,
        global_burst: float | None = None,
        allow: Iterable[str | Network] = (),
        deny: Iterable[str | Network] = (),
        exempt: Iterable[str | Network] = LOOPBACK_NETWORKS,
        max_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        if not isinstance(reflection_guard, bool):
            raise InvalidArgumentError("reflection_guard", "True or False", reflection_guard)
        self._guard = reflection_guard
        self._blocked = _check_ports(blocked_ports)
        self._rate = None if rate is None else check_rate(rate, "rate")
        if burst is not None and self._rate is None:
            raise InvalidArgumentError("burst", "None when rate is None (no per-source limit)", burst)
        self._burst = (
            0.0 if self._rate is None else max(1.0, self._rate) if burst is None else check_burst(burst, "burst")
        )
        self._global_rate = None if global_rate is None else check_rate(global_rate, "global_rate")
        if global_burst is not None and self._global_rate is None:
            raise InvalidArgumentError("global_burst", "None when global_rate is None", global_burst)
        self._global_burst = (
            0.0
            if self._global_rate is None
            else max(1.0, self._global_rate)
            if global_burst is None
            else check_burst(global_burst, "global_burst")
        )
        self._allow = parse_networks(allow, "allow")
        self._deny = parse_networks(deny, "deny")
        self._exempt = parse_networks(exempt, "exempt")
        self._allow_ints = tuple(map(_as_ints, self._allow))
        self._deny_ints = tuple(map(_as_ints, self._deny))
        self._exempt_ints = tuple(map(_as_ints, self._exempt))
        self._max_sources = check_max_sources(max_sources)
        self._own_port: int | None = None
        self._port_reasons: dict[int, str] = {}
        self._rebuild_port_reasons()
        self._verdicts: dict[str, str] = {}
        self._sources: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._last_host: str | None = None
        self._last_bucket = _Bucket(0.0, 0.0)  # placeholder until _last_host is set
        # Starts full: its stamp in the infinite past refills it to the burst on first use, whatever the clock.
        self._global = _Bucket(self._global_burst, -math.inf)
        #: Per-source states forgotten because :data:`MAX_TRACKED_SOURCES` (``max_sources``) was reached.
        self.evictions = 0

    # -- configuration ----------------------------------------------------------------------------

    def bind(self, address: object) -> None:
        """Tell the policy the server's own address (``sockname``), so datagrams from its port are dropped.

        Called by the server when its socket is bound; anything that is not an address tuple is ignored
        (a transport that cannot say where it is bound).
        """
        port = address[1] if isinstance(address, tuple) and len(address) >= 2 else None
        self._own_port = port if isinstance(port, int) and not isinstance(port, bool) else None
        self._rebuild_port_reasons()

    def _rebuild_port_reasons(self) -> None:
        reasons: dict[int, str] = {}
        if self._guard:
            reasons = dict.fromkeys(self._blocked, DROP_SERVICE_PORT)
            if self._own_port:
                reasons[self._own_port] = DROP_OWN_PORT
            reasons[0] = DROP_SOURCE_PORT_ZERO
        self._port_reasons = reasons

    def options(self) -> dict[str, Any]:
        """The constructor arguments as plain JSON-able values: ``SafetyPolicy(**p.options())`` builds an
        equal policy with fresh state (how worker processes get theirs)."""
        return {
            "reflection_guard": self._guard,
            "blocked_ports": sorted(self._blocked),
            "rate": self._rate,
            "burst": self._burst if self._rate is not None else None,
            "global_rate": self._global_rate,
            "global_burst": self._global_burst if self._global_rate is not None else None,
            "allow": [str(n) for n in self._allow],
            "deny": [str(n) for n in self._deny],
            "exempt": [str(n) for n in self._exempt],
            "max_sources": self._max_sources,
        }

    def describe(self) -> str:
        """One line saying what the policy does (the CLI prints it at start)."""
        parts = [
            f"reflection guard on ({len(self._blocked)} service ports, port 0, own port)"
            if self._guard
            else "reflection guard OFF"
        ]
        parts.append(
            f"per-source {self._rate:g}/s burst {self._burst:g}" if self._rate is not None else "no per-source limit"
        )
        parts.append(
            f"global {self._global_rate:g}/s burst {self._global_burst:g}"
            if self._global_rate is not None
            else "no global limit"
        )
        if self._deny:
            parts.append("deny " + ",".join(map(str, self._deny)))
        if self._allow:
            parts.append("allow only " + ",".join(map(str, self._allow)))
        if self._exempt and (self._rate is not None or self._global_rate is not None):
            parts.append("limits exempt " + ",".join(map(str, self._exempt)))
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"<udpio.SafetyPolicy {self.describe()}>"

    @property
    def tracked_sources(self) -> int:
        """Sources whose per-source bucket is held now (at most ``max_sources``)."""
        return len(self._sources)

    # -- decisions ----------------------------------------------------------------------------

    def admit(self, addr: Any, now: float) -> str | None:
        """``None`` if the datagram from ``addr`` (as the socket gives it) may be answered at time ``now``
        (seconds, any monotonic clock), else the ``DROP_*`` reason. Never raises, whatever ``addr`` is.

        Cheap on purpose, it runs per datagram: one dict lookup for the port, one for the address's list
        verdict (cached per address), and bucket arithmetic only for rate-limited sources; consecutive
        datagrams from one source (a batch from one peer) reuse its bucket without touching the LRU table.
        """
        try:
            reason = self._port_reasons.get(addr[1])
            if reason is not None:
                return reason
            host = addr[0]
            verdict = self._verdicts.get(host)
        except (TypeError, IndexError, KeyError):
            return DROP_BAD_ADDRESS
        if verdict is None:
            verdict = self._classify(host)
        if verdict is not _LIMIT:
            return verdict or None
        return self._limit(host, now)

    def filter(self, batch: list[tuple[Any, Any]], now: float, drop: Callable[[str], None]) -> list[tuple[Any, Any]]:
        """The ``(data, addr)`` pairs of ``batch`` that :meth:`admit` lets through at ``now``, in order;
        ``drop(reason)`` is called for each of the others. The batch form of :meth:`admit` for servers that
        take datagrams in batches: the same decisions, with the per-datagram method call saved."""
        admitted: list[tuple[Any, Any]] = []
        append = admitted.append
        port_reason = self._port_reasons.get
        verdict_of = self._verdicts.get
        for item in batch:
            try:
                addr = item[1]
                reason = port_reason(addr[1])
                if reason is None:
                    host = addr[0]
                    verdict = verdict_of(host)
                    if verdict is None:
                        verdict = self._classify(host)
                    if verdict is _PASS:  # the common case on a healthy server: answer, nothing else to do
                        append(item)
                        continue
                    reason = self._limit(host, now) if verdict is _LIMIT else verdict
            except (TypeError, IndexError, KeyError):
                reason = DROP_BAD_ADDRESS
            if reason is None:
                append(item)
            else:
                drop(reason)
        return admitted

    def _limit(self, host: str, now: float) -> str | None:
        """The token buckets, for a source subject to them: per source, then server-wide."""
        rate = self._rate
        if rate is not None:
            bucket = self._last_bucket if host == self._last_host else self._source_bucket(host, now)
            # Token bucket, inlined (a function call per datagram costs as much as the arithmetic).
            tokens = bucket.tokens
            elapsed = now - bucket.stamp
            if elapsed > 0:  # a clock that goes backwards refills nothing (and never drains)
                tokens += elapsed * rate
                tokens = min(tokens, self._burst)
                bucket.stamp = now
            if tokens < 1:
                bucket.tokens = tokens
                return DROP_SOURCE_RATE
            bucket.tokens = tokens - 1
        rate = self._global_rate
        if rate is not None:
            bucket = self._global
            tokens = bucket.tokens
            elapsed = now - bucket.stamp
            if elapsed > 0:
                tokens += elapsed * rate
                tokens = min(tokens, self._global_burst)
                bucket.stamp = now
            if tokens < 1:
                bucket.tokens = tokens
                return DROP_GLOBAL_RATE
            bucket.tokens = tokens - 1
        return None

    def _classify(self, host: object) -> str:
        """Match ``host`` against deny, allow and exempt once; the verdict is cached for the address."""
        if not isinstance(host, str):
            return DROP_BAD_ADDRESS
        ip = _source_ip(host)
        verdict: str
        if ip is None:
            verdict = DROP_BAD_ADDRESS
        elif _matches(ip, self._deny_ints):
            verdict = DROP_DENIED
        elif self._allow_ints and not _matches(ip, self._allow_ints):
            verdict = DROP_NOT_ALLOWED
        elif (self._rate is None and self._global_rate is None) or _matches(ip, self._exempt_ints):
            verdict = _PASS
        else:
            verdict = _LIMIT
        if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return verdict

    def _source_bucket(self, host: str, now: float) -> _Bucket:
        """The bucket of ``host``, made (full) if new, marked most recently used; the least recently used
        one is forgotten when the table is full."""
        sources = self._sources
        bucket = sources.get(host)
        if bucket is None:
            if len(sources) >= self._max_sources:
                sources.popitem(last=False)
                self.evictions += 1
            bucket = sources[host] = _Bucket(self._burst, now)
        else:
            sources.move_to_end(host)
        self._last_host, self._last_bucket = host, bucket
        return bucket

    def check_reply(self, request_size: int, reply_size: int) -> str | None:
        """:data:`DROP_AMPLIFICATION` if a reply of ``reply_size`` bytes answers a request of ``request_size``
        bytes, else ``None``: a server must never send more than it received, or forged requests turn it
        into an amplifier. (Echo replies are their request, so the echo server meets this by construction.)"""
        return DROP_AMPLIFICATION if reply_size > request_size else None
