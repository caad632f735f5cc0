"""Which datagrams a server may answer: reflection and loop guards, rate limits, allow/deny lists. No sockets here.

A UDP server on the open internet answers whoever the source address *claims* to be, and that address can be
forged. The abuses that follow (US-CERT TA14-017A lists the services involved):

* **amplification**: a small request that triggers a larger reply lets an attacker multiply the traffic it
  aims at a victim. An echo reply is the request itself, so echo cannot amplify; :meth:`SafetyPolicy.check_reply`
  states the rule for servers whose replies are computed;
* **loops**: a request forged to come from another server that answers everything makes the two answer each
  other forever (the echo/chargen loop, CVE-1999-0103). Well-known service ports, port 0 (never a real sender:
  RFC 768 lets it mean "no reply expected") and the server's own port are refused outright; a loop between
  servers on *any* ports is caught when this server's own reply keeps coming back (``LOOP_MAX_RETURNS``);
* **reflection where the reply should not go**: a multicast, broadcast or unspecified source (the reply would
  go to a group, a link or this host), or an IPv4-mapped source that no real peer can have on the socket (see
  :meth:`SafetyPolicy.bind`).

Rate limits (token buckets per source and in total) cap what any address, forged or not, can get out of the
server; allow/deny lists of CIDR networks say who may talk to it at all.

:class:`SafetyPolicy` is fed ``(data, addr, now)`` and answers ``None`` (answer it) or a :class:`DropReason`,
which the I/O layer counts (``Counters.count_policy_drop``). Time enters as an argument, so the policy is
tested without a loop or a clock. Not thread-safe: one policy per server, used on its loop.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import enum
import ipaddress
import math
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias, TypeVar

from ._addr import check_port
from ._errors import InvalidAddressError, InvalidArgumentError

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class DropReason(str, enum.Enum):
    """Why a :class:`SafetyPolicy` refused a datagram, in the order its checks run.

    Members are strings (``DropReason.DENIED == "denied"``), so counters, JSON and log lines show the plain
    value; ``udpio.DROP_DENIED`` and the other ``DROP_*`` constants are the same members under their old names.
    """

    #: Source port 0: no real sender uses it (bind(0) means "pick a port"); only a forged datagram carries it.
    SOURCE_PORT_ZERO = "source_port_zero"
    #: From a well-known UDP service port (:data:`DEFAULT_BLOCKED_PORTS`): answering would start a loop or
    #: reflect traffic at that service.
    SERVICE_PORT = "service_port"
    #: From the server's own port: itself (a forged copy of its own address) or another instance of the same
    #: service elsewhere; two echo servers answering each other loop forever.
    OWN_PORT = "own_port"
    #: ``addr`` is not an IP address tuple as the socket module gives it: nothing could be sent back to it.
    BAD_ADDRESS = "bad_address"
    #: A multicast, broadcast or unspecified source (``224.0.0.0/4``, ``255.255.255.255``, ``0.0.0.0/8``,
    #: ``ff00::/8``, ``::``): never a real sender, and the reply would go to a group, a link or this host.
    NOT_UNICAST = "not_unicast"
    #: An IPv4-mapped source (``::ffff:a.b.c.d``) that cannot be a real IPv4 peer: any on an IPv6-only socket
    #: (only IPv6 datagrams reach it, and RFC 4291 2.5.5.2 keeps mapped addresses out of real IPv6 headers), and
    #: mapped loopback (``::ffff:127.0.0.0/104``) on every socket (Linux delivers IPv6 datagrams from other
    #: hosts that carry it; the reply would go to a service on this host's loopback).
    MAPPED_SOURCE = "mapped_source"
    #: The source is in a denied network.
    DENIED = "denied"
    #: An allow list is set and the source is not in it.
    NOT_ALLOWED = "not_allowed"
    #: This server's own reply kept coming back from the peer it was sent to (more than
    #: ``LOOP_MAX_RETURNS`` times, over ``LOOP_PERSISTS`` seconds or more): the peer answers everything
    #: too, and answering again would keep a loop going.
    LOOP = "loop"
    #: The source's token bucket is empty.
    SOURCE_RATE = "source_rate"
    #: The server-wide token bucket is empty.
    GLOBAL_RATE = "global_rate"
    #: A reply larger than its request (:meth:`SafetyPolicy.check_reply`).
    AMPLIFICATION = "amplification"

    # str's own conversions, so f-strings and str() give "denied", not "DropReason.DENIED" (Python 3.11 made
    # format() of mixed-in enums follow Enum.__str__; enum.StrEnum, which does this, is 3.11+ only).
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


# The public names of the drop reasons before they were an enum: the same members, kept as aliases.
DROP_SOURCE_PORT_ZERO = DropReason.SOURCE_PORT_ZERO
DROP_SERVICE_PORT = DropReason.SERVICE_PORT
DROP_OWN_PORT = DropReason.OWN_PORT
DROP_BAD_ADDRESS = DropReason.BAD_ADDRESS
DROP_NOT_UNICAST = DropReason.NOT_UNICAST
DROP_MAPPED_SOURCE = DropReason.MAPPED_SOURCE
DROP_DENIED = DropReason.DENIED
DROP_NOT_ALLOWED = DropReason.NOT_ALLOWED
DROP_LOOP = DropReason.LOOP
DROP_SOURCE_RATE = DropReason.SOURCE_RATE
DROP_GLOBAL_RATE = DropReason.GLOBAL_RATE
DROP_AMPLIFICATION = DropReason.AMPLIFICATION

#: Every reason a :class:`SafetyPolicy` can give, in the order its checks run.
DROP_REASONS: tuple[DropReason, ...] = tuple(DropReason)

#: Source ports never answered: UDP services that answer anything (so a forged request makes them loop with
#: us) or that are known reflectors. 7 echo, 13 daytime, 17 qotd, 19 chargen, 37 time (RFC 862/867/865/864/868),
#: 53 DNS, 69 TFTP, 111 portmapper, 123 NTP, 137 NetBIOS name, 161 SNMP, 389 CLDAP, 427 SLP (CVE-2023-29552),
#: 1900 SSDP, 3283 Apple Remote Desktop, 3702 WS-Discovery, 5353 mDNS, 5683 CoAP, 11211 memcached.
DEFAULT_BLOCKED_PORTS: frozenset[int] = frozenset(
    {7, 13, 17, 19, 37, 53, 69, 111, 123, 137, 161, 389, 427, 1900, 3283, 3702, 5353, 5683, 11211}
)

#: Networks exempt from rate limits by default: loopback. A datagram with a loopback source cannot arrive from
#: outside the host (Linux discards 127/8 as a "martian" on every other interface, RFC 1122 3.2.1.3, and ::1
#: likewise, RFC 4291 2.5.3), so it comes from a local process, which a rate limit cannot stop anyway (it can
#: open as many sockets as it likes). IPv4-mapped loopback (``::ffff:127.0.0.1``) is *not* loopback here: Linux
#: does deliver it from other hosts, so it is refused (:attr:`DropReason.MAPPED_SOURCE`), never exempt.
#: Benchmarks and tests on loopback get full speed; the reflection and loop guards still apply to them.
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

# -- the loop guard ---------------------------------------------------------------------------------------
# Two servers that each answer whatever they receive (two echo servers, on any ports) loop forever once one
# forged datagram starts them: about 5,000 round trips a second on loopback, and across hosts a trickle that
# no per-source bucket stops (a round trip of 5 ms or more stays under the default 200/s refill). Port rules
# only catch known ports; what every such loop has in common is that the peer sends back *exactly* the bytes
# this server just sent it, again and again, for as long as it runs. So the policy remembers each reply (a
# keyed hash of peer, port and bytes) and counts how often it comes back from that peer; once it has come back
# more than LOOP_MAX_RETURNS times over at least LOOP_PERSISTS seconds, the next return is not answered, and
# one unanswered datagram ends a loop. A client that sends one unchanging payload from one socket looks the
# same and pays for it: a burst (a benchmark's window of identical requests) shorter than LOOP_PERSISTS costs
# nothing, a steady stream loses one datagram every LOOP_PERSISTS seconds, a slow repeater (a heartbeat) one
# in LOOP_MAX_RETURNS + 2. Clients that vary the payload (sequence numbers, timestamps: udpio ping, the
# tutorial's client) never meet the guard.

#: Returns of one reply answered at least before one is refused (:attr:`DropReason.LOOP`): over a slow link a
#: loop lasts at most this many round trips plus one (or LOOP_PERSISTS, whichever is longer).
LOOP_MAX_RETURNS = 8
#: Seconds one reply must have kept coming back before a return is refused. Long enough that a burst of
#: identical requests is never mistaken for a loop; short enough that a loop on loopback (about 5,000 round
#: trips a second, exempt from rate limits) ends within a quarter of a second.
LOOP_PERSISTS = 0.25
#: Seconds a reply is remembered (and a run of returns may pause): covers any real round trip, since a loop
#: is seen only if its round trip is shorter than this.
LOOP_WINDOW = 10.0
#: Slots of the reply memory, a direct-mapped table (a power of two): a reply's slot is its key's low bits,
#: and a newer reply landing in the same slot replaces it. Fixed size, allocated once, O(1), and no Python
#: object per entry (two C arrays, 256 KiB): a growing dict of replies cost four times the rest of the policy
#: per datagram, in allocation and cache misses. Only answered datagrams are written, so the write rate is
#: bounded by the global rate (and loopback's): at 20,000/s a reply survives half a second with 54%
#: probability. A loop's reply is written again at every round trip and a missed return only delays the
#: count, so even then a loop is caught, a little later.
MAX_TRACKED_REPLIES = 16_384
_REPLY_MASK = MAX_TRACKED_REPLIES - 1
#: Replies that came back, with their first return, count and last return: bounded, cleared when full (only
#: repeats and loops get here, never a fresh reply).
_MAX_RETURNING = 4096


# Internal verdicts of the address lists, next to the DropReason ones.
class _Verdict(enum.Enum):
    PASS = "pass"  # answer without rate limits (exempt, or no limit configured)
    LIMIT = "limit"  # subject to the rate limits


# Final: mypy narrows ``verdict is _PASS`` tests with them, and module globals are quicker than enum attributes.
_PASS: Final = _Verdict.PASS
_LIMIT: Final = _Verdict.LIMIT


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


def _check_ports(values: object) -> frozenset[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError("blocked_ports", "a collection of ports", values)
    return frozenset(check_port(p, "blocked port") for p in values)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The settings of a :class:`SafetyPolicy`, validated: a ``PolicyConfig`` that exists is a valid one.

    Build one with :meth:`from_options` (the loose arguments :class:`SafetyPolicy` takes: lists, strings) or
    :meth:`from_dict` (the plain data :meth:`to_dict` gives, e.g. after JSON); both refuse what the policy would.
    ``burst``/``global_burst`` hold the resolved values (the rate's one second by default) when their rate is
    set, ``None`` when it is not. ``dataclasses.replace`` derives a variant (checked again).
    """

    reflection_guard: bool = True
    blocked_ports: frozenset[int] = DEFAULT_BLOCKED_PORTS
    rate: float | None = DEFAULT_SOURCE_RATE
    burst: float | None = DEFAULT_SOURCE_RATE
    global_rate: float | None = DEFAULT_GLOBAL_RATE
    global_burst: float | None = DEFAULT_GLOBAL_RATE
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    exempt: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in LOOPBACK_NETWORKS)
    max_sources: int = MAX_TRACKED_SOURCES

    def __post_init__(self) -> None:
        # Strict: every field already has its normalised type (from_options converts loose input first).
        if not isinstance(self.reflection_guard, bool):
            raise InvalidArgumentError("reflection_guard", "True or False", self.reflection_guard)
        if not isinstance(self.blocked_ports, frozenset):
            raise InvalidArgumentError("blocked_ports", "a frozenset of ports", self.blocked_ports)
        _check_ports(self.blocked_ports)
        for rate, burst, name in ((self.rate, self.burst, ""), (self.global_rate, self.global_burst, "global_")):
            if rate is None:
                if burst is not None:
                    raise InvalidArgumentError(f"{name}burst", f"None when {name}rate is None", burst)
                continue
            if not isinstance(rate, float):
                raise InvalidArgumentError(f"{name}rate", "a float or None", rate)
            check_rate(rate, f"{name}rate")
            if not isinstance(burst, float):
                raise InvalidArgumentError(f"{name}burst", f"a float when {name}rate is set", burst)
            check_burst(burst, f"{name}burst")
        for name in ("allow", "deny", "exempt"):
            nets = getattr(self, name)
            if not isinstance(nets, tuple) or not all(
                isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in nets
            ):
                raise InvalidArgumentError(name, "a tuple of ipaddress networks", nets)
        check_max_sources(self.max_sources)

    @classmethod
    def from_options(
        cls,
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
    ) -> PolicyConfig:
        """A config from :class:`SafetyPolicy`'s arguments (see there); bad values raise
        :class:`~udpio.InvalidArgumentError` (or a subclass) naming them."""
        if not isinstance(reflection_guard, bool):
            raise InvalidArgumentError("reflection_guard", "True or False", reflection_guard)
        source_rate = None if rate is None else check_rate(rate, "rate")
        if burst is not None and source_rate is None:
            raise InvalidArgumentError("burst", "None when rate is None (no per-source limit)", burst)
        total_rate = None if global_rate is None else check_rate(global_rate, "global_rate")
        if global_burst is not None and total_rate is None:
            raise InvalidArgumentError("global_burst", "None when global_rate is None", global_burst)
        return cls(
            reflection_guard=reflection_guard,
            blocked_ports=_check_ports(blocked_ports),
            rate=source_rate,
            burst=_resolve_burst(source_rate, burst, "burst"),
            global_rate=total_rate,
            global_burst=_resolve_burst(total_rate, global_burst, "global_burst"),
            allow=parse_networks(allow, "allow"),
            deny=parse_networks(deny, "deny"),
            exempt=parse_networks(exempt, "exempt"),
            max_sources=check_max_sources(max_sources),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (ports sorted, networks as strings); :meth:`from_dict` reads them back."""
        return {
            "reflection_guard": self.reflection_guard,
            "blocked_ports": sorted(self.blocked_ports),
            "rate": self.rate,
            "burst": self.burst,
            "global_rate": self.global_rate,
            "global_burst": self.global_burst,
            "allow": [str(n) for n in self.allow],
            "deny": [str(n) for n in self.deny],
            "exempt": [str(n) for n in self.exempt],
            "max_sources": self.max_sources,
        }

    @classmethod
    def from_dict(cls, data: object) -> PolicyConfig:
        """A config from plain data (what :meth:`to_dict` gives); a key that is not a field (a misspelling, a
        newer version's option) raises :class:`~udpio.InvalidArgumentError` naming it, and so does a bad value.
        Missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError("policy config", "a mapping of field names to values", data)
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in data if k not in fields)
        if unknown:
            raise InvalidArgumentError("policy config keys", f"among {', '.join(fields)}", unknown)
        return cls.from_options(**data)


def _resolve_burst(rate: float | None, burst: object, what: str) -> float | None:
    if rate is None:
        return None
    return max(1.0, rate) if burst is None else check_burst(burst, what)


#: The loop guard's record of a reply that came back: its first return, how many returns, its last return.
_Returns: TypeAlias = tuple[float, int, float]

#: An IP as ``(version, integer)``, and a network as ``(version, network integer, mask integer)``: matching
#: is then two integer operations, where ``ipaddress`` objects cost microseconds per address.
_IP: TypeAlias = tuple[int, int]
_Net: TypeAlias = tuple[int, int, int]
#: ``::ffff:0:0/96``, the IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2), as integers.
_MAPPED_BASE = 0xFFFF << 32
_MAPPED_MASK = ((1 << 96) - 1) << 32
_V4_LOOPBACK = 127  # the first octet of 127.0.0.0/8


def _parse_ip(host: str) -> _IP | None:
    """A source host string as the socket module gives it, as ``(version, int)``, or ``None`` if it is no IP
    literal. A scope (``fe80::1%eth0``) is ignored for matching; IPv4-mapped IPv6 stays IPv6 here (whether it
    may count as IPv4 depends on the socket: :meth:`SafetyPolicy._classify`)."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return None
    return 6, int.from_bytes(packed, "big")


def _not_unicast(ip: _IP) -> bool:
    """Multicast, limited broadcast or unspecified ("this network"): no real peer sends from these. A subnet's
    directed broadcast needs the interface's prefix to be known; Linux drops such sources as martians on IPv4
    input (fib_validate_source), and a reply to one would need SO_BROADCAST, which udpio's servers never set."""
    version, value = ip
    if version == 4:
        return value >> 28 == 0xE or value == 0xFFFFFFFF or value >> 24 == 0  # 224/4, 255.255.255.255, 0/8
    return value >> 120 == 0xFF or value == 0  # ff00::/8, ::


def _as_ints(net: Network) -> _Net:
    base, mask = int(net.network_address), int(net.netmask)
    # A list written in mapped form (::ffff:10.0.0.0/104) means the IPv4 network: mapped sources are matched
    # as IPv4 (on a dual-stack socket), so the list is too.
    if net.version == 6 and net.prefixlen >= 96 and base & _MAPPED_MASK == _MAPPED_BASE:
        return 4, base & 0xFFFFFFFF, mask & 0xFFFFFFFF
    return net.version, base, mask


def _matches(ip: _IP, nets: tuple[_Net, ...]) -> bool:
    version, value = ip
    return any(version == v and value & mask == base for v, base, mask in nets)


class _Bucket:
    """A token bucket's state; rate and burst live in the policy (the same for every source)."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


#: A batch item :meth:`SafetyPolicy.filter` reads: ``(data, addr)``, possibly followed by more fields.
_Item = TypeVar("_Item", bound=tuple[Any, ...])


class SafetyPolicy:
    """Decides, per datagram, whether a server may answer it; every responder udpio ships uses one by default
    (the echo server, its workers, the Notify/Acknowledge member).

    Checks, in order, each with its :class:`DropReason`:

    1. reflection guard (``reflection_guard=True``): source port 0, a port in ``blocked_ports`` (default
       :data:`DEFAULT_BLOCKED_PORTS`), or the server's own port (after :meth:`bind`);
    2. the source address: not an IP, not unicast (multicast, broadcast, unspecified), or IPv4-mapped where no
       real peer can be (see :meth:`bind`): always checked;
    3. ``deny``, then ``allow`` (if not empty): lists of CIDR networks, IPv4 and IPv6 (on a dual-stack socket,
       IPv4-mapped sources match IPv4 networks);
    4. loop guard (with the reflection guard): a reply of this server that keeps coming back from its peer
       (more than ``LOOP_MAX_RETURNS`` times, for ``LOOP_PERSISTS`` seconds or more) is refused once,
       which ends a loop with another server on any port;
    5. per-source token bucket, ``rate`` datagrams/s with ``burst`` (default one second's worth), state for
       at most ``max_sources`` sources (least recently seen forgotten first); ``rate=None`` turns it off;
    6. server-wide token bucket, ``global_rate`` / ``global_burst``; ``global_rate=None`` turns it off.

    Sources in ``exempt`` networks (default ``LOOPBACK_NETWORKS``) skip steps 5 and 6 only.

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
        self._setup(
            PolicyConfig.from_options(
                reflection_guard=reflection_guard,
                blocked_ports=blocked_ports,
                rate=rate,
                burst=burst,
                global_rate=global_rate,
                global_burst=global_burst,
                allow=allow,
                deny=deny,
                exempt=exempt,
                max_sources=max_sources,
            )
        )

    @classmethod
    def from_config(cls, config: PolicyConfig) -> SafetyPolicy:
        """A fresh policy (no per-source state) with the settings of ``config``."""
        if not isinstance(config, PolicyConfig):
            raise InvalidArgumentError("config", "a udpio.PolicyConfig", config)
        policy = cls.__new__(cls)
        policy._setup(config)
        return policy

    def _setup(self, config: PolicyConfig) -> None:
        self._config = config
        self._guard = config.reflection_guard
        self._rate = config.rate
        self._burst = config.burst or 0.0
        self._global_rate = config.global_rate
        self._global_burst = config.global_burst or 0.0
        self._allow_ints = tuple(map(_as_ints, config.allow))
        self._deny_ints = tuple(map(_as_ints, config.deny))
        self._exempt_ints = tuple(map(_as_ints, config.exempt))
        self._max_sources = config.max_sources
        self._own_port: int | None = None
        self._dual_stack = False
        self._port_reasons: dict[int, DropReason] = {}
        self._rebuild_port_reasons()
        self._verdicts: dict[str, DropReason | _Verdict] = {}
        self._sources: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._last_host: str | None = None
        self._last_bucket = _Bucket(0.0, 0.0)  # placeholder until _last_host is set
        # Starts full: its stamp in the infinite past refills it to the burst on first use, whatever the clock.
        self._global = _Bucket(self._global_burst, -math.inf)
        # The loop guard's memory: the key (hash of host, port and reply bytes) and send time of recent replies,
        # in a direct-mapped table (MAX_TRACKED_REPLIES), and the replies that came back (_returned()).
        # An empty slot holds key 0 with a stamp of -inf, which no lookup finds fresh (a real key of 0 included).
        self._reply_keys = array.array("q", bytes(8 * MAX_TRACKED_REPLIES))
        self._reply_stamps = array.array("d", [-math.inf]) * MAX_TRACKED_REPLIES
        self._returning: dict[int, _Returns] = {}
        #: Per-source states forgotten because :data:`MAX_TRACKED_SOURCES` (``max_sources``) was reached.
        self.evictions = 0

    # -- configuration ----------------------------------------------------------------------------

    @property
    def config(self) -> PolicyConfig:
        """The settings (without the state): ``SafetyPolicy.from_config(p.config)`` is an equal, fresh policy."""
        return self._config

    def bind(self, address: object, *, dual_stack: bool = False, own_port: bool = True) -> None:
        """Tell the policy about the socket it guards; servers call this when their socket is bound.

        ``address`` is the socket's ``sockname``: datagrams from its port are then refused (pass
        ``own_port=False`` for a protocol whose peers share its port by design, such as multicast members).
        Anything that is not an address tuple is ignored (a transport that cannot say where it is bound).

        ``dual_stack``: the socket is IPv6 with ``IPV6_V6ONLY`` off, so IPv4 peers arrive as
        ``::ffff:a.b.c.d`` and may be matched as IPv4. On any other socket (udpio's own are IPv6-only) a mapped
        source can only be an IPv6 datagram carrying a forged one, and is refused. Mapped loopback is refused
        on dual-stack sockets too: it cannot be told from an IPv6 datagram that came from another host, and
        its reply would reach a service on this host's loopback. The default (``False``) is the safe one for a
        policy nobody told.
        """
        if not isinstance(dual_stack, bool):
            raise InvalidArgumentError("dual_stack", "True or False", dual_stack)
        port = address[1] if own_port and isinstance(address, tuple) and len(address) >= 2 else None
        self._own_port = port if isinstance(port, int) and not isinstance(port, bool) else None
        self._dual_stack = dual_stack
        self._verdicts.clear()  # verdicts of mapped sources depend on dual_stack
        self._rebuild_port_reasons()

    def _rebuild_port_reasons(self) -> None:
        reasons: dict[int, DropReason] = {}
        if self._guard:
            reasons = dict.fromkeys(self._config.blocked_ports, DropReason.SERVICE_PORT)
            if self._own_port:
                reasons[self._own_port] = DropReason.OWN_PORT
            reasons[0] = DropReason.SOURCE_PORT_ZERO
        self._port_reasons = reasons

    def options(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (``self.config.to_dict()``): ``SafetyPolicy(**p.options())``
        builds an equal policy with fresh state."""
        return self._config.to_dict()

    def describe(self) -> str:
        """One line saying what the policy does (the CLI prints it at start)."""
        config = self._config
        parts = [
            f"reflection guard on ({len(config.blocked_ports)} service ports, port 0, own port; loops)"
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
        if config.deny:
            parts.append("deny " + ",".join(map(str, config.deny)))
        if config.allow:
            parts.append("allow only " + ",".join(map(str, config.allow)))
        if config.exempt and (self._rate is not None or self._global_rate is not None):
            parts.append("limits exempt " + ",".join(map(str, config.exempt)))
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"<udpio.SafetyPolicy {self.describe()}>"

    @property
    def tracked_sources(self) -> int:
        """Sources whose per-source bucket is held now (at most ``max_sources``)."""
        return len(self._sources)

    @property
    def tracked_replies(self) -> int:
        """Replies the loop guard remembers now (at most ``MAX_TRACKED_REPLIES``; counted, so not cheap)."""
        return MAX_TRACKED_REPLIES - self._reply_keys.count(0)

    # -- decisions ----------------------------------------------------------------------------

    def admit(self, data: bytes, addr: Any, now: float, *, reply: bytes | None = None) -> DropReason | None:
        """``None`` if the datagram ``data`` from ``addr`` (as the socket gives it) may be answered at time
        ``now`` (seconds, any monotonic clock), else the :class:`DropReason`. Never raises, whatever ``addr``.

        An admitted datagram is taken to be answered with ``reply`` (default: ``data`` itself, as echo does),
        which the loop guard remembers; a server that decides not to answer after all loses nothing by it.

        Cheap on purpose, it runs per datagram: one dict lookup for the port, one for the address's list
        verdict (cached per address), one hash and two lookups for the loop guard, and bucket arithmetic only
        for rate-limited sources; consecutive datagrams from one source reuse its bucket.
        """
        try:
            port = addr[1]
            reason = self._port_reasons.get(port)
            if reason is not None:
                return reason
            host = addr[0]
            verdict = self._verdicts.get(host)
            if verdict is None:
                verdict = self._classify(host)
        except (TypeError, IndexError, KeyError):
            return DropReason.BAD_ADDRESS
        if verdict is not _PASS and verdict is not _LIMIT:
            return verdict
        guard = self._guard
        if guard:
            key = _reply_key(host, port, data)
            slot = key & _REPLY_MASK
            if (
                self._reply_keys[slot] == key
                and now - self._reply_stamps[slot] <= LOOP_WINDOW
                and self._returned(key, slot, now)
            ):
                return DropReason.LOOP
        if verdict is _LIMIT:
            reason = self._limit(host, now)
            if reason is not None:
                return reason
        if guard:
            if reply is not None:
                key = _reply_key(host, port, reply)
                slot = key & _REPLY_MASK
            self._reply_keys[slot] = key
            self._reply_stamps[slot] = now
        return None

    def filter(self, batch: list[_Item], now: float, drop: Callable[[DropReason], None]) -> list[_Item]:
        """The ``(data, addr)`` pairs of ``batch`` that :meth:`admit` lets through at ``now``, in order;
        ``drop(reason)`` is called for each of the others. The batch form of :meth:`admit` for servers that
        answer each datagram with itself (echo) and take datagrams in batches: the same decisions, with the
        per-datagram method call saved. Items may carry more than the pair (``(data, addr, local)`` from
        ``datagrams_received_on``): they are kept whole."""
        admitted: list[_Item] = []
        append = admitted.append
        port_reason = self._port_reasons.get
        verdict_of = self._verdicts.get
        guard = self._guard
        keys, stamps = self._reply_keys, self._reply_stamps
        for item in batch:
            try:
                # Indexed, not unpacked: a datagrams_received_on batch has (data, addr, local) triples.
                data = item[0]
                addr = item[1]
                port = addr[1]
                reason = port_reason(port)
                if reason is None:
                    host = addr[0]
                    verdict = verdict_of(host)
                    if verdict is None:
                        verdict = self._classify(host)
                    # Identity tests on the two verdict singletons: isinstance() on an enum class costs as
                    # much as the rest of this loop body.
                    if verdict is _PASS or verdict is _LIMIT:
                        if guard:
                            # _reply_key, inlined (a call per datagram costs as much as the hash), literals for
                            # _WHOLE and _ENDS (globals are dict lookups).
                            try:
                                sample = data if len(data) <= 128 else (data[:64], data[-64:], len(data))
                                key = hash((host, port, sample))
                            except (TypeError, ValueError):  # a zero-copy memoryview: hashed as bytes
                                key = _reply_key(host, port, data)
                            slot = key & _REPLY_MASK
                            if (
                                keys[slot] == key
                                and now - stamps[slot] <= LOOP_WINDOW
                                and self._returned(key, slot, now)
                            ):
                                drop(DropReason.LOOP)
                                continue
                        elif verdict is _PASS:  # no guard, no limits: nothing else to decide
                            append(item)
                            continue
                        if verdict is _LIMIT:
                            reason = self._limit(host, now)
                        if reason is None:
                            if guard:
                                keys[slot] = key
                                stamps[slot] = now
                            append(item)
                            continue
                    else:
                        reason = verdict
            except (TypeError, IndexError, KeyError, ValueError):  # ValueError: a bad zero-copy view
                reason = DropReason.BAD_ADDRESS
            drop(reason)
        return admitted

    def _returned(self, key: int, slot: int, now: float) -> bool:
        """A recent reply (``key``) came back from its peer: count it; ``True`` if this return is to be refused
        (it kept coming back: a loop), after which the reply is forgotten and a new count starts. Only repeats
        and loops get here."""
        returning = self._returning
        record = returning.get(key)
        if record is None or now - record[2] > LOOP_WINDOW:  # the first return (or the first after a pause)
            first, count = now, 1
        else:
            first, count, _ = record
            if count >= LOOP_MAX_RETURNS and now - first >= LOOP_PERSISTS:
                del returning[key]
                self._reply_keys[slot] = 0
                self._reply_stamps[slot] = -math.inf
                return True
            count += 1
        if len(returning) >= _MAX_RETURNING:
            returning.clear()
        returning[key] = (first, count, now)
        return False

    def _limit(self, host: str, now: float) -> DropReason | None:
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
                return DropReason.SOURCE_RATE
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
                return DropReason.GLOBAL_RATE
            bucket.tokens = tokens - 1
        return None

    def _classify(self, host: object) -> DropReason | _Verdict:
        """Check ``host`` as a source and match it against deny, allow and exempt once; the verdict is cached
        for the address string (until :meth:`bind` changes what mapped sources mean)."""
        if not isinstance(host, str):
            return DropReason.BAD_ADDRESS
        ip = _parse_ip(host)
        mapped = ip is not None and ip[0] == 6 and ip[1] & _MAPPED_MASK == _MAPPED_BASE
        if ip is not None and mapped:
            v4 = ip[1] & 0xFFFFFFFF
            # Only a dual-stack socket receives real IPv4 peers in this form, and it never trusts mapped
            # loopback (see bind()); there the source is the IPv4 address it stands for.
            ip = (4, v4) if self._dual_stack and v4 >> 24 != _V4_LOOPBACK else None
        verdict: DropReason | _Verdict
        if ip is None:
            verdict = DropReason.MAPPED_SOURCE if mapped else DropReason.BAD_ADDRESS
        elif _not_unicast(ip):
            verdict = DropReason.NOT_UNICAST
        elif _matches(ip, self._deny_ints):
            verdict = DropReason.DENIED
        elif self._allow_ints and not _matches(ip, self._allow_ints):
            verdict = DropReason.NOT_ALLOWED
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

    def check_reply(self, request_size: int, reply_size: int) -> DropReason | None:
        """:attr:`DropReason.AMPLIFICATION` if a reply of ``reply_size`` bytes answers a request of
        ``request_size`` bytes, else ``None``: a server must never send more than it received, or forged
        requests turn it into an amplifier. (Echo replies are their request, so the echo server meets this by
        construction.)"""
        return DropReason.AMPLIFICATION if reply_size > request_size else None


#: A ``policy`` argument: ``"default"`` (a fresh :class:`SafetyPolicy` with its defaults), a policy of your own
#: (one per server: it keeps per-source state), or ``None`` (off).
PolicyArg: TypeAlias = SafetyPolicy | Literal["default"] | None


def make_policy(policy: object) -> SafetyPolicy | None:
    """Resolve a ``policy`` argument; a wrong type raises :class:`~udpio.InvalidArgumentError` naming it."""
    if isinstance(policy, str) and policy == "default":
        return SafetyPolicy()
    if policy is None or isinstance(policy, SafetyPolicy):
        return policy
    raise InvalidArgumentError("policy", "'default', None or a udpio.SafetyPolicy", policy)


#: The loop guard hashes payloads of up to _WHOLE bytes whole; longer ones by their length and _ENDS bytes at
#: each end. Hashing costs about 0.3 ns a byte (20 us for 64 KiB, more than the echo itself), and a loop
#: returns the exact bytes, so the fingerprint never misses one; payloads that differ only in the middle
#: count as one for the guard (the documented cost of a repeating payload, nothing more).
_WHOLE = 128
_ENDS = 64


def _reply_key(host: str, port: object, data: Any) -> int:
    """The loop guard's key for ``data`` sent to or received from ``(host, port)``. Python's hash of str and
    bytes is keyed per process (SipHash, PEP 456), so a peer cannot craft payloads that collide on purpose;
    a chance collision costs at most one answer. Buffers that are not bytes (a zero-copy memoryview) are
    copied to be hashed (at most 2 x _ENDS bytes of them when long)."""
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > _WHOLE:
        data = (bytes(data[:_ENDS]), bytes(data[-_ENDS:]), len(data))
    try:
        return hash((host, port, data))
    except (TypeError, ValueError):  # ValueError: "cannot hash writable memoryview object"
        return hash((host, port, bytes(data)))
