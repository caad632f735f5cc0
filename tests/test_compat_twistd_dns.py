"""A real Twisted application on the drop-in reactor: Twisted Names served by ``twistd --reactor=udpio dns``,
queried by dnspython, answering byte for byte as the same server on Twisted's epoll reactor.

The servers run as users run them (``twistd -n dns --pyzone ZONE``, the reactor through the Twisted plugin,
the loop from ``$UDPIO_LOOP``), on 127.0.0.1, with port 0 for both TCP and UDP (the ports are read from
twistd's log). Each answer is compared as the bytes dnspython received (``Message.wire``), and checked for
what it should say, so that two servers wrong the same way cannot pass.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("twisted.names")
pytest.importorskip("dns.message")  # dnspython, from the test extra
import dns.flags
import dns.message
import dns.query
import dns.rcode

import udpio

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).with_name("twistd")
LOOPS = ["asyncio", "uvloop"] if udpio._loop.uvloop_available() else ["asyncio"]
#: Bounds for a loaded CI machine: a server starts, answers and stops in well under a second.
START_TIMEOUT = 60.0
QUERY_TIMEOUT = 10.0

ZONE = """
zone = [
    SOA("example.test", mname="ns1.example.test", rname="hostmaster.example.test", serial=2024010101,
        refresh="1H", retry="15M", expire="1W", minimum="1H", ttl="1H"),
    NS("example.test", "ns1.example.test"),
    A("ns1.example.test", "192.0.2.53"),
    A("example.test", "192.0.2.1"),
    AAAA("example.test", "2001:db8::1"),
    MX("example.test", 10, "mail.example.test"),
    A("mail.example.test", "192.0.2.25"),
    TXT("example.test", b"v=spf1 -all"),
    CNAME("www.example.test", "example.test"),
    SRV("_sip._udp.example.test", 10, 60, 5060, "sip.example.test"),
] + [TXT("big.example.test", b"x" * 200 + b"%d" % i) for i in range(8)]  # 1.6 KB: more than plain UDP holds
"""

#: (name, type, EDNS payload size or None), the rcode of the answer and a text it must contain (as dnspython
#: prints it). Twisted Names sends big.example.test's 1.6 KB over UDP whole, EDNS or not (it never sets TC;
#: on epoll alike): a datagram well over 512 bytes each way.
QUERIES = [
    ("example.test", "A", None, "NOERROR", "192.0.2.1"),
    ("example.test", "AAAA", None, "NOERROR", "2001:db8::1"),
    ("example.test", "MX", None, "NOERROR", "10 mail.example.test."),
    ("example.test", "NS", None, "NOERROR", "ns1.example.test."),
    ("example.test", "SOA", None, "NOERROR", "2024010101"),
    ("example.test", "TXT", None, "NOERROR", '"v=spf1 -all"'),
    ("www.example.test", "A", None, "NOERROR", "CNAME example.test."),
    ("_sip._udp.example.test", "SRV", None, "NOERROR", "10 60 5060 sip.example.test."),
    ("missing.example.test", "A", None, "NXDOMAIN", ";ANSWER\n;AUTHORITY"),  # nothing (no SOA from Twisted)
    ("mail.example.test", "AAAA", None, "NOERROR", ";ANSWER\n;AUTHORITY"),  # the name, no data of that type
    ("big.example.test", "TXT", None, "NOERROR", "x" * 200),
    ("big.example.test", "TXT", 4096, "NOERROR", "x" * 200),
    ("example.test", "ANY", None, "NOERROR", "192.0.2.1"),
]


@dataclass
class Server:
    """A ``twistd dns`` process, its ports, and everything it logged."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)
    udp: int = 0
    tcp: int = 0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_ports(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.udp and self.tcp):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"twistd did not listen within {START_TIMEOUT} s:\n{''.join(self.log)}") from None
            if line is None:
                raise AssertionError(f"twistd exited ({self.proc.wait()}):\n{''.join(self.log)}")
            self.log.append(line)
            if match := re.search(r"DNSDatagramProtocol starting on (\d+)", line):
                self.udp = int(match.group(1))
            if match := re.search(r"DNSServerFactory starting on (\d+)", line):
                self.tcp = int(match.group(1))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """SIGTERM, as a service manager stops it; returns the exit status and the whole log."""
        try:
            self.proc.send_signal(sig)
            status = self.proc.wait(START_TIMEOUT)
            while (line := self.lines.get(timeout=START_TIMEOUT)) is not None:
                self.log.append(line)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return status, "".join(self.log)


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zone") / "example_test.py"
    path.write_text(ZONE)
    return path


def _start(reactor: str, zone: Path, loop: str = "") -> Server:
    if not TWISTD.exists():
        pytest.skip(f"no twistd beside {sys.executable}")
    env = {
        **os.environ,
        # The plugin (twisted/plugins/udpio_reactor.py) is found from the checkout's root: an editable
        # install hides it from Twisted's plugin search.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "UDPIO_LOOP": loop,
    }
    command = [sys.executable, "-X", "dev", str(TWISTD), f"--reactor={reactor}", "-n", "--pidfile=", "--logfile=-"]
    command += ["dns", "--pyzone", str(zone), "--interface", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=zone.parent, env=env
    )
    server = Server(proc)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        server.wait_for_ports()
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture(scope="module")
def epoll_server(zone: Path) -> Iterator[Server]:
    server = _start("epoll", zone)
    yield server
    status, log = server.stop()
    assert status == -signal.SIGTERM, log


def _query(name: str, rdtype: str, payload: int | None, query_id: int) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if payload else None, payload=payload or 1232)
    query.id = query_id  # the same id to both servers: the answers can then be equal byte for byte
    return query


def _ask(server: Server, query: dns.message.Message, transport: str) -> dns.message.Message:
    if transport == "udp":
        return dns.query.udp(query, "127.0.0.1", port=server.udp, timeout=QUERY_TIMEOUT)
    return dns.query.tcp(query, "127.0.0.1", port=server.tcp, timeout=QUERY_TIMEOUT)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("loop", LOOPS)
def test_twistd_dns_on_udpio_answers_as_on_epoll(zone: Path, epoll_server: Server, loop: str) -> None:
    """Every query, over UDP and TCP: the same bytes from both servers, and the right answer."""
    server = _start("udpio", zone, loop)
    try:
        for number, (name, rdtype, payload, rcode, expected) in enumerate(QUERIES):
            for transport in ("udp", "tcp"):
                query = _query(name, rdtype, payload, 1000 + number)
                ours = _ask(server, query, transport)
                theirs = _ask(epoll_server, query, transport)
                what = f"{name} {rdtype} over {transport}" + (f" (EDNS {payload})" if payload else "")
                assert ours.wire == theirs.wire, f"{what}:\nudpio:\n{ours}\nepoll:\n{theirs}"
                assert dns.rcode.to_text(ours.rcode()) == rcode, f"{what}:\n{ours}"
                assert not ours.flags & dns.flags.TC, f"{what}:\n{ours}"
                assert expected in ours.to_text(), f"{what}:\n{ours}"
    finally:
        status, log = server.stop()
    assert status == -signal.SIGTERM, log  # twistd ends by the signal that stopped it, on every reactor
    assert "reactor class: udpio.compat._reactor.UdpioReactor" in log, log
    assert "Server Shut Down." in log, log
    assert "Traceback" not in log and "Warning" not in log, log  # -X dev: ResourceWarning would show here
