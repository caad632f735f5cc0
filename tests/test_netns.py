"""Multicast across hosts: three network namespaces on one Ethernet segment, built and removed by fixtures.

Topology (names made unique per test; nothing is attached to the host's own interfaces)::

    hub  br0 10.77.0.1/24 fd77::1/64  (bridge, snooping off)
          |- p1 <-veth-> eth0 in m1   10.77.0.2/24 fd77::2/64
          |- p2 <-veth-> eth0 in m2   10.77.0.3/24 fd77::3/64

Every namespace gets an explicit ``224.0.0.0/4`` route on its interface (there is no default route; IPv6
adds ``ff00::/8`` by itself on multicast-capable devices) and has DAD off, so addresses are usable at once.
Members and senders are ``tests/_mcast_agent.py`` processes run with ``ip netns exec``, on either loop; the
tests synchronise on their output lines, with bounded waits, never sleeps. "Gets nothing" is checked with
a marker sent after the datagram that must not arrive, along the same path: the next datagram must be the
marker.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._lines import stop
from ._netns import ip, netns, skip_reason, sysctl

pytestmark = pytest.mark.netns

_REASON = skip_reason()
if _REASON:
    pytest.skip(f"namespace tests skipped: {_REASON}", allow_module_level=True)

AGENT = str(Path(__file__).with_name("_mcast_agent.py"))
LOOPS = ["asyncio", "uvloop"]
PORT = 5000
#: Bound on every wait for an agent's answer.
WAIT = 20.0

ADDRESSES = {
    4: {"hub": "10.77.0.1", "m1": "10.77.0.2", "m2": "10.77.0.3"},
    6: {"hub": "fd77::1", "m1": "fd77::2", "m2": "fd77::3"},
}


class Agent:
    """One ``_mcast_agent.py`` process in a namespace; its events sorted by kind as they arrive."""

    def __init__(self, ns: str, loop: str, family: int) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, AGENT, "--loop", loop, "--family", str(family)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._events: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(collections.deque)
        self._log: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        assert self.next("started")["loop"] == loop

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            with self._changed:
                self._log.append(event)
                self._events[event.pop("event")].append(event)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def next(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """The oldest unread event of ``kind``, waiting up to ``timeout``; an ``error`` event fails."""
        with self._changed:
            ok = self._changed.wait_for(lambda: self._events[kind] or self._events["error"] or self._ended, timeout)
            if self._events["error"]:
                raise AssertionError(f"agent error: {self._events['error'][0]}")
            if not ok or not self._events[kind]:
                errors = self.process.stderr.read() if self._ended and self.process.stderr else ""
                raise AssertionError(f"no {kind!r} event within {timeout} s; events: {self._log} {errors}")
            return self._events[kind].popleft()

    def do(self, op: str, reply: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self.next(reply)

    def open(self, port: int = PORT, **options: Any) -> int:
        return int(self.do("open", "opened", port=port, **options)["port"])

    def join(self, group: str, source: str | None = None) -> None:
        self.do("join", "joined", group=group, source=source)

    def leave(self, group: str, source: str | None = None) -> None:
        self.do("leave", "left", group=group, source=source)

    def send(self, data: str, to: tuple[str, int]) -> None:
        self.do("send", "sent", data=data, to=list(to))

    def received(self) -> tuple[str, str]:
        event = self.next("datagram")
        return event["data"], event["sender"]

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(WAIT)
        stop(self.process)


class Lan:
    """The three namespaces, and the agents a test starts in them (all stopped at the end)."""

    def __init__(self, names: dict[str, str], family: int, loop: str) -> None:
        self.names = names
        self.family = family
        self.loop = loop
        self.agents: list[Agent] = []

    def address(self, host: str) -> str:
        return ADDRESSES[self.family][host]

    def interface(self, host: str) -> str:
        return "br0" if host == "hub" else "eth0"

    def group(self, ssm: bool = False) -> str:
        if self.family == 4:
            first = 232 if ssm else 239
            return f"{first}.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        return f"{'ff32' if ssm else 'ff12'}::8000:{random.randint(1, 0xFFFF):x}"

    def agent(self, host: str) -> Agent:
        agent = Agent(self.names[host], self.loop, self.family)
        self.agents.append(agent)
        return agent

    def member(self, host: str, *groups: str, **options: Any) -> Agent:
        """An agent on ``host`` listening on :data:`PORT` (wildcard), joined to ``groups``."""
        agent = self.agent(host)
        agent.open(interface=self.interface(host), **options)
        for group in groups:
            agent.join(group)
        return agent

    def sender(self, host: str, **options: Any) -> Agent:
        """An agent on ``host`` bound to the host's own address (a known source), any port."""
        agent = self.agent(host)
        agent.open(port=0, host=self.address(host), interface=self.interface(host), **options)
        return agent


def _build(names: dict[str, str]) -> None:
    for ns in names.values():
        # net.* sysctls are per namespace; "default" applies to the devices created after it.
        sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    hub = names["hub"]
    ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=hub)
    ip("link", "set", "br0", "up", ns=hub)
    for index, member in ((1, "m1"), (2, "m2")):
        ns = names[member]
        # Created directly inside the two namespaces: the pair never appears among the host's devices.
        ip("link", "add", f"p{index}", "netns", hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", f"p{index}", "master", "br0", "up", ns=hub)
        ip("link", "set", "eth0", "up", ns=ns)
    for host, ns in names.items():
        dev = "br0" if host == "hub" else "eth0"
        ip("addr", "add", f"{ADDRESSES[4][host]}/24", "dev", dev, ns=ns)
        ip("-6", "addr", "add", f"{ADDRESSES[6][host]}/64", "dev", dev, "nodad", ns=ns)
        ip("route", "add", "224.0.0.0/4", "dev", dev, ns=ns)
    for index in (1, 2):
        state = ip("-d", "-j", "link", "show", f"p{index}", ns=hub)
        assert '"state":"forwarding"' in state.replace(" ", ""), state  # no STP: forwarding at once


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def ipfamily(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=LOOPS)
def lan(request: pytest.FixtureRequest, ipfamily: int) -> Iterator[Lan]:
    with contextlib.ExitStack() as stack:
        names = {host: stack.enter_context(netns(host)) for host in ("hub", "m1", "m2")}
        _build(names)
        topology = Lan(names, ipfamily, request.param)
        try:
            yield topology
        finally:
            for agent in topology.agents:  # before the namespaces go: no process may keep one alive
                agent.close()


def test_members_in_other_namespaces_receive(lan: Lan) -> None:
    group = lan.group()
    m1, m2 = lan.member("m1", group), lan.member("m2", group)
    sender = lan.sender("hub")
    sender.send("hello", (group, PORT))
    assert m1.received() == ("hello", lan.address("hub"))
    assert m2.received() == ("hello", lan.address("hub"))


def test_ttl_0_stays_on_the_sending_host_ttl_1_reaches_the_link(lan: Lan) -> None:
    group = lan.group()
    remote, local = lan.member("m1", group), lan.member("hub", group)
    sender = lan.sender("hub", ttl=0)
    sender.send("ttl 0", (group, PORT))
    sender.send("marker", (lan.address("m1"), PORT))
    assert local.received() == ("ttl 0", lan.address("hub"))  # looped back on the host itself
    assert remote.received() == ("marker", lan.address("hub"))  # the TTL 0 datagram never left
    assert sender.do("set", "set", ttl=1)["ttl"] == 1
    sender.send("ttl 1", (group, PORT))
    assert remote.received() == ("ttl 1", lan.address("hub"))
    assert local.received() == ("ttl 1", lan.address("hub"))


def test_loopback_off_keeps_the_sending_host_out(lan: Lan) -> None:
    group = lan.group()
    remote, local = lan.member("m1", group), lan.member("hub", group)
    sender = lan.sender("hub", loopback=False)
    sender.send("not for me", (group, PORT))
    sender.send("marker", (lan.address("hub"), PORT))
    assert remote.received() == ("not for me", lan.address("hub"))
    assert local.received() == ("marker", lan.address("hub"))
    assert sender.do("set", "set", loopback=True)["loopback"] is True
    sender.send("for me too", (group, PORT))
    assert local.received() == ("for me too", lan.address("hub"))


def test_leave_stops_delivery(lan: Lan) -> None:
    group = lan.group()
    leaver, stayer = lan.member("m1", group), lan.member("m2", group)
    sender = lan.sender("hub")
    sender.send("before", (group, PORT))
    assert leaver.received()[0] == "before"
    assert stayer.received()[0] == "before"
    leaver.leave(group)
    sender.send("after", (group, PORT))
    sender.send("marker", (lan.address("m1"), PORT))
    assert stayer.received()[0] == "after"  # the datagram was sent
    assert leaver.received()[0] == "marker"  # and did not reach the member that left


def test_non_member_gets_nothing(lan: Lan) -> None:
    group = lan.group()
    member, bystander = lan.member("m1", group), lan.member("m2")  # m2 listens on the port, joined nothing
    sender = lan.sender("hub")
    sender.send("members only", (group, PORT))
    sender.send("marker", (lan.address("m2"), PORT))
    assert member.received()[0] == "members only"
    assert bystander.received()[0] == "marker"


def test_ssm_delivers_only_from_the_allowed_source(lan: Lan) -> None:
    group = lan.group(ssm=True)
    member = lan.member("m1")
    member.join(group, source=lan.address("hub"))
    allowed, other = lan.sender("hub"), lan.sender("m2")
    other.send("from m2", (group, PORT))
    other.send("marker from m2", (lan.address("m1"), PORT))
    assert member.received() == ("marker from m2", lan.address("m2"))
    allowed.send("from hub", (group, PORT))
    assert member.received() == ("from hub", lan.address("hub"))
