"""The safety policy as pure logic (no sockets, time passed in), and property tests of every parser and option
validator in udpio: arbitrary input gives the documented exception or a valid result, never another one.

The property tests feed each validator values of every shape (ints of any size, floats including nan and
inf, bools, text with surrogates, NULs and 300-character labels, bytes, None, tuples, lists) and check one
contract: the call returns a value that satisfies the documented postcondition, or raises the documented
subclass of ``ValueError`` naming the value. Any other exception (``TypeError``, ``UnicodeError``,
``OverflowError`` from deep inside the socket module) fails the test.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import udpio
from udpio import _addr, _interfaces, _loop, _multicast, _policy, _sockopts, _workers
from udpio._cli import echo as cli_echo
from udpio._notify import NotifyLogic
from udpio._options import TransportOptions
from udpio._policy import (
    DEFAULT_BLOCKED_PORTS,
    DROP_AMPLIFICATION,
    DROP_BAD_ADDRESS,
    DROP_DENIED,
    DROP_GLOBAL_RATE,
    DROP_NOT_ALLOWED,
    DROP_OWN_PORT,
    DROP_SERVICE_PORT,
    DROP_SOURCE_PORT_ZERO,
    DROP_SOURCE_RATE,
    SafetyPolicy,
)

# Property tests run in CI on a shared 2-core machine: no per-example deadline (a slow example is not a bug).
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text that breaks naive parsers: surrogates (unencodable), NULs, long labels, whitespace, scopes.
nasty_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(
        ["", " ", "\x00", "1.2.3.4\x00", "::1\x00", "a" * 64, "a" * 300, "::1%lo", "fe80::1%lo", "fe80::1%",
         "127.0.0.1%x", "::ffff:127.0.0.1", "1.2.3.4/33", "10.0.0.1/8", "::/0", "0.0.0.0/0", "2001:db8::/129",
         "256.1.1.1", "1.2.3", "::::", "lo", "eth0", "-1", "0", "1e9", "nan", "inf", "\ud800", "ff02::1%lo"]
    ),
    st.ip_addresses().map(str),
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(), st.integers(-1, 130)),
)
#: Values of every shape a caller might pass by mistake.
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
    st.binary(max_size=20),
    st.lists(st.integers(0, 70000), max_size=3),
    st.tuples(nasty_text, st.integers(-5, 70000)),
)


# -- the reflection guard ----------------------------------------------------------------------------


def test_default_guard_covers_the_issue_ports() -> None:
    required = {7, 13, 17, 19, 37, 53, 123, 161, 1900, 5353, 11211}
    assert required <= DEFAULT_BLOCKED_PORTS
    policy = SafetyPolicy()
    for port in sorted(DEFAULT_BLOCKED_PORTS):
        assert policy.admit(("192.0.2.1", port), 0.0) == DROP_SERVICE_PORT
    assert policy.admit(("192.0.2.1", 0), 0.0) == DROP_SOURCE_PORT_ZERO
    assert policy.admit(("2001:db8::1", 19, 0, 0), 0.0) == DROP_SERVICE_PORT
    assert policy.admit(("192.0.2.1", 40000), 0.0) is None


def test_own_port_is_refused_once_bound() -> None:
    policy = SafetyPolicy()
    assert policy.admit(("192.0.2.1", 8007), 0.0) is None
    policy.bind(("0.0.0.0", 8007))
    assert policy.admit(("192.0.2.1", 8007), 0.0) == DROP_OWN_PORT  # a twin elsewhere
    assert policy.admit(("127.0.0.1", 8007), 0.0) == DROP_OWN_PORT  # itself, forged
    policy.bind(("::", 7, 0, 0))  # bound on a service port: its own port wins as the reason
    assert policy.admit(("::1", 7, 0, 0), 0.0) == DROP_OWN_PORT
    policy.bind(None)  # a transport that cannot say: no own-port rule, nothing raised
    assert policy.admit(("192.0.2.1", 8007), 0.0) is None


def test_guard_off_and_custom_ports() -> None:
    off = SafetyPolicy(reflection_guard=False)
    off.bind(("127.0.0.1", 8007))
    for port in (0, 7, 19, 8007):
        assert off.admit(("192.0.2.1", port), 0.0) is None
    custom = SafetyPolicy(blocked_ports=[4242])
    assert custom.admit(("192.0.2.1", 4242), 0.0) == DROP_SERVICE_PORT
    assert custom.admit(("192.0.2.1", 19), 0.0) is None  # replaced the defaults
    assert custom.admit(("192.0.2.1", 0), 0.0) == DROP_SOURCE_PORT_ZERO  # port 0 is always refused


# -- allow / deny / exempt -----------------------------------------------------------------------------


def test_deny_then_allow_ipv4_ipv6_and_mapped() -> None:
    policy = SafetyPolicy(allow=["192.0.2.0/24", "2001:db8::/32"], deny=["192.0.2.128/25", "2001:db8:bad::/48"])
    assert policy.admit(("192.0.2.1", 5000), 0.0) is None
    assert policy.admit(("192.0.2.200", 5000), 0.0) == DROP_DENIED  # deny wins over allow
    assert policy.admit(("198.51.100.1", 5000), 0.0) == DROP_NOT_ALLOWED
    assert policy.admit(("2001:db8::1", 5000, 0, 0), 0.0) is None
    assert policy.admit(("2001:db8:bad::1", 5000, 0, 0), 0.0) == DROP_DENIED
    assert policy.admit(("2001:db9::1", 5000, 0, 0), 0.0) == DROP_NOT_ALLOWED
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; IPv4 lists must still match them.
    assert policy.admit(("::ffff:192.0.2.1", 5000, 0, 0), 0.0) is None
    assert policy.admit(("::ffff:192.0.2.200", 5000, 0, 0), 0.0) == DROP_DENIED
    # Link-local sources carry a scope; it does not hide them from a list.
    scoped = SafetyPolicy(deny=["fe80::/10"])
    assert scoped.admit(("fe80::1%eth0", 5000, 0, 2), 0.0) == DROP_DENIED


def test_exempt_skips_rate_limits_only() -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=1, global_burst=1)  # loopback exempt by default
    assert all(policy.admit(("127.0.0.1", 40000), 0.0) is None for _ in range(100))
    assert all(policy.admit(("::1", 40000, 0, 0), 0.0) is None for _ in range(100))
    assert policy.admit(("127.0.0.1", 19), 0.0) == DROP_SERVICE_PORT  # the guard still applies
    assert policy.admit(("192.0.2.1", 40000), 0.0) is None
    assert policy.admit(("192.0.2.1", 40000), 0.0) == DROP_SOURCE_RATE
    strict = SafetyPolicy(rate=1, burst=1, exempt=())
    assert strict.admit(("127.0.0.1", 40000), 0.0) is None
    assert strict.admit(("127.0.0.1", 40000), 0.0) == DROP_SOURCE_RATE


# -- token buckets -----------------------------------------------------------------------------


def test_source_bucket_burst_then_refill() -> None:
    policy = SafetyPolicy(rate=10, burst=5, global_rate=None, exempt=())
    peer = ("192.0.2.1", 40000)
    assert [policy.admit(peer, 100.0) for _ in range(6)] == [None] * 5 + [DROP_SOURCE_RATE]
    assert policy.admit(peer, 100.05) == DROP_SOURCE_RATE  # half a token
    assert policy.admit(peer, 100.15) is None  # a whole token after 0.15 s at 10/s
    assert [policy.admit(peer, 200.0) for _ in range(6)] == [None] * 5 + [DROP_SOURCE_RATE]  # capped at burst
    # Per source: another peer has its own bucket; the port does not make another source.
    assert policy.admit(("192.0.2.2", 40000), 200.0) is None
    assert policy.admit(("192.0.2.1", 40001), 200.0) == DROP_SOURCE_RATE


def test_global_bucket_caps_all_sources_together() -> None:
    policy = SafetyPolicy(rate=None, global_rate=100, global_burst=10, exempt=())
    verdicts = [policy.admit((f"192.0.2.{i}", 40000), 50.0) for i in range(20)]
    assert verdicts == [None] * 10 + [DROP_GLOBAL_RATE] * 10
    assert policy.admit(("192.0.2.99", 40000), 50.015) is None  # 0.015 s at 100/s: a whole token


def test_source_refusal_does_not_spend_global_tokens() -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=1, global_burst=2, exempt=())
    greedy = ("192.0.2.1", 40000)
    assert policy.admit(greedy, 0.0) is None
    assert all(policy.admit(greedy, 0.0) == DROP_SOURCE_RATE for _ in range(50))
    assert policy.admit(("192.0.2.2", 40000), 0.0) is None  # the second global token is still there


def test_clock_going_backwards_neither_refills_nor_raises() -> None:
    policy = SafetyPolicy(rate=10, burst=1, global_rate=None, exempt=())
    peer = ("192.0.2.1", 40000)
    assert policy.admit(peer, 1000.0) is None
    assert policy.admit(peer, 10.0) == DROP_SOURCE_RATE
    assert policy.admit(peer, math.nan) == DROP_SOURCE_RATE
    assert policy.admit(peer, 1000.2) is None


@PROPERTY
@given(
    rate=st.floats(0.5, 1000),
    burst=st.floats(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 3)), min_size=1, max_size=200),
)
def test_source_bucket_never_admits_more_than_burst_plus_rate_times_time(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    """Token bucket invariant: over any run, admitted <= burst + rate * elapsed, per source."""
    policy = SafetyPolicy(rate=rate, burst=burst, global_rate=None, exempt=())
    now = start = 1000.0
    admitted: dict[int, int] = {}
    for gap, source in steps:
        now += gap
        if policy.admit((f"192.0.2.{source}", 40000), now) is None:
            admitted[source] = admitted.get(source, 0) + 1
    for count in admitted.values():
        assert count <= burst + rate * (now - start) + 1e-6
    # And a source that sends one datagram per 1/rate seconds (a hair slower: float rounding) is never refused.
    steady = SafetyPolicy(rate=rate, burst=burst, global_rate=None, exempt=())
    assert all(steady.admit(("198.51.100.1", 1), 5000.0 + i * 1.000001 / rate) is None for i in range(20))


# -- bounded per-source state ------------------------------------------------------------------------


@PROPERTY
@given(limit=st.integers(1, 64), sources=st.lists(st.integers(0, 200), max_size=400))
def test_per_source_state_is_bounded_and_evictions_counted(limit: int, sources: list[int]) -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=None, exempt=(), max_sources=limit)
    created = 0
    held: list[int] = []  # LRU model: least recently used first
    for source in sources:
        policy.admit((f"10.0.{source // 256}.{source % 256}", 1234), 0.0)
        if source in held:
            held.remove(source)
        else:
            created += 1
            if len(held) == limit:
                held.pop(0)
        held.append(source)
        assert policy.tracked_sources <= limit
    assert policy.tracked_sources == len(held)
    assert policy.evictions == created - len(held)


def test_least_recently_seen_source_is_forgotten_first() -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=None, exempt=(), max_sources=2)
    a, b, c = ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)
    assert policy.admit(a, 0.0) is None
    assert policy.admit(b, 0.0) is None
    assert policy.admit(a, 0.0) == DROP_SOURCE_RATE  # a is now the most recent
    assert policy.admit(c, 0.0) is None  # evicts b, not a
    assert policy.evictions == 1
    assert policy.admit(a, 0.0) == DROP_SOURCE_RATE  # a kept its (empty) bucket
    assert policy.admit(b, 0.0) is None  # b was forgotten: a full bucket again (counted)
    assert policy.evictions == 2


# -- amplification, options, description --------------------------------------------------------------


def test_reply_never_larger_than_request() -> None:
    policy = SafetyPolicy()
    assert policy.check_reply(100, 100) is None
    assert policy.check_reply(100, 0) is None
    assert policy.check_reply(0, 1) == DROP_AMPLIFICATION


def test_options_rebuild_an_equal_policy_and_are_json() -> None:
    policy = SafetyPolicy(rate=5, burst=7, global_rate=None, allow=["10.0.0.0/8"], deny=["::1"], exempt=(),
                          blocked_ports=[9], max_sources=3)
    options = json.loads(json.dumps(policy.options()))
    assert SafetyPolicy(**options).options() == policy.options()
    assert "per-source 5/s burst 7" in policy.describe()
    assert "allow only 10.0.0.0/8" in repr(policy)


def test_worker_share_of_the_global_rate() -> None:
    options = _workers.worker_policy_options(SafetyPolicy(global_rate=1000, global_burst=3), 4)
    assert options is not None
    assert options["global_rate"] == 250 and options["global_burst"] == 1.0
    assert _workers.worker_policy_options(None, 4) is None


def test_bad_options_name_the_value() -> None:
    with pytest.raises(udpio.InvalidArgumentError, match=r"rate must be a finite number > 0.*got -1"):
        SafetyPolicy(rate=-1)
    with pytest.raises(udpio.InvalidArgumentError, match=r"burst must be None when rate is None"):
        SafetyPolicy(rate=None, burst=3)
    with pytest.raises(udpio.InvalidAddressError, match=r"'10\.0\.0\.1/8'"):
        SafetyPolicy(allow=["10.0.0.1/8"])
    with pytest.raises(udpio.InvalidArgumentError, match="deny must be a list of CIDR networks"):
        SafetyPolicy(deny="10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(udpio.InvalidPortError, match="70000"):
        SafetyPolicy(blocked_ports=[70000])
    with pytest.raises(udpio.InvalidArgumentError, match="policy must be 'default', None"):
        udpio.EchoProtocol(policy="strict")  # type: ignore[arg-type]


# -- property tests: the policy's own parsers and decisions -----------------------------------------------


@PROPERTY
@given(value=st.one_of(anything, st.builds(ipaddress.ip_network, st.sampled_from(["10.0.0.0/8", "::/0"]))))
def test_parse_network_property(value: Any) -> None:
    try:
        net = _policy.parse_network(value)
    except udpio.InvalidAddressError as exc:
        assert exc.value is value
        return
    assert isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    assert net == ipaddress.ip_network(str(net))


@PROPERTY
@given(rate=anything, burst=anything, max_sources=anything)
def test_rate_burst_and_max_sources_validators_property(rate: Any, burst: Any, max_sources: Any) -> None:
    for check, value, low in ((_policy.check_rate, rate, 0.0), (_policy.check_burst, burst, 1.0)):
        try:
            result = check(value)
        except udpio.InvalidArgumentError:
            continue
        assert math.isfinite(result) and result >= low and result > 0
    with contextlib.suppress(udpio.InvalidArgumentError):
        assert _policy.check_max_sources(max_sources) >= 1


@PROPERTY
@given(
    kwargs=st.dictionaries(
        st.sampled_from(["reflection_guard", "blocked_ports", "rate", "burst", "global_rate", "global_burst",
                         "allow", "deny", "exempt", "max_sources"]),
        st.one_of(anything, st.lists(nasty_text, max_size=3)),
        max_size=4,
    )
)
def test_policy_constructor_property(kwargs: dict[str, Any]) -> None:
    try:
        policy = SafetyPolicy(**kwargs)
    except udpio.InvalidArgumentError:
        return
    assert SafetyPolicy(**policy.options()).options() == policy.options()


@PROPERTY
@given(addr=anything, now=st.floats(allow_nan=True, allow_infinity=True))
def test_admit_never_raises_property(addr: Any, now: float) -> None:
    policy = SafetyPolicy(allow=["0.0.0.0/0", "::/0"], deny=["192.0.2.0/24"], exempt=())
    policy.bind(("127.0.0.1", 8007))
    reason = policy.admit(addr, now)
    assert reason is None or reason in _policy.DROP_REASONS
    if not (isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str)):
        assert reason in (DROP_BAD_ADDRESS, DROP_SERVICE_PORT, DROP_SOURCE_PORT_ZERO, DROP_OWN_PORT, None)


@PROPERTY
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.just(b"x"), st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.2", "127.0.0.1", "::1",
                                                                "::ffff:192.0.2.1", "10.0.0.1", "x"]),
                                               st.sampled_from([0, 7, 8007, 40000, 40001]))),
            anything,
        ),
        max_size=60,
    ),
    gaps=st.lists(st.floats(0, 0.01), min_size=1, max_size=5),
)
def test_filter_decides_exactly_as_admit_property(items: list[Any], gaps: list[float]) -> None:
    """The batch form gives the same answers, in order, and the same policy state, as one admit() per item."""
    options: dict[str, Any] = {"rate": 50, "burst": 3, "global_rate": 200, "global_burst": 10,
                               "deny": ["10.0.0.0/8"], "exempt": ["127.0.0.0/8"], "max_sources": 2}
    one, many = SafetyPolicy(**options), SafetyPolicy(**options)
    one.bind(("0.0.0.0", 8007))
    many.bind(("0.0.0.0", 8007))
    now = 100.0
    for gap in gaps:
        now += gap
        expected_in, expected_out = [], []
        for item in items:
            try:
                reason = one.admit(item[1], now)
            except (TypeError, IndexError, KeyError):
                reason = DROP_BAD_ADDRESS
            (expected_in.append(item) if reason is None else expected_out.append(reason))
        dropped: list[str] = []
        assert many.filter(items, now, dropped.append) == expected_in
        assert dropped == expected_out
    assert (many.evictions, many.tracked_sources) == (one.evictions, one.tracked_sources)


# -- property tests: every other validator and parser in udpio ------------------------------------------------


@PROPERTY
@given(value=anything)
def test_check_port_property(value: Any) -> None:
    try:
        port = _addr.check_port(value)
    except udpio.InvalidPortError as exc:
        assert exc.value is value
        return
    assert isinstance(port, int) and 0 <= port <= 65535


@PROPERTY
@given(value=anything)
def test_check_family_property(value: Any) -> None:
    try:
        assert _addr.check_family(value) in (0, socket.AF_INET, socket.AF_INET6)
    except udpio.InvalidAddressError as exc:
        assert exc.value is value


@PROPERTY
@given(value=anything)
def test_ip_family_property(value: Any) -> None:
    try:
        fam = _addr.ip_family(value)
    except udpio.InvalidAddressError as exc:
        assert exc.value is value
        return
    assert fam in (socket.AF_INET, socket.AF_INET6)
    assert ipaddress.ip_address(value.partition("%")[0]).version == (4 if fam == socket.AF_INET else 6)


@PROPERTY
@given(host=anything, port=anything, family=st.one_of(st.sampled_from([0, socket.AF_INET, socket.AF_INET6]), anything))
def test_resolve_numeric_property(host: Any, port: Any, family: Any) -> None:
    """Never a lookup (AI_NUMERICHOST), never an exception other than the documented ones."""
    try:
        result = _addr.resolve_numeric(host, port, family)
    except udpio.InvalidArgumentError:
        return
    if result is not None:
        fam, sockaddr = result
        assert fam in (socket.AF_INET, socket.AF_INET6)
        assert sockaddr[1] == port


@PROPERTY
@given(value=st.one_of(anything, st.tuples(nasty_text, st.integers(), st.integers(), st.integers())))
def test_format_address_property(value: Any) -> None:
    assert isinstance(_addr.format_address(value), str)


@PROPERTY
@given(size=st.integers(-1, 70000), family=st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       limit=st.one_of(st.none(), st.integers(0, 70000)))
def test_check_size_property(size: int, family: int, limit: int | None) -> None:
    top = _addr.max_payload(family) if limit is None else limit
    try:
        _addr.check_size(size, family, limit)
    except udpio.DatagramTooLargeError as exc:
        assert size > top and exc.size == size
        return
    assert size <= top


@PROPERTY
@given(value=anything)
def test_buffer_size_validator_property(value: Any) -> None:
    """rcvbuf/sndbuf: a positive int the kernel can take, or InvalidArgumentError; and the socket gets it."""
    try:
        size = _sockopts._check_buffer_size(value, "rcvbuf")
    except udpio.InvalidArgumentError as exc:
        assert exc.value is value
        return
    assert isinstance(size, int) and size > 0
    with _sockopts.open_socket(socket.AF_INET, rcvbuf=size, sndbuf=size) as sock:
        assert _sockopts.get_rcvbuf(sock) > 0


@PROPERTY
@given(max_size=anything, buffer_limit=anything)
def test_endpoint_options_validator_property(max_size: Any, buffer_limit: Any) -> None:
    try:
        TransportOptions(max_size=max_size, buffer_limit=buffer_limit)
    except udpio.InvalidArgumentError:
        return
    assert max_size is None or 0 <= max_size <= 65527
    assert buffer_limit >= 0


@PROPERTY
@given(value=st.one_of(anything, st.sampled_from(["lo", "127.0.0.1", "::1", 1, "1"])),
       family=st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_resolve_interface_property(value: Any, family: int) -> None:
    try:
        interface = _interfaces.resolve_interface(value, family)
    except udpio.InvalidArgumentError:  # UnknownInterfaceError and friends
        return
    assert interface.index >= 1 and socket.if_indextoname(interface.index) == interface.name


@PROPERTY
@given(value=st.one_of(anything, st.sampled_from(["224.0.0.1", "239.1.2.3", "ff02::1", "ff15::1%lo"])),
       family=st.sampled_from([0, socket.AF_INET, socket.AF_INET6]))
def test_check_group_and_source_property(value: Any, family: int) -> None:
    try:
        found, group = _interfaces.check_group(value, family)
    except udpio.InvalidArgumentError:
        pass
    else:
        assert ipaddress.ip_address(group).is_multicast and found in (socket.AF_INET, socket.AF_INET6)
    try:
        source = _interfaces.check_source(value, family or socket.AF_INET)
    except udpio.InvalidArgumentError:
        return
    assert not ipaddress.ip_address(source).is_multicast


@PROPERTY
@given(ttl=anything, flag=anything)
def test_multicast_option_validators_property(ttl: Any, flag: Any) -> None:
    with contextlib.suppress(udpio.InvalidArgumentError):
        assert 0 <= _multicast._check_ttl(ttl) <= 255
    with contextlib.suppress(udpio.InvalidArgumentError):
        assert _multicast._check_bool(flag, "loopback") is flag


@PROPERTY
@given(kind=anything)
def test_loop_kind_validator_property(kind: Any) -> None:
    try:
        assert _loop.resolve_loop_kind(kind) in ("uvloop", "asyncio")
    except udpio.InvalidArgumentError:
        pass
    except ImportError:  # "uvloop" asked for where it is not installed: documented
        assert kind == "uvloop"


@PROPERTY
@given(workers=anything, interval=anything)
def test_worker_option_validators_property(workers: Any, interval: Any) -> None:
    with contextlib.suppress(udpio.InvalidArgumentError):
        assert 1 <= _workers.check_workers(workers) <= _workers.MAX_WORKERS
    with contextlib.suppress(udpio.InvalidArgumentError):
        assert 0 < _workers._check_interval(interval, "report_interval") < math.inf


@PROPERTY
@given(text=nasty_text)
def test_cli_argument_types_property(text: str) -> None:
    """The echo CLI's --block-port and --allow/--deny/--exempt parsers: a value or argparse's usage error."""
    with contextlib.suppress(argparse.ArgumentTypeError):
        assert 0 <= cli_echo._port(text) <= 65535
    with contextlib.suppress(argparse.ArgumentTypeError):
        assert ipaddress.ip_network(cli_echo._network(text))


@PROPERTY
@given(data=st.binary(max_size=64), host=nasty_text, port=st.integers(0, 65535), now=st.floats())
def test_notify_parser_takes_any_bytes_property(data: bytes, host: str, port: int, now: float) -> None:
    """The multicast protocol's parser of peer bytes: any datagram is a step, never an exception."""
    assume(data not in (b"Notify", b"Acknowledge"))
    logic = NotifyLogic()
    step = logic.feed(data, (host, port), now)
    assert step.sends == () and logic.ignored == 1
