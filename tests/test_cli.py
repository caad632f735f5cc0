"""The ``udpio`` command line, run as a real subprocess against real loopback sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

PY = [sys.executable, "-m", "udpio"]
TIMEOUT = 30


def udpio(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PY, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)


class Running:
    """A long-running ``udpio`` subcommand; waits for its 'listening on HOST:PORT' line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"listening on \[?([0-9a-f.:]+?)\]?:(\d+)$", line.strip())
        if match is None:
            self.stop()
            raise AssertionError(f"no 'listening on' line, got {line!r}")
        self.host, self.port = match.group(1), int(match.group(2))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out, err


@pytest.fixture
def echo_server() -> Iterator[Running]:
    server = Running("echo", "127.0.0.1", "0")
    try:
        yield server
    finally:
        server.stop()


def test_help_for_every_subcommand() -> None:
    for sub in ("demo", "echo", "send", "listen", "ping"):
        result = udpio(sub, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: udpio" in result.stdout


def test_demo_talks_to_its_echo_server() -> None:
    result = udpio("demo", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("got b'hello #") == 2
    assert "2 in, 2 out, 0 dropped" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_echo_stops_cleanly_with_summary(sig: int) -> None:
    server = Running("echo", "127.0.0.1", "0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"hi", (server.host, server.port))
        assert s.recvfrom(100)[0] == b"hi"
    code, _, err = server.stop(sig)
    assert code == 0, err
    assert "Traceback" not in err
    assert "received 1 datagrams" in err


def test_ping_reports_rtt_and_loss(echo_server: Running) -> None:
    result = udpio("ping", echo_server.host, str(echo_server.port), "-c", "3", "-i", "0.01")
    assert result.returncode == 0, result.stderr
    assert "3 sent, 3 received, 0.0% loss" in result.stderr
    assert re.search(r"rtt min/p50/p99/max = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", result.stderr)


def test_ping_without_server_fails_with_exit_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = udpio("ping", "127.0.0.1", str(port), "-c", "2", "-i", "0.01", "-W", "0.5")
    assert result.returncode == 1
    assert "refused" in result.stdout
    assert "100.0% loss" in result.stderr


def test_send_args_and_stdin_with_replies(echo_server: Running) -> None:
    result = udpio("send", echo_server.host, str(echo_server.port), "one", "two", "--reply", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\tone") == 1 and result.stdout.count("\ttwo") == 1
    result = udpio("send", echo_server.host, str(echo_server.port), "--reply", "5", stdin="a\nb\nc\n")
    assert result.returncode == 0, result.stderr
    assert "3 datagrams sent" in result.stderr and "3 replies" in result.stderr


def test_listen_prints_text_escapes_and_hex() -> None:
    for extra, expected in (([], "caf\u00e9 \\xff\\x00"), (["--hex"], "63 61 66 c3 a9 20 ff 00")):
        listener = Running("listen", "127.0.0.1", "0", "--count", "1", *extra)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto("caf\u00e9 ".encode() + b"\xff\x00", (listener.host, listener.port))
        code, out, err = listener.stop(signal.SIGCONT)  # --count 1 makes it exit by itself
        assert code == 0, err
        assert expected in out, out


def test_ipv6_echo_and_ping() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
    server = Running("echo", "::1", "0", "-6")
    try:
        result = udpio("ping", "::1", str(server.port), "-c", "1")
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["echo", "127.0.0.1", "70000"], 2, "port must be an int in 0..65535, got 70000"),
        (["send", "no-such-host.invalid", "9", "x"], 1, "cannot resolve host 'no-such-host.invalid'"),
        (["ping", "127.0.0.1", "9", "-s", "4"], 2, "--size must be an int >= 12, got 4"),
        (["ping", "127.0.0.1", "9", "-c", "0"], 2, "--count must be an int >= 1, got 0"),
        (["nonsense"], 2, "invalid choice"),
        (["echo", "127.0.0.1", "notaport"], 2, "invalid int value"),
    ],
)
def test_errors_are_one_line_with_exit_code(args: list[str], code: int, message: str) -> None:
    result = udpio(*args)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_exit_1(echo_server: Running) -> None:
    result = udpio("echo", "127.0.0.1", str(echo_server.port))
    assert result.returncode == 1
    assert f"cannot bind UDP socket to ('127.0.0.1', {echo_server.port})" in result.stderr
    assert os.linesep.join(result.stderr.strip().splitlines()).count("\n") == 0
