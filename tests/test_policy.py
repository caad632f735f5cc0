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
import dataclasses
import enum
import ipaddress
import itertools
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
    DROP_LOOP,
    DROP_MAPPED_SOURCE,
    DROP_NOT_ALLOWED,
    DROP_NOT_UNICAST,
    DROP_OWN_PORT,
    DROP_SERVICE_PORT,
    DROP_SOURCE_PORT_ZERO,
    DROP_SOURCE_RATE,
    LOOP_MAX_RETURNS,
    LOOP_PERSISTS,
    LOOP_WINDOW,
    PolicyConfig,
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


_payloads = itertools.count()


def ask(policy: SafetyPolicy, addr: Any, now: float) -> str | None:
    """``policy.admit`` with a payload never seen before, so the loop guard stays out of tests of the other
    checks (the loop guard has its own tests below)."""
    return policy.admit(b"%d" % next(_payloads), addr, now)


# -- the reflection guard ----------------------------------------------------------------------------


def test_default_guard_covers_the_issue_ports() -> None:
    required = {7, 13, 17, 19, 37, 53, 123, 161, 1900, 5353, 11211}
    assert required <= DEFAULT_BLOCKED_PORTS
    policy = SafetyPolicy()
    for port in sorted(DEFAULT_BLOCKED_PORTS):
        assert ask(policy, ("192.0.2.1", port), 0.0) == DROP_SERVICE_PORT
    assert ask(policy, ("192.0.2.1", 0), 0.0) == DROP_SOURCE_PORT_ZERO
    assert ask(policy, ("2001:db8::1", 19, 0, 0), 0.0) == DROP_SERVICE_PORT
    assert ask(policy, ("192.0.2.1", 40000), 0.0) is None


def test_own_port_is_refused_once_bound() -> None:
    policy = SafetyPolicy()
    assert ask(policy, ("192.0.2.1", 8007), 0.0) is None
    policy.bind(("0.0.0.0", 8007))
    assert ask(policy, ("192.0.2.1", 8007), 0.0) == DROP_OWN_PORT  # a twin elsewhere
    assert ask(policy, ("127.0.0.1", 8007), 0.0) == DROP_OWN_PORT  # itself, forged
    policy.bind(("::", 7, 0, 0))  # bound on a service port: its own port wins as the reason
    assert ask(policy, ("::1", 7, 0, 0), 0.0) == DROP_OWN_PORT
    policy.bind(None)  # a transport that cannot say: no own-port rule, nothing raised
    assert ask(policy, ("192.0.2.1", 8007), 0.0) is None


def test_guard_off_and_custom_ports() -> None:
    off = SafetyPolicy(reflection_guard=False)
    off.bind(("127.0.0.1", 8007))
    for port in (0, 7, 19, 8007):
        assert ask(off, ("192.0.2.1", port), 0.0) is None
    custom = SafetyPolicy(blocked_ports=[4242])
    assert ask(custom, ("192.0.2.1", 4242), 0.0) == DROP_SERVICE_PORT
    assert ask(custom, ("192.0.2.1", 19), 0.0) is None  # replaced the defaults
    assert ask(custom, ("192.0.2.1", 0), 0.0) == DROP_SOURCE_PORT_ZERO  # port 0 is always refused


# -- allow / deny / exempt -----------------------------------------------------------------------------


def test_deny_then_allow_ipv4_ipv6_and_mapped() -> None:
    policy = SafetyPolicy(allow=["192.0.2.0/24", "2001:db8::/32"], deny=["192.0.2.128/25", "2001:db8:bad::/48"])
    assert ask(policy, ("192.0.2.1", 5000), 0.0) is None
    assert ask(policy, ("192.0.2.200", 5000), 0.0) == DROP_DENIED  # deny wins over allow
    assert ask(policy, ("198.51.100.1", 5000), 0.0) == DROP_NOT_ALLOWED
    assert ask(policy, ("2001:db8::1", 5000, 0, 0), 0.0) is None
    assert ask(policy, ("2001:db8:bad::1", 5000, 0, 0), 0.0) == DROP_DENIED
    assert ask(policy, ("2001:db9::1", 5000, 0, 0), 0.0) == DROP_NOT_ALLOWED
    # Link-local sources carry a scope; it does not hide them from a list.
    scoped = SafetyPolicy(deny=["fe80::/10"])
    assert ask(scoped, ("fe80::1%eth0", 5000, 0, 2), 0.0) == DROP_DENIED


def test_mapped_sources_count_as_ipv4_only_on_a_dual_stack_socket() -> None:
    """Issue 13 item 2. A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d, and IPv4 lists match them. On an
    IPv6-only socket (udpio's own, and the policy's default) only IPv6 datagrams arrive, so a mapped source is
    one forged into an IPv6 header: refused, never matched as IPv4 (it used to pass allow=10.0.0.0/8)."""
    def policy() -> SafetyPolicy:
        return SafetyPolicy(allow=["10.0.0.0/8", "192.0.2.0/24"], deny=["192.0.2.128/25"], rate=None,
                            global_rate=None)

    v6only = policy()  # never bound: the safe default
    assert ask(v6only, ("::ffff:10.1.2.3", 5000, 0, 0), 0.0) == DROP_MAPPED_SOURCE
    v6only.bind(("::", 7007, 0, 0), dual_stack=False)
    assert ask(v6only, ("::ffff:192.0.2.1", 5000, 0, 0), 0.0) == DROP_MAPPED_SOURCE
    assert ask(v6only, ("::ffff:127.0.0.1", 5000, 0, 0), 0.0) == DROP_MAPPED_SOURCE
    dual = policy()
    dual.bind(("::", 7007, 0, 0), dual_stack=True)
    assert ask(dual, ("::ffff:10.1.2.3", 5000, 0, 0), 0.0) is None
    assert ask(dual, ("::ffff:192.0.2.200", 5000, 0, 0), 0.0) == DROP_DENIED
    assert ask(dual, ("::ffff:198.51.100.1", 5000, 0, 0), 0.0) == DROP_NOT_ALLOWED
    # Lists written in mapped form mean the IPv4 networks.
    mapped_list = SafetyPolicy(deny=["::ffff:10.0.0.0/104"])
    mapped_list.bind(("::", 7007, 0, 0), dual_stack=True)
    assert ask(mapped_list, ("::ffff:10.9.9.9", 5000, 0, 0), 0.0) == DROP_DENIED
    assert ask(mapped_list, ("10.9.9.9", 5000), 0.0) == DROP_DENIED
    # bind() again changes the meaning: verdicts cached for the old socket are not reused.
    dual.bind(("::", 7007, 0, 0), dual_stack=False)
    assert ask(dual, ("::ffff:10.1.2.3", 5000, 0, 0), 0.0) == DROP_MAPPED_SOURCE


def test_mapped_loopback_is_never_trusted() -> None:
    """Issue 13 item 2: Linux delivers IPv6 datagrams from other hosts carrying ::ffff:127.0.0.1; the policy
    mapped that to 127.0.0.1 and exempted it from every rate limit (1000 of 1000 answered), and a dual-stack
    socket sends the reply to a service on this host's loopback. Refused on every socket, whatever the lists
    say, while real IPv4 and IPv6 loopback stay exempt."""
    for dual_stack in (False, True):
        policy = SafetyPolicy(rate=1, burst=1, global_rate=1, global_burst=1,
                              allow=["127.0.0.0/8", "::/0", "0.0.0.0/0"], exempt=["127.0.0.0/8", "::ffff:0:0/96"])
        policy.bind(("::", 7007, 0, 0), dual_stack=dual_stack)
        verdicts = [ask(policy, ("::ffff:127.0.0.1", 40000, 0, 0), 0.0) for _ in range(1000)]
        assert verdicts == [DROP_MAPPED_SOURCE] * 1000
        assert ask(policy, ("::ffff:127.1.2.3", 40000, 0, 0), 0.0) == DROP_MAPPED_SOURCE
        assert all(ask(policy, ("127.0.0.1", 40000), 0.0) is None for _ in range(10))


def test_multicast_broadcast_and_unspecified_sources_are_refused() -> None:
    """Issue 13 item 8: such sources are never peers, and the reply would go to the group (or the link, or
    this host). Refused even with every list open and no limits."""
    policy = SafetyPolicy(reflection_guard=False, rate=None, global_rate=None, allow=["0.0.0.0/0", "::/0"])
    policy.bind(("::", 7007, 0, 0), dual_stack=True)
    for host in ("224.0.0.1", "239.255.0.1", "255.255.255.255", "0.0.0.0", "0.1.2.3", "ff02::1", "ff05::2",
                 "::", "::ffff:224.0.0.1", "::ffff:255.255.255.255", "::ffff:0.0.0.0"):
        assert ask(policy, (host, 40000, 0, 0) if ":" in host else (host, 40000), 0.0) == DROP_NOT_UNICAST, host
    for host in ("192.0.2.1", "223.255.255.255", "240.0.0.1", "2001:db8::1", "fe80::1%lo", "::ffff:192.0.2.1"):
        assert ask(policy, (host, 40000), 0.0) is None, host


def test_exempt_skips_rate_limits_only() -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=1, global_burst=1)  # loopback exempt by default
    assert all(ask(policy, ("127.0.0.1", 40000), 0.0) is None for _ in range(100))
    assert all(ask(policy, ("::1", 40000, 0, 0), 0.0) is None for _ in range(100))
    assert ask(policy, ("127.0.0.1", 19), 0.0) == DROP_SERVICE_PORT  # the guard still applies
    assert ask(policy, ("192.0.2.1", 40000), 0.0) is None
    assert ask(policy, ("192.0.2.1", 40000), 0.0) == DROP_SOURCE_RATE
    strict = SafetyPolicy(rate=1, burst=1, exempt=())
    assert ask(strict, ("127.0.0.1", 40000), 0.0) is None
    assert ask(strict, ("127.0.0.1", 40000), 0.0) == DROP_SOURCE_RATE


# -- the loop guard ------------------------------------------------------------------------------


def test_loop_guard_breaks_a_loop_between_servers_on_any_ports() -> None:
    """Issue 13 item 3: two echo servers on different ports (8007, 7007), one forged datagram between them.
    What this server then receives from the other is its own reply, again and again: answered
    LOOP_MAX_RETURNS times, then refused once, which ends the loop (nothing is in flight any more)."""
    policy = SafetyPolicy()
    policy.bind(("0.0.0.0", 8007))
    peer = ("192.0.2.7", 7007)  # an ordinary, rate-limited source: the loop stays far below 200/s
    now, verdicts = 50.0, []
    for _ in range(LOOP_MAX_RETURNS + 3):
        now += 0.04  # a 40 ms round trip
        verdicts.append(policy.admit(b"ping-pong", peer, now))
    assert verdicts == [None] * (LOOP_MAX_RETURNS + 1) + [DROP_LOOP, None]  # a new count after the break
    # Other payloads, other peers, and the same host's other ports are other conversations.
    assert policy.admit(b"ping-pong", ("192.0.2.7", 7008), now) is None
    assert policy.admit(b"ping-pong", ("192.0.2.8", 7007), now) is None
    assert policy.admit(b"other", peer, now) is None


@pytest.mark.parametrize("round_trip", [0.0001, 0.01, 0.3, LOOP_WINDOW * 0.99])
def test_loop_guard_holds_on_any_link_and_for_exempt_sources(round_trip: float) -> None:
    """Whatever the link (a round trip up to LOOP_WINDOW) and even for sources exempt from rate limits: the
    loop ends after LOOP_MAX_RETURNS round trips or LOOP_PERSISTS seconds, whichever is longer."""
    bound = max(LOOP_MAX_RETURNS, math.ceil(LOOP_PERSISTS / round_trip)) + 2
    for peer in (("127.0.0.1", 7007), ("::1", 7007, 0, 0), ("198.51.100.9", 33333)):
        policy = SafetyPolicy(rate=None, global_rate=None)
        now, trips = 0.0, 0
        while policy.admit(b"x" * 100, peer, now) is None:
            trips += 1
            assert trips <= bound, trips
            now += round_trip
        assert trips >= LOOP_MAX_RETURNS + 1


def test_loop_guard_forgets_after_the_window_and_is_bounded() -> None:
    policy = SafetyPolicy(rate=None, global_rate=None)
    peer = ("192.0.2.7", 7007)
    now = 0.0
    for _ in range(LOOP_MAX_RETURNS + 1):
        assert policy.admit(b"heartbeat", peer, now) is None
        now += 0.1
    # A client repeating one payload after a pause longer than the memory (at most 3 windows) starts afresh.
    assert policy.admit(b"heartbeat", peer, now + 3 * LOOP_WINDOW) is None
    # Memory is bounded whatever the traffic: many distinct replies in no time.
    for i in range(_policy.MAX_TRACKED_REPLIES * 2):
        policy.admit(b"%d" % i, peer, now)
    assert policy.tracked_replies <= _policy.MAX_TRACKED_REPLIES


def test_loop_guard_cost_for_a_client_repeating_one_payload() -> None:
    """The documented cost, for a client that sends one unchanging payload from one socket: a burst costs
    nothing, a steady stream one datagram every LOOP_PERSISTS seconds, a slow repeater one in K + 2."""
    peer = ("192.0.2.7", 40000)
    burst = SafetyPolicy(rate=None, global_rate=None)
    assert all(burst.admit(b"same", peer, 1.0) is None for _ in range(1000))  # a benchmark's window, at once
    stream = SafetyPolicy(rate=None, global_rate=None)
    verdicts = [stream.admit(b"same", peer, 1.0 + i / 1000) for i in range(2000)]  # 1000/s for 2 s
    assert 2 / LOOP_PERSISTS - 1 <= verdicts.count(DROP_LOOP) <= 2 / LOOP_PERSISTS
    heartbeat = SafetyPolicy(rate=None, global_rate=None)
    verdicts = [heartbeat.admit(b"same", peer, float(i)) for i in range(10 * (LOOP_MAX_RETURNS + 2))]  # 1/s
    assert verdicts.count(DROP_LOOP) == 10


@pytest.mark.parametrize("size", [9, 128, 129, 1400, 65507])
def test_loop_guard_off_with_the_reflection_guard_and_zero_copy_buffers(size: int) -> None:
    """Short payloads are hashed whole, long ones by a fingerprint (length and both ends); a zero-copy
    memoryview (not hashable) and bytes give the same key, through filter() and admit() alike."""
    off = SafetyPolicy(reflection_guard=False, rate=None, global_rate=None)
    assert all(off.admit(b"x" * size, ("192.0.2.7", 7007), float(i)) is None for i in range(100))
    assert off.tracked_replies == 0
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    view = memoryview(bytearray(payload))  # what a zero-copy transport delivers: not hashable
    for first, then in ((view, payload), (payload, view)):
        on = SafetyPolicy(rate=None, global_rate=None)
        dropped: list[str] = []
        answered = len(on.filter([(first, ("192.0.2.7", 7007))], 0.0, dropped.append))
        answered += sum(on.admit(then, ("192.0.2.7", 7007), float(i)) is None for i in range(1, 10))
        assert answered == LOOP_MAX_RETURNS + 1


def test_loop_guard_fingerprint_tells_long_payloads_apart_by_their_ends() -> None:
    """Long payloads differing at either end or in length are different replies to the guard."""
    policy = SafetyPolicy(rate=None, global_rate=None)
    peer = ("192.0.2.7", 7007)
    base = bytes(1000)
    variants = [base, b"\x01" + base[1:], base[:-1] + b"\x01", base + b"\x00"]
    for t in range(20):  # each variant alone would be refused by now; interleaved, none is a repeat of another
        for i, variant in enumerate(variants):
            verdict = policy.admit(variant, peer, t * 0.1 + i * 0.01)
            assert verdict is None or t >= LOOP_MAX_RETURNS, (t, i)


def test_loop_guard_remembers_the_reply_a_responder_sends() -> None:
    """A responder whose reply is not the request (Notify -> Acknowledge) says so: a sender repeating its
    Notify is not a loop, and an Acknowledge coming back is recognised as this member's own."""
    policy = SafetyPolicy(rate=None, global_rate=None)
    sender = ("192.0.2.7", 8001)
    assert all(policy.admit(b"Notify", sender, i / 10, reply=b"Acknowledge") is None for i in range(50))
    verdicts = [policy.admit(b"Acknowledge", sender, 5 + i / 10) for i in range(LOOP_MAX_RETURNS + 1)]
    assert verdicts[-1] == DROP_LOOP


# -- token buckets -----------------------------------------------------------------------------


def test_source_bucket_burst_then_refill() -> None:
    policy = SafetyPolicy(rate=10, burst=5, global_rate=None, exempt=())
    peer = ("192.0.2.1", 40000)
    assert [ask(policy, peer, 100.0) for _ in range(6)] == [None] * 5 + [DROP_SOURCE_RATE]
    assert ask(policy, peer, 100.05) == DROP_SOURCE_RATE  # half a token
    assert ask(policy, peer, 100.15) is None  # a whole token after 0.15 s at 10/s
    assert [ask(policy, peer, 200.0) for _ in range(6)] == [None] * 5 + [DROP_SOURCE_RATE]  # capped at burst
    # Per source: another peer has its own bucket; the port does not make another source.
    assert ask(policy, ("192.0.2.2", 40000), 200.0) is None
    assert ask(policy, ("192.0.2.1", 40001), 200.0) == DROP_SOURCE_RATE


def test_global_bucket_caps_all_sources_together() -> None:
    policy = SafetyPolicy(rate=None, global_rate=100, global_burst=10, exempt=())
    verdicts = [ask(policy, (f"192.0.2.{i}", 40000), 50.0) for i in range(20)]
    assert verdicts == [None] * 10 + [DROP_GLOBAL_RATE] * 10
    assert ask(policy, ("192.0.2.99", 40000), 50.015) is None  # 0.015 s at 100/s: a whole token


def test_source_refusal_does_not_spend_global_tokens() -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=1, global_burst=2, exempt=())
    greedy = ("192.0.2.1", 40000)
    assert ask(policy, greedy, 0.0) is None
    assert all(ask(policy, greedy, 0.0) == DROP_SOURCE_RATE for _ in range(50))
    assert ask(policy, ("192.0.2.2", 40000), 0.0) is None  # the second global token is still there


def test_clock_going_backwards_neither_refills_nor_raises() -> None:
    policy = SafetyPolicy(rate=10, burst=1, global_rate=None, exempt=())
    peer = ("192.0.2.1", 40000)
    assert ask(policy, peer, 1000.0) is None
    assert ask(policy, peer, 10.0) == DROP_SOURCE_RATE
    assert ask(policy, peer, math.nan) == DROP_SOURCE_RATE
    assert ask(policy, peer, 1000.2) is None


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
        if ask(policy, (f"192.0.2.{source}", 40000), now) is None:
            admitted[source] = admitted.get(source, 0) + 1
    for count in admitted.values():
        assert count <= burst + rate * (now - start) + 1e-6
    # And a source that sends one datagram per 1/rate seconds (a hair slower: float rounding) is never refused.
    steady = SafetyPolicy(rate=rate, burst=burst, global_rate=None, exempt=())
    assert all(ask(steady, ("198.51.100.1", 1), 5000.0 + i * 1.000001 / rate) is None for i in range(20))


# -- bounded per-source state ------------------------------------------------------------------------


@PROPERTY
@given(limit=st.integers(1, 64), sources=st.lists(st.integers(0, 200), max_size=400))
def test_per_source_state_is_bounded_and_evictions_counted(limit: int, sources: list[int]) -> None:
    policy = SafetyPolicy(rate=1, burst=1, global_rate=None, exempt=(), max_sources=limit)
    created = 0
    held: list[int] = []  # LRU model: least recently used first
    for source in sources:
        ask(policy, (f"10.0.{source // 256}.{source % 256}", 1234), 0.0)
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
    assert ask(policy, a, 0.0) is None
    assert ask(policy, b, 0.0) is None
    assert ask(policy, a, 0.0) == DROP_SOURCE_RATE  # a is now the most recent
    assert ask(policy, c, 0.0) is None  # evicts b, not a
    assert policy.evictions == 1
    assert ask(policy, a, 0.0) == DROP_SOURCE_RATE  # a kept its (empty) bucket
    assert ask(policy, b, 0.0) is None  # b was forgotten: a full bucket again (counted)
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
    assert SafetyPolicy.from_config(policy.config).config == policy.config
    assert "per-source 5/s burst 7" in policy.describe()
    assert "allow only 10.0.0.0/8" in repr(policy)


def test_policy_config_is_typed_and_refuses_misspelt_fields() -> None:
    """Issue 10: the policy crosses to worker processes as data; a misspelt or unknown field, or a bad value,
    fails loudly with its name instead of being ignored (or taking a default)."""
    config = PolicyConfig.from_options(rate=5, allow=["10.0.0.0/8"], blocked_ports=[9, 7])
    assert config.burst == 5.0 and config.global_burst == config.global_rate == 20_000.0
    data = json.loads(json.dumps(config.to_dict()))
    assert PolicyConfig.from_dict(data) == config
    assert PolicyConfig.from_dict({}) == PolicyConfig()  # missing keys: the defaults
    with pytest.raises(udpio.InvalidArgumentError, match=r"policy config keys must be among .*, got \['rat'\]"):
        PolicyConfig.from_dict({**data, "rat": 5})
    with pytest.raises(udpio.InvalidArgumentError, match=r"global_rate must be a finite number > 0.*got 'fast'"):
        PolicyConfig.from_dict({**data, "global_rate": "fast"})
    with pytest.raises(udpio.InvalidArgumentError, match=r"policy config must be a mapping"):
        PolicyConfig.from_dict([("rate", 5)])
    with pytest.raises(udpio.InvalidArgumentError, match=r"burst must be None when rate is None"):
        dataclasses.replace(config, rate=None)  # a variant is checked again
    with pytest.raises(udpio.InvalidArgumentError, match=r"rate must be a float or None, got 5"):
        PolicyConfig(rate=5)  # type: ignore[arg-type]  # direct construction takes normalised values only
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate = 1.0  # type: ignore[misc]


def test_worker_share_of_the_global_rate() -> None:
    config = _workers.worker_policy_config(SafetyPolicy(global_rate=1000, global_burst=3), 4)
    assert config is not None
    assert config.global_rate == 250 and config.global_burst == 1.0
    assert _workers.worker_policy_config(None, 4) is None
    assert _workers.worker_policy_config(SafetyPolicy(global_rate=None), 4) == PolicyConfig(
        global_rate=None, global_burst=None
    )


def test_worker_config_round_trip_and_misspelt_fields() -> None:
    config = _workers.WorkerConfig(policy=PolicyConfig(), max_size=1200, report_interval=0.5, loop="asyncio", index=3)
    assert _workers.WorkerConfig.from_json(config.to_json()) == config
    data = json.loads(config.to_json())
    with pytest.raises(udpio.InvalidArgumentError, match=r"worker config keys must be exactly"):
        _workers.WorkerConfig.from_json(json.dumps({**data, "max_sise": 1}))
    with pytest.raises(udpio.InvalidArgumentError, match=r"policy config keys must be among"):
        _workers.WorkerConfig.from_json(json.dumps({**data, "policy": {"burts": 3}}))
    with pytest.raises(udpio.InvalidArgumentError, match=r"worker loop must be 'uvloop' or 'asyncio', got 'tokio'"):
        _workers.WorkerConfig.from_json(json.dumps({**data, "loop": "tokio"}))
    with pytest.raises(udpio.InvalidArgumentError, match=r"report_interval must be a finite number"):
        _workers.WorkerConfig.from_json(json.dumps({**data, "report_interval": None}))


def test_drop_reasons_are_a_string_enum_with_the_old_names_as_aliases() -> None:
    """Issue 10: an enum with str values; ``udpio.DROP_*`` are its members, so old code comparing with the
    strings, counters keyed by them and JSON all keep reading the plain values."""
    assert issubclass(udpio.DropReason, str) and issubclass(udpio.DropReason, enum.Enum)
    assert tuple(udpio.DropReason) == _policy.DROP_REASONS
    for reason in udpio.DropReason:
        alias = getattr(udpio, f"DROP_{reason.name}")
        assert alias is reason and reason == reason.value
        assert f"{reason}" == str(reason) == reason.value
    assert json.dumps({udpio.DROP_LOOP: udpio.DROP_LOOP}) == '{"loop": "loop"}'
    counters = udpio.Counters()
    counters.count_policy_drop(udpio.DropReason.SOURCE_RATE)
    assert counters.policy_drops == {"source_rate": 1}
    assert counters.snapshot()["policy:source_rate"] == 1
    assert udpio.DropReason("denied") is udpio.DROP_DENIED


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
    reason = policy.admit(b"x", addr, now)
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
                reason = one.admit(item[0], item[1], now)
            except (TypeError, IndexError, KeyError):
                reason = DROP_BAD_ADDRESS
            (expected_in.append(item) if reason is None else expected_out.append(reason))
        dropped: list[str] = []
        assert many.filter(items, now, dropped.append) == expected_in
        assert dropped == expected_out
    assert (many.evictions, many.tracked_sources) == (one.evictions, one.tracked_sources)
    assert many.tracked_replies == one.tracked_replies


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
