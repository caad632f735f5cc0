"""Past one machine, in private network namespaces: a service address (VIP) on ``lo``, a load balancer made of
the kernel's own NAT (nftables, as kube-proxy's nftables mode uses it), and ECMP anycast. The topologies and
commands are the ones ``docs/deploying.rst`` shows.

* ``test_wildcard_echo_answers_from_the_vip``: the issue's two namespaces; a host with ``10.77.0.1/24`` on its
  link and ``10.77.0.100/32`` on ``lo`` (IPv6: ``fd77::1/64``, ``fd77::100/128``), ``udpio echo 0.0.0.0 8007``
  (``::``), a client with connected sockets: each address is answered from itself, on both loops.
* ``test_replies_queued_behind_a_full_send_buffer_keep_their_source``: the send path's queue keeps the source.
* ``test_nftables_load_balancer``: clients -> a balancer namespace that DNATs the VIP to three backends by a
  hash of the flow (buckets in an nftables map), connection tracking reversing it; three backends each
  running ``udpio echo --workers 2``. Every reply comes from the VIP, flows spread over the backends and each
  stays on one, and taking a backend out of the map (and its flows out of conntrack, as kube-proxy does)
  moves only its flows and loses nothing.
* ``test_ecmp_anycast_with_the_vip_on_every_backend``: a router namespace with a multipath route to the VIP
  (L4 hash), the VIP on ``lo`` of three backends each running ``udpio echo --workers 2``, replies going
  straight back to the client (no state anywhere). A server without per-datagram source addresses answers
  from the wrong address there (the control); udpio answers from the VIP.

Every namespace, link and process is made here and removed on every path; every wait is bounded; nothing is
attached to the host's own interfaces. The balancer's tests need ``nft`` and ``conntrack`` (Debian's
``nftables`` and ``conntrack`` packages, which ``.ci/run`` installs) and are skipped, saying so, without them.
"""

from __future__ import annotations

import collections
import contextlib
import re
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import udpio

from ._helpers import Collector
from ._lines import Lines, stop
from ._netns import IP_TIMEOUT, entered, ip, netns, skip_reason, sysctl

pytestmark = pytest.mark.netns

_REASON = skip_reason()
if _REASON:
    pytest.skip(f"namespace tests skipped: {_REASON}", allow_module_level=True)

PORT = 8007
VIP = "10.77.100.1"
#: Bound on each reply, and on a server's start (a Python process importing udpio, workers forked).
WAIT = 5.0
START = 30.0
LOOPS = ["asyncio", "uvloop"]


# -- plumbing ---------------------------------------------------------------------------------------------


def link(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair made directly inside the two namespaces (it never appears among the host's devices)."""
    ip("link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    ip("link", "set", name_a, "up", ns=ns_a)
    ip("link", "set", name_b, "up", ns=ns_b)


def run_in(ns: str, *command: str, stdin: str | None = None) -> str:
    """Run a command inside ``ns`` (bounded); its stdout. Raises with stderr when it fails."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *command], input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {ns} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Echo:
    """``udpio echo`` running in a namespace; its stderr read line by line (bounded waits)."""

    def __init__(self, ns: str, *args: str, loop: str = "uvloop") -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "udpio", "--loop", loop, "echo", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stderr is not None
        self.lines = Lines(self.process.stderr)

    def ready(self) -> None:
        self.lines.expect(r"listening on", timeout=START)

    def finish(self) -> tuple[int, int]:
        """Stop it (SIGTERM: workers report their last counts) and read its summary: (received, sent)."""
        self.process.terminate()
        self.process.wait(START)
        summary = [line for line in self.lines.rest() if line.startswith("udpio echo: received")]
        assert summary, self.lines.seen
        found = re.match(r"udpio echo: received (\d+) datagrams .*?, sent (\d+) ", summary[-1])
        assert found, summary[-1]
        return int(found[1]), int(found[2])


@contextlib.contextmanager
def servers() -> Iterator[list[Echo]]:
    """A list to start servers into; every one still running is stopped on exit, whatever happened."""
    started: list[Echo] = []
    try:
        yield started
    finally:
        for server in started:
            stop(server.process)


def flows(ns: str, host: str, first_port: int, count: int, *, connect: bool = True) -> list[socket.socket]:
    """``count`` client sockets in ``ns``, bound to ``host`` on consecutive ports from ``first_port`` (known
    5-tuples: the balancer's hash is then the same on every run), connected to the VIP."""
    made: list[socket.socket] = []
    with entered(ns):
        try:
            for port in range(first_port, first_port + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                made.append(sock)
                sock.settimeout(WAIT)
                sock.bind((host, port))
                if connect:
                    sock.connect((VIP, PORT))
        except BaseException:
            for sock in made:
                sock.close()
            raise
    return made


def round_trip(socks: list[socket.socket], tag: str) -> None:
    """One datagram on every flow, then every reply: each must come back, from the VIP and its port."""
    for index, sock in enumerate(socks):
        sock.send(f"{tag}:{index}".encode())
    for index, sock in enumerate(socks):
        try:
            data, source = sock.recvfrom(100)
        except TimeoutError:
            raise AssertionError(f"{tag}: no reply within {WAIT} s on flow {sock.getsockname()}") from None
        assert (data, source) == (f"{tag}:{index}".encode(), (VIP, PORT))


# -- a VIP on lo, two namespaces ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("loop", LOOPS)
def test_wildcard_echo_answers_from_the_vip(loop: str, family: int) -> None:
    """The issue's reproduction: before, a request to the VIP was answered from the host's link address,
    which the client's connected socket drops. Now each address is answered from itself."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    link_host, vip, client_host = ("10.77.0.1", "10.77.0.100", "10.77.0.2") if family == 4 else (
        "fd77::1", "fd77::100", "fd77::2")
    with netns("vh") as host, netns("vc") as client, servers() as started:
        sysctl(host, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        sysctl(client, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        link(host, "eth0", client, "eth0")
        if family == 4:
            ip("addr", "add", f"{link_host}/24", "dev", "eth0", ns=host)
            ip("addr", "add", f"{vip}/32", "dev", "lo", ns=host)
            ip("addr", "add", f"{client_host}/24", "dev", "eth0", ns=client)  # the VIP is on-link: ARP answers it
        else:
            ip("-6", "addr", "add", f"{link_host}/64", "dev", "eth0", "nodad", ns=host)
            ip("-6", "addr", "add", f"{vip}/128", "dev", "lo", ns=host)
            ip("-6", "addr", "add", f"{client_host}/64", "dev", "eth0", "nodad", ns=client)
            # Neighbour discovery answers only for addresses of the link itself: the VIP is routed, as a
            # router in front of anycast hosts would.
            ip("-6", "route", "add", f"{vip}/128", "via", link_host, ns=client)
        server = Echo(host, "::" if family == 6 else "0.0.0.0", str(PORT), loop=loop)
        started.append(server)
        server.ready()
        with entered(client):
            socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for sock, target in zip(socks, (link_host, vip), strict=True):
                sock.settimeout(WAIT)
                sock.connect((target, PORT))
                sock.send(f"to {target}".encode())
                data, source = sock.recvfrom(100)  # a connected socket gets only its peer's datagrams
                assert (data, source[:2]) == (f"to {target}".encode(), (target, PORT))
        finally:
            for sock in socks:
                sock.close()
        assert server.finish() == (2, 2)


@pytest.mark.parametrize("batch", [False, True], ids=["sendto", "send_batch"])
@pytest.mark.parametrize("loop", LOOPS)
def test_replies_queued_behind_a_full_send_buffer_keep_their_source(loop: str, batch: bool) -> None:
    """Behind a slow qdisc the send buffer fills (EAGAIN): replies with a source wait in udpio's queue and
    leave, in order, from the address given (127.0.0.2 on the namespace's lo); sent one by one, or as one
    batch of triples (through the compiled backend's sendmmsg where it runs)."""
    if shutil.which("tc") is None:
        pytest.skip("needs tc (iproute2) to slow the namespace's loopback")
    with netns("vq") as ns:
        run_in(ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "2kb", "limit", "1mb")

        async def main() -> tuple[int, list[tuple[bytes, str]]]:
            with entered(ns):
                sender, _ = await udpio.listen(LocalTaker, "0.0.0.0", 0, sndbuf=1024)
                receiver, proto = await udpio.listen(Collector, "127.0.0.1", 0, rcvbuf=1 << 20)
            try:
                dest = receiver.get_extra_info("sockname")
                # Each a byte longer than the one before: no two join a GSO run (one super-datagram would
                # take the whole batch past the small send buffer at once).
                replies = [b"%02d" % index + b"." * (998 + index) for index in range(30)]
                if batch:
                    sender.send_batch([(data, dest, "127.0.0.2") for data in replies])
                for data in [] if batch else replies:
                    sender.sendto(data, dest, source="127.0.0.2")
                queued = sender.get_write_buffer_size()
                got = [await proto.next(10.0) for _ in range(30)]
                assert sender.counters.datagrams_out == 30
                return queued, [(data[:2], addr[0]) for data, addr in got]
            finally:
                sender.close()
                receiver.close()

        queued, got = udpio.run(main(), loop=loop)
    assert queued > 0, "the send buffer never filled: the queue was not exercised"
    assert got == [(b"%02d" % index, "127.0.0.2") for index in range(30)]


class LocalTaker(Collector):
    """Opts in to local addresses (so the endpoint is one that reads them), records nothing."""

    def datagram_received_on(self, data: bytes, addr: object, local: udpio.LocalAddress) -> None:
        self.queue.put_nowait((data, addr, local))


# -- an nftables load balancer ------------------------------------------------------------------------------

#: Backend i (1..3) is 10.77.i.2 behind the balancer's 10.77.i.1; clients are 10.77.9.2 and 10.77.8.2.
BACKENDS = {f"b{i}": f"10.77.{i}.2" for i in (1, 2, 3)}
CLIENTS = {"c1": "10.77.9.2", "c2": "10.77.8.2"}
#: Hash buckets of the balancer's map: each backend owns every third one, so taking one out moves its four
#: buckets to the others and leaves every other bucket where it was (what consistent hashing keeps).
BUCKETS = 12
#: The jhash seed, fixed so that the same flows land on the same backends on every run.
SEED = "0x5eed"
FLOWS_PER_CLIENT = 45
ROUNDS_BEFORE, ROUNDS_AFTER = 3, 2


def _balancer_ruleset() -> str:
    owners = list(BACKENDS.values())
    elements = ", ".join(f"{bucket} : {owners[bucket % 3]}" for bucket in range(BUCKETS))
    # The hash goes through the packet mark: nft 1.0 cannot type a map keyed by a jhash expression directly.
    # The NAT chain runs for the first packet of a flow only; conntrack keeps the decision and reverses it
    # for the replies (their source becomes the VIP again).
    return f"""
table ip lb {{
    map buckets {{
        type mark : ipv4_addr
        elements = {{ {elements} }}
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} udp dport {PORT} meta mark set jhash ip saddr . udp sport mod {BUCKETS} seed {SEED} \\
            dnat to meta mark map @buckets
    }}
}}
"""


def conntrack_flows(lb: str) -> dict[tuple[str, int], tuple[str, int]]:
    """The balancer's view: each client flow to the VIP -> (the backend it was sent to, packets counted)."""
    table = run_in(lb, "conntrack", "-L", "-p", "udp", "--orig-dst", VIP)
    found: dict[tuple[str, int], tuple[str, int]] = {}
    for line in table.splitlines():
        entry = re.search(r"src=(\S+) dst=\S+ sport=(\d+) dport=\d+ packets=(\d+) .*? src=(\S+) dst=", line)
        assert entry, line
        client, sport, packets, backend = entry.groups()
        assert (client, int(sport)) not in found, f"two entries for one flow: {table}"
        found[(client, int(sport))] = (backend, int(packets))
    return found


def _build_balancer(names: dict[str, str]) -> None:
    lb = names["lb"]
    sysctl(lb, "net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_acct=1")
    for index, name in ((1, "b1"), (2, "b2"), (3, "b3")):
        link(lb, f"lb-{name}", names[name], "eth0")
        ip("addr", "add", f"10.77.{index}.1/24", "dev", f"lb-{name}", ns=lb)
        ip("addr", "add", f"{BACKENDS[name]}/24", "dev", "eth0", ns=names[name])
        # Replies go back through the balancer: its conntrack turns their source into the VIP again.
        ip("route", "add", "default", "via", f"10.77.{index}.1", ns=names[name])
    for name, address in CLIENTS.items():
        gateway = address.rpartition(".")[0] + ".1"
        link(lb, f"lb-{name}", names[name], "eth0")
        ip("addr", "add", f"{gateway}/24", "dev", f"lb-{name}", ns=lb)
        ip("addr", "add", f"{address}/24", "dev", "eth0", ns=names[name])
        ip("route", "add", "default", "via", gateway, ns=names[name])
    run_in(lb, "nft", "-f", "-", stdin=_balancer_ruleset())


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian's nftables package)")
@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack (Debian's conntrack package)")
def test_nftables_load_balancer() -> None:
    with contextlib.ExitStack() as stack:
        names = {name: stack.enter_context(netns(name)) for name in ("lb", *BACKENDS, *CLIENTS)}
        _build_balancer(names)
        started = stack.enter_context(servers())
        echo = {}
        for name in BACKENDS:
            # A per-source limit above what the test's two client hosts send (200/s by default: every flow of a
            # client host shares its source address); the guard and the global limit stay as they are.
            echo[name] = Echo(names[name], "0.0.0.0", str(PORT), "--workers", "2", "--rate", "5000")
            started.append(echo[name])
        for server in echo.values():
            server.ready()
        socks = [
            sock
            for index, (name, address) in enumerate(CLIENTS.items())
            for sock in flows(names[name], address, 20000 + 100 * index, FLOWS_PER_CLIENT)
        ]
        stack.callback(lambda: [sock.close() for sock in socks])
        lb = names["lb"]

        for round_ in range(ROUNDS_BEFORE):
            round_trip(socks, f"before{round_}")
        before = conntrack_flows(lb)
        assert len(before) == len(socks), "one conntrack entry per flow"
        assert {packets for _, packets in before.values()} == {ROUNDS_BEFORE}  # no flow was split or lost
        spread = collections.Counter(backend for backend, _ in before.values())
        print(f"flows per backend: {dict(sorted(spread.items()))}")
        assert set(spread) == set(BACKENDS.values())
        assert min(spread.values()) >= len(socks) // 6, f"flows far from even: {spread}"

        # Take b2 out as kube-proxy does: its buckets go to the others (one transaction), then the conntrack
        # entries of its flows are deleted so that their next datagram is balanced again.
        removed = BACKENDS["b2"]
        moved = [bucket for bucket in range(BUCKETS) if bucket % 3 == 1]
        heirs = [BACKENDS["b1"], BACKENDS["b3"]]
        run_in(lb, "nft", "-f", "-", stdin=(
            f"delete element ip lb buckets {{ {', '.join(map(str, moved))} }}\n"
            f"add element ip lb buckets {{ {', '.join(f'{b} : {heirs[i % 2]}' for i, b in enumerate(moved))} }}\n"
        ))
        run_in(lb, "conntrack", "-D", "-p", "udp", "--orig-dst", VIP, "--reply-src", removed)

        for round_ in range(ROUNDS_AFTER):
            round_trip(socks, f"after{round_}")  # every flow, the moved ones too: nothing lost
        after = conntrack_flows(lb)
        assert len(after) == len(socks)
        for flow, (backend, _) in before.items():
            now, total = after[flow]
            if backend == removed:
                assert now in heirs and total == ROUNDS_AFTER, (flow, backend, after[flow])
            else:
                assert (now, total) == (backend, ROUNDS_BEFORE + ROUNDS_AFTER), (flow, backend, after[flow])
        moved_flows = sum(1 for backend, _ in before.values() if backend == removed)
        print(f"flows moved off {removed}: {moved_flows}; flows per backend after: "
              f"{dict(sorted(collections.Counter(b for b, _ in after.values()).items()))}")

        # The servers' own counters agree with the balancer's table: each backend received (and answered) the
        # datagrams of the flows conntrack gave it, in each phase.
        expected = {
            name: ROUNDS_BEFORE * sum(1 for backend, _ in before.values() if backend == address)
            + ROUNDS_AFTER * sum(1 for backend, _ in after.values() if backend == address)
            for name, address in BACKENDS.items()
        }
        counts = {name: echo[name].finish() for name in BACKENDS}
        print(f"datagrams (received, sent) per backend: {counts}")
        assert counts == {name: (expected[name], expected[name]) for name in BACKENDS}


# -- ECMP anycast: the VIP on every backend's lo ------------------------------------------------------------

ANYCAST_BACKENDS = {f"a{i}": f"10.77.1{i}.2" for i in (1, 2, 3)}
ANYCAST_CLIENT = "10.77.19.2"
ANYCAST_FLOWS = 60
ANYCAST_ROUNDS = 3


def _build_anycast(names: dict[str, str]) -> None:
    rt = names["rt"]
    settings = ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"]
    # Linux >= 6.11 lets the hash seed be fixed: the same flows then take the same paths on every run.
    if run_in(rt, "sh", "-c", "test -e /proc/sys/net/ipv4/fib_multipath_hash_seed && echo yes || true").strip():
        settings.append("net.ipv4.fib_multipath_hash_seed=24301")
    sysctl(rt, *settings)
    nexthops: list[str] = []
    for name, address in ANYCAST_BACKENDS.items():
        gateway = address.rpartition(".")[0] + ".1"
        link(rt, f"rt-{name}", names[name], "eth0")
        ip("addr", "add", f"{gateway}/24", "dev", f"rt-{name}", ns=rt)
        ip("addr", "add", f"{address}/24", "dev", "eth0", ns=names[name])
        ip("addr", "add", f"{VIP}/32", "dev", "lo", ns=names[name])  # the service address, on every backend
        ip("route", "add", "default", "via", gateway, ns=names[name])
        nexthops += ["nexthop", "via", address, "dev", f"rt-{name}"]
    link(rt, "rt-c", names["c"], "eth0")
    ip("addr", "add", "10.77.19.1/24", "dev", "rt-c", ns=rt)
    ip("addr", "add", f"{ANYCAST_CLIENT}/24", "dev", "eth0", ns=names["c"])
    ip("route", "add", "default", "via", "10.77.19.1", ns=names["c"])
    ip("route", "add", f"{VIP}/32", *nexthops, ns=rt)
    # Which backend each flow reaches, seen by the router: one set of (client, port) per backend.
    sets = "".join(f"    set {name} {{ type ipv4_addr . inet_service; }}\n" for name in ANYCAST_BACKENDS)
    rules = "".join(
        f'        oifname "rt-{name}" ip daddr {VIP} udp dport {PORT} add @{name} {{ ip saddr . udp sport }}\n'
        for name in ANYCAST_BACKENDS
    )
    chain = f"    chain forward {{\n        type filter hook forward priority 0;\n{rules}    }}\n"
    ruleset = f"table ip seen {{\n{sets}{chain}}}\n"
    run_in(rt, "nft", "-f", "-", stdin=ruleset)


def _seen(rt: str, name: str) -> set[tuple[str, int]]:
    listing = run_in(rt, "nft", "list", "set", "ip", "seen", name)
    return {(host, int(port)) for host, port in re.findall(r"(\d+\.\d+\.\d+\.\d+) \. (\d+)", listing)}


def _naive_reply_source(names: dict[str, str]) -> str:
    """The control: a plain socket on the wildcard (no per-datagram source, as asyncio's and Twisted's UDP
    servers) answers by route, from the backend's own address."""
    servers_: list[socket.socket] = []
    try:
        for name in ANYCAST_BACKENDS:
            with entered(names[name]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            servers_.append(sock)
            sock.bind(("0.0.0.0", PORT))
        (client,) = flows(names["c"], ANYCAST_CLIENT, 22000, 1, connect=False)
        with client:
            client.sendto(b"naive", (VIP, PORT))
            readable, _, _ = select.select(servers_, [], [], WAIT)
            assert len(readable) == 1, "the request reached no backend (or several)"
            data, peer = readable[0].recvfrom(100)
            readable[0].sendto(data, peer)
            _, source = client.recvfrom(100)
            return str(source[0])
    finally:
        for sock in servers_:
            sock.close()


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian's nftables package)")
def test_ecmp_anycast_with_the_vip_on_every_backend() -> None:
    with contextlib.ExitStack() as stack:
        names = {name: stack.enter_context(netns(name)) for name in ("rt", "c", *ANYCAST_BACKENDS)}
        _build_anycast(names)
        naive = _naive_reply_source(names)
        assert naive in ANYCAST_BACKENDS.values(), f"the control answered from {naive}, not a backend's address"
        for name in ANYCAST_BACKENDS:  # forget the control's flow
            run_in(names["rt"], "nft", "flush", "set", "ip", "seen", name)
        started = stack.enter_context(servers())
        echo = {}
        for name in ANYCAST_BACKENDS:
            echo[name] = Echo(names[name], "0.0.0.0", str(PORT), "--workers", "2", "--rate", "5000")
            started.append(echo[name])
        for server in echo.values():
            server.ready()
        socks = flows(names["c"], ANYCAST_CLIENT, 21000, ANYCAST_FLOWS)
        stack.callback(lambda: [sock.close() for sock in socks])
        for round_ in range(ANYCAST_ROUNDS):
            round_trip(socks, f"round{round_}")  # connected sockets: every reply came from the VIP
        seen = {name: _seen(names["rt"], name) for name in ANYCAST_BACKENDS}
        everyone = {sock.getsockname() for sock in socks}
        assert set().union(*seen.values()) == everyone
        assert sum(map(len, seen.values())) == len(everyone), "a flow reached two backends"
        spread = {name: len(reached) for name, reached in seen.items()}
        print(f"anycast flows per backend: {spread}")
        assert min(spread.values()) >= ANYCAST_FLOWS // 10, f"flows far from even: {spread}"
        counts = {name: echo[name].finish() for name in ANYCAST_BACKENDS}
        print(f"anycast datagrams (received, sent) per backend: {counts}")
        assert counts == {name: (ANYCAST_ROUNDS * n, ANYCAST_ROUNDS * n) for name, n in spread.items()}
