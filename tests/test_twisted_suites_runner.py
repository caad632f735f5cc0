"""``tests/run_twisted_suites.py``, the CI gate that runs Twisted's reactor suites on udpio's reactor next to
Twisted's asyncio reactor: its verdict on made-up results (each way it can fail), and one real run of a small
suite end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import udpio

from . import run_twisted_suites as runner

SUITE = "twisted.internet.test.test_process"
BUILDER_ID = "twisted.internet.test.test_process.ProcessTestsBuilder_{}Tests.test_{}"


def _run(reactor: str, outcomes: dict[str, str], *, global_reactor: str | None = None) -> runner.Run:
    short = runner.REACTORS[reactor].short
    tests = {
        runner.normalise(BUILDER_ID.format(short, name)): {"outcome": outcome, "detail": f"{name} on {reactor}"}
        for name, outcome in outcomes.items()
    }
    loop = runner.REACTORS[reactor].loop
    return runner.Run(
        SUITE,
        reactor,
        tests=tests,
        global_reactor=global_reactor or f"<udpio.compat.UdpioReactor on {loop}>",
        builder_classes=frozenset({short}),
    )


def _verdict(reference: dict[str, str], udpio: dict[str, str], **kwargs: str) -> list[str]:
    runs = {
        (SUITE, "asyncio"): _run("asyncio", reference, global_reactor="<AsyncioSelectorReactor>"),
        (SUITE, "udpio-uvloop"): _run("udpio-uvloop", udpio, **kwargs),
    }
    return runner.verdict(runs, [SUITE], ["udpio-uvloop", "asyncio"])


def test_normalise_takes_the_reactor_out_of_builder_ids() -> None:
    for short in ("UdpioReactor", "AsyncioSelectorReactor", "EPollReactor"):
        assert runner.normalise(BUILDER_ID.format(short, "x")) == f"{SUITE}.ProcessTestsBuilder_*.test_x"
    assert runner.normalise("twisted.test.test_udp.UDPTests.test_x") == "twisted.test.test_udp.UDPTests.test_x"


def test_same_results_pass() -> None:
    same = {"a": "passed", "b": "skipped", "c": "expected failure"}
    assert _verdict(same, same) == []


def test_a_test_passing_on_the_reference_only_fails_the_run() -> None:
    problems = _verdict({"a": "passed", "b": "passed"}, {"a": "passed", "b": "error"})
    assert len(problems) == 1
    assert "ProcessTestsBuilder_*.test_b on udpio-uvloop: error, passes on asyncio" in problems[0]
    assert "b on udpio-uvloop" in problems[0]  # the evidence (trial's traceback) comes with it


def test_skipped_or_missing_where_the_reference_passes_fails_the_run() -> None:
    problems = _verdict({"a": "passed", "b": "passed"}, {"a": "skipped"})
    assert [problem.split(": ", 1)[1].splitlines()[0] for problem in problems] == [
        "skipped, passes on asyncio",
        "not run, passes on asyncio",
    ]


def test_a_failure_on_every_reactor_fails_the_run_unless_known() -> None:
    problems = _verdict({"mystery": "failed"}, {"mystery": "failed"})
    assert len(problems) == 1 and "failed (failed on asyncio), not a known failure" in problems[0]
    known = {"changeUID": "failed"}
    assert f"{SUITE}.ProcessTestsBuilder_*.test_changeUID" in runner.KNOWN_FAILURES
    assert _verdict(known, known) == []


def test_the_wrong_reactor_fails_the_run() -> None:
    problems = _verdict({"a": "passed"}, {"a": "passed"}, global_reactor="<EPollReactor>")
    assert problems == [
        f"{SUITE} on udpio-uvloop: trial's reactor was <EPollReactor>, not <udpio.compat.UdpioReactor on uvloop>"
    ]
    runs = {(SUITE, "asyncio"): _run("asyncio", {"a": "passed"}), (SUITE, "udpio-uvloop"): _run("udpio-uvloop", {})}
    runs[SUITE, "udpio-uvloop"].builder_classes = frozenset({"SelectReactor"})
    runs[SUITE, "udpio-uvloop"].tests = runs[SUITE, "asyncio"].tests
    problems = runner.verdict(runs, [SUITE], ["udpio-uvloop", "asyncio"])
    assert f"{SUITE} on udpio-uvloop: ReactorBuilder ran ['SelectReactor'] too" in problems
    assert f"{SUITE} on udpio-uvloop: no ReactorBuilder test ran on UdpioReactor" in problems


def test_a_run_without_results_fails_the_run() -> None:
    runs = {
        (SUITE, "asyncio"): _run("asyncio", {"a": "passed"}),
        (SUITE, "udpio-uvloop"): runner.Run(SUITE, "udpio-uvloop", status=-1),
    }
    problems = runner.verdict(runs, [SUITE], ["udpio-uvloop", "asyncio"])
    assert len(problems) == 1 and "no results (exit status -1" in problems[0]


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_a_small_suite_end_to_end(tmp_path: Path) -> None:
    """Twisted's SIGCHLD tests, on udpio's reactor over uvloop (the standard loop without uvloop) and on the
    reference: the table shows both, and the verdict passes."""
    reactor = "udpio-uvloop" if udpio._loop.uvloop_available() else "udpio-asyncio"
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(runner.__file__)),
            "--suites=twisted.internet.test.test_sigchld",
            f"--reactors={reactor}",
            f"--results={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    if proc.returncode == runner.EXIT_UNAVAILABLE:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "internet.test.test_sigchld" in proc.stdout
    assert f"{reactor}" in proc.stdout and "asyncio (ref)" in proc.stdout
    assert "udpio reactors against asyncio: 4 passed, 0 failed, 0 skipped" in proc.stdout, proc.stdout
