"""The side-by-side harness on the four scenarios across every available stack, ``udpio compare``, and the
tutorial's corrected scripts under Twisted's reactor and under ``python -m udpio.compat``.

Every stack runs in its own child process (a Twisted reactor is installed once per process); each child is
started with a timeout and killed if it overruns.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("twisted")

from udpio.compat import _compare
from udpio.compat._scenarios import SCENARIOS, STACKS

import udpio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "compat" / "examples"
#: Seconds a child process may take (the scenarios take about a second per stack; the machine may be busy).
CHILD_TIMEOUT = 60


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """One real run of every stack and scenario, shared by the tests that read it."""
    return udpio.run(_compare.collect(STACKS, SCENARIOS, timeout=CHILD_TIMEOUT), loop="asyncio")


def _kinds(comparison: _compare.Comparison) -> dict[tuple[str, str], str]:
    return {(f.stack, f.scenario): f.kind for f in comparison.findings}


def _runner_available() -> bool:
    import udpio.compat

    return hasattr(udpio.compat, "install") and importlib.util.find_spec("udpio.compat.__main__") is not None


# -- the harness on real runs -------------------------------------------------------------------------------


def test_no_unexplained_difference_across_stacks(results: dict[str, dict[str, Any]]) -> None:
    comparison = _compare.compare(results)
    assert comparison.ok, _compare.format_findings(comparison)
    kinds = _kinds(comparison)
    for scenario in SCENARIOS:
        assert comparison.references[scenario] == "udpio-asyncio"
        for stack in ("udpio-uvloop", "twisted-asyncio", "udpio-twisted-api"):
            assert kinds[(stack, scenario)] == "same", (stack, scenario)
    for scenario in ("echo", "adopt", "multicast"):
        assert kinds[("twisted-epoll", scenario)] == "same"
        assert kinds[("twisted-asyncio-uvloop", scenario)] == "same"
    # The two known defects show up, and match their documented shape event for event.
    assert kinds[("twisted-epoll", "connected")] == "documented"
    assert kinds[("twisted-asyncio-uvloop", "connected")] == "documented"
    reactor = results["udpio-reactor"]
    if reactor["status"] == "unavailable":
        assert all(kinds[("udpio-reactor", s)] == "unavailable" for s in SCENARIOS)
    else:  # the drop-in reactor must behave exactly like udpio: connectionRefused every time, port kept
        assert all(kinds[("udpio-reactor", s)] == "same" for s in SCENARIOS)


def test_reference_traces_show_the_tutorials_behaviour(results: dict[str, dict[str, Any]]) -> None:
    scenarios = results["udpio-asyncio"]["scenarios"]
    echo = scenarios["echo"]["roles"]
    assert ["recv", "b'raise'", "client"] in echo["server"]  # the handler raised, the endpoint kept serving
    assert echo["client"][-2] == ["recv", "b'hello 2'", "server"]
    assert ["recv", "b''", "server"] in echo["client"]
    assert ["bound", "prebuilt socket"] in scenarios["adopt"]["roles"]["adopted"]
    client = scenarios["connected"]["roles"]["client"]
    assert client.count(["error", "ConnectionRefusedError"]) == 2
    assert ["recv", "b'stranger'", "stranger"] not in client  # the kernel filters a connected port
    assert client[-2] == ["recv", "b'hello again'", "server"]  # the port survived both refusals
    notifier = scenarios["multicast"]["roles"]["notifier"]
    assert notifier.count(["recv", "b'Acknowledge'", "members"]) == 2


def test_an_unexplained_difference_is_flagged(results: dict[str, dict[str, Any]]) -> None:
    tampered = copy.deepcopy(results)
    events = tampered["udpio-uvloop"]["scenarios"]["echo"]["roles"]["client"]
    events[2] = ["recv", "b'something else'", "server"]
    comparison = _compare.compare(tampered)
    assert not comparison.ok
    (finding,) = comparison.unexplained
    assert (finding.stack, finding.scenario) == ("udpio-uvloop", "echo")
    assert finding.detail.startswith("client #3:")
    assert "b'something else'" in finding.detail


def test_a_documented_difference_must_match_exactly(results: dict[str, dict[str, Any]]) -> None:
    """twisted-epoll's difference is accepted only in its documented shape: one more event breaks it."""
    tampered = copy.deepcopy(results)
    tampered["twisted-epoll"]["scenarios"]["connected"]["roles"]["client"].insert(-1, ["error", "OSError"])
    comparison = _compare.compare(tampered)
    assert [(f.stack, f.scenario) for f in comparison.unexplained] == [("twisted-epoll", "connected")]


def test_a_failed_stack_is_unexplained(results: dict[str, dict[str, Any]]) -> None:
    tampered = copy.deepcopy(results)
    tampered["twisted-asyncio"] = {"stack": "twisted-asyncio", "status": "failed", "reason": "crashed", "scenarios": {}}
    tampered["udpio-uvloop"]["scenarios"]["adopt"]["status"] = "timeout"
    comparison = _compare.compare(tampered)
    flagged = {(f.stack, f.scenario) for f in comparison.unexplained}
    assert {("twisted-asyncio", s) for s in SCENARIOS} | {("udpio-uvloop", "adopt")} == flagged


def test_table_marks_documented_cells(results: dict[str, dict[str, Any]]) -> None:
    table = _compare.format_table(_compare.compare(results))
    assert "== connected (reference: udpio-asyncio)" in table
    assert "~ lost" in table  # twisted-epoll's silent close, marked as documented
    assert "! " not in table


async def test_a_child_that_overruns_is_killed_and_reported() -> None:
    result = await _compare.run_stack("udpio-asyncio", ["connected"], timeout=0.01)
    assert result["status"] == "failed" and "did not finish" in result["reason"]


# -- the CLI ------------------------------------------------------------------------------------------------


def test_udpio_compare_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "udpio", "compare", "--stack", "udpio-asyncio", "--stack", "twisted-epoll",
         "--scenario", "connected"],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT * 2, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "udpio-asyncio" in proc.stdout and "twisted-epoll" in proc.stdout
    assert "documented difference, twisted-epoll / connected" in proc.stdout
    assert "#5377" in proc.stdout
    assert "0 unexplained" in proc.stdout


def test_udpio_compare_cli_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "udpio", "compare", "--json", "--stack", "udpio-uvloop", "--scenario", "echo"],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT * 2, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    assert data["results"]["udpio-uvloop"]["scenarios"]["echo"]["status"] == "ok"


def test_udpio_compare_without_twisted_is_a_clear_usage_error() -> None:
    """Twisted made unimportable: the core CLI still loads, and the command names the extra to install."""
    code = (
        "import sys; sys.modules['twisted'] = None\n"
        "from udpio._cli import main\n"
        "sys.exit(main(['compare']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )
    assert proc.returncode == 2
    assert "udpio[twisted]" in proc.stderr


def test_importing_udpio_and_its_cli_never_imports_twisted() -> None:
    code = (
        "import sys, udpio, udpio._cli, udpio._cli.compare\n"
        "udpio._cli.build_parser()\n"
        "sys.exit(any(m == 'twisted' or m.startswith('twisted.') for m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr


# -- the tutorial's scripts, corrected ------------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_example(runner: str, script: str, *args: str) -> str:
    if runner == "udpio" and not _runner_available():
        pytest.skip("python -m udpio.compat (the drop-in reactor's runner, issue 6 part 1) is not built yet")
    prefix = [sys.executable] if runner == "twisted" else [sys.executable, "-m", "udpio.compat"]
    # --duration caps every run even if the awaited datagrams never came; the timeout caps the process.
    command = [*prefix, str(EXAMPLES / script), "--port", "0", "--duration", "20", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if runner == "udpio":
        assert "EPollReactor" not in proc.stdout  # really on the drop-in reactor
    return proc.stdout


RUNNERS = ["twisted", "udpio"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_echo(runner: str) -> None:
    out = _run_example(runner, "echo.py", "--interval", "0.05", "--count", "3")
    assert out.count("hello, i am") == 3
    assert "received 3 datagrams, stopping" in out


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_adopt(runner: str) -> None:
    out = _run_example(runner, "adopt.py", "--interval", "0.05", "--count", "3")
    assert "adopted a socket bound to 127.0.0.1:" in out
    assert out.count("hello, i am") == 3


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_connected_to_itself(runner: str) -> None:
    out = _run_example(runner, "connected.py", "--interval", "0.05", "--count", "3")
    assert out.count("received: hello, i am") == 3
    assert out.rstrip().endswith("connection closed")


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_connected_refused(runner: str) -> None:
    out = _run_example(
        runner, "connected.py", "--peer-port", str(_dead_port()), "--interval", "0.05", "--count", "2"
    )
    if runner == "twisted":
        # Twisted's default reactor on Linux (epoll) closes the port at the first refusal, silently.
        assert "EPollReactor" in out
        assert "connection refused" not in out
    else:
        # The drop-in reactor: connectionRefused each time, and the port stays open until we stop it.
        assert out.count("send failed: connection refused") == 2
        assert "2 events, stopping" in out
    assert out.rstrip().endswith("connection closed")


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_multicast(runner: str) -> None:
    out = _run_example(runner, "multicast.py", "--count", "1")
    assert "joined 239.255.0.1 on 127.0.0.1" in out
    assert "datagram b'Notify' received from ('127.0.0.1'," in out
    assert "datagram b'Acknowledge' received from ('127.0.0.1'," in out
    assert "1 acknowledgement(s), stopping" in out
