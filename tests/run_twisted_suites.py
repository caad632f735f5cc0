"""Run Twisted's own reactor test suites on udpio's drop-in reactor and on Twisted's asyncio reactor, side by
side, and fail when udpio's reactor does worse on any test.

    python tests/run_twisted_suites.py [--reactors udpio-uvloop,udpio-asyncio,asyncio] [--suites A,B]
                                       [--jobs N] [--timeout SECONDS] [--results DIR]

Each (suite, reactor) pair is one trial run in a fresh interpreter, inside a network namespace of its own
(``unshare --net``, built as ``run_twisted_udp_suite.py`` builds it: ``lo`` plus a veth pair, multicast routed
to the veth). The namespace keeps every datagram on the machine (Twisted's multicast tests join "any
interface") and keeps the parallel runs from meeting on fixed ports; it dies with the run.

Two kinds of suite:

* ``ReactorBuilder`` suites (``twisted.internet.test.test_*``) ignore ``trial --reactor``: they build a fresh
  reactor per test from ``ReactorBuilder._reactors``, which the runner sets to the one reactor under test
  before trial imports the test module. udpio's factory mirrors Twisted's own asyncio one
  (``reactormixins.asyncioSelectorReactor``: a new loop, current while the test runs, closed after).
* Suites on the global reactor (``twisted.test.test_internet``, ``twisted.names.test``...) get it from
  ``trial --reactor=NAME``; ``udpio`` comes through the installed Twisted plugin (editable or not: see
  compat/twisted_plugin/__init__.py), its loop from ``$UDPIO_LOOP``. Builder suites get the same global
  reactor as the one under test.

Reactors: ``udpio-uvloop`` and ``udpio-asyncio`` (udpio's reactor on either loop), ``asyncio`` (Twisted's
``AsyncioSelectorReactor`` on the standard loop: the reference, always run), ``asyncio-uvloop`` (Twisted's
asyncio reactor on uvloop: a control that shows what uvloop does to Twisted's own reactor) and ``epoll``
(Twisted's Linux default).

The verdict, for each udpio reactor: every test that passes on the reference passes (or is an expected
failure) on it too, and every test that fails or errors on it is in :data:`KNOWN_FAILURES` (tests that fail
on every reactor here, each with its reason). The reactor that ran must be the one asked for. Exit status 0
when all holds, 1 when not, 77 when no namespace can be made (not root, no ``unshare``/``ip``). Trial's
per-test timeout is lowered from 120 s (``--timeout``) so that a test that hangs costs seconds, not minutes,
and each run has a bound of its own (:data:`RUN_TIMEOUT`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # imported as tests.run_twisted_suites (pytest) or run as a script (tests/ is then sys.path[0])
    from . import run_twisted_udp_suite as _namespace
except ImportError:
    import run_twisted_udp_suite as _namespace  # type: ignore[no-redef]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_UNAVAILABLE = _namespace.EXIT_UNAVAILABLE
REFERENCE = "asyncio"
#: Seconds one trial run may take in all, whatever its per-test timeouts: a run that wedges is ended, and
#: its missing results fail the verdict.
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class Suite:
    """A trial test name, whether its tests build their own reactors (``ReactorBuilder``), and its rough
    cost in seconds on a loaded 2-core machine (the longest start first)."""

    name: str
    builder: bool
    cost: float


SUITES = {
    suite.name: suite
    for suite in (
        Suite("twisted.internet.test.test_udp", builder=True, cost=15),
        Suite("twisted.internet.test.test_tcp", builder=True, cost=30),
        Suite("twisted.internet.test.test_process", builder=True, cost=35),
        Suite("twisted.internet.test.test_time", builder=True, cost=8),
        Suite("twisted.internet.test.test_core", builder=True, cost=8),
        Suite("twisted.internet.test.test_threads", builder=True, cost=8),
        Suite("twisted.internet.test.test_unix", builder=True, cost=6),
        Suite("twisted.internet.test.test_tls", builder=True, cost=20),
        Suite("twisted.internet.test.test_sigchld", builder=False, cost=5),
        Suite("twisted.test.test_udp", builder=False, cost=7),
        Suite("twisted.test.test_internet", builder=False, cost=30),
        Suite("twisted.test.test_iutils", builder=False, cost=28),
        Suite("twisted.names.test", builder=False, cost=45),
        # Not run by default: about 4 minutes per reactor here, and two of its tests time out on every
        # reactor on a loaded machine (test_manyProcesses, test_patchSysStdoutWithNone).
        Suite("twisted.test.test_process", builder=False, cost=240),
    )
}
DEFAULT_SUITES = [name for name in SUITES if name != "twisted.test.test_process"]


@dataclass(frozen=True)
class Reactor:
    """How to get one reactor: the ReactorBuilder factory, ``trial --reactor``'s name, ``$UDPIO_LOOP`` (or
    ``None``), and the short name of the reactor class (as ReactorBuilder names its test classes)."""

    factory: str
    trial_name: str
    loop: str | None
    short: str


REACTORS = {
    "udpio-uvloop": Reactor("{runner}.UdpioReactor", "udpio", "uvloop", "UdpioReactor"),
    "udpio-asyncio": Reactor("{runner}.UdpioReactor", "udpio", "asyncio", "UdpioReactor"),
    "asyncio": Reactor(
        "twisted.internet.test.reactormixins.AsyncioSelectorReactor", "asyncio", None, "AsyncioSelectorReactor"
    ),
    "asyncio-uvloop": Reactor("{runner}.AsyncioSelectorReactor", "asyncio", "uvloop", "AsyncioSelectorReactor"),
    "epoll": Reactor("twisted.internet.epollreactor.EPollReactor", "epoll", None, "EPollReactor"),
}
DEFAULT_REACTORS = ["udpio-uvloop", "udpio-asyncio", REFERENCE]

#: Tests that fail on every reactor where this runs (CI: root, Python under /root), so on udpio's too. The
#: ids are normalised (:func:`normalise`); keep the list short and each reason checkable.
KNOWN_FAILURES: dict[str, str] = {
    f"twisted.internet.test.test_process.{builder}_*.test_changeUID": (
        "spawnProcess(uid=1) as root: the child runs as uid 1, which cannot read an interpreter under /root "
        "(mode 0700), so it exits 1 before it can check its uid; fails on every reactor run as root"
    )
    for builder in ("ProcessTestsBuilder", "PTYProcessTestsBuilder")
}

#: Outcomes, best first; a test reported several times (an error in cleanup after a failure) keeps its worst.
OUTCOMES = ("passed", "expected failure", "skipped", "unexpected success", "failed", "error")
PASSING = frozenset({"passed", "expected failure"})
FAILING = frozenset({"unexpected success", "failed", "error"})
#: ReactorBuilder's class names end in ``_<reactor class>Tests``: what :func:`normalise` takes out.
_BUILDER_CLASS = re.compile(r"_([A-Za-z0-9]+Reactor)Tests\.")
#: Reactors a suite's ReactorBuilder names itself, whatever ``_reactors`` says: not a sign of a wrong run.
PINNED = {"GIReactor": "test_time's GlibTimeTestsBuilder (skipped without PyGObject)"}


# -- inside the namespace: one trial run -------------------------------------------------------------------


def _made_current(case: Any, loop: Any) -> None:
    """What Twisted's own asyncio factory does: the new loop is current while the test runs, then closed
    and the previous one restored."""
    import asyncio

    try:
        previous = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        previous = None
    asyncio.set_event_loop(loop)

    def restore() -> None:
        loop.close()
        asyncio.set_event_loop(previous)

    case.addCleanup(restore)


def UdpioReactor(case: Any) -> Any:  # the name becomes the test classes' "_UdpioReactorTests"
    """ReactorBuilder's factory: a new udpio reactor on a new loop of ``$UDPIO_LOOP``'s kind."""
    from udpio.compat import UdpioReactor as Reactor

    import udpio

    loop = udpio.new_event_loop(os.environ["UDPIO_LOOP"])
    _made_current(case, loop)
    return Reactor(loop)


def AsyncioSelectorReactor(case: Any) -> Any:  # the control: Twisted's own asyncio reactor on uvloop
    """ReactorBuilder's factory: Twisted's asyncio reactor on a new loop of ``$UDPIO_LOOP``'s kind."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor as Reactor

    import udpio

    loop = udpio.new_event_loop(os.environ["UDPIO_LOOP"])
    _made_current(case, loop)
    return Reactor(loop)


_outcomes: dict[str, dict[str, str]] = {}


def _recording(base: type[Any]) -> type[Any]:
    """Trial's reporter ``base``, also recording each test's outcome (and the error text) in ``_outcomes``."""

    class Recorder(base):  # type: ignore[misc,valid-type]
        def _record(self, test: Any, outcome: str, detail: str = "") -> None:
            test_id = test.id()
            previous = _outcomes.get(test_id)
            if previous is None or OUTCOMES.index(outcome) > OUTCOMES.index(previous["outcome"]):
                _outcomes[test_id] = {"outcome": outcome, "detail": detail[-4000:]}

        def addSuccess(self, test: Any) -> None:
            super().addSuccess(test)
            self._record(test, "passed")

        def addSkip(self, test: Any, reason: Any) -> None:
            super().addSkip(test, reason)
            self._record(test, "skipped", str(reason))

        def addExpectedFailure(self, test: Any, failure: Any, todo: Any = None) -> None:
            super().addExpectedFailure(test, failure, todo)
            self._record(test, "expected failure")

        def addUnexpectedSuccess(self, test: Any, todo: Any = None) -> None:
            super().addUnexpectedSuccess(test, todo)
            self._record(test, "unexpected success")

        def addFailure(self, test: Any, failure: Any) -> None:
            super().addFailure(test, failure)
            self._record(test, "failed", _text(failure))

        def addError(self, test: Any, error: Any) -> None:
            super().addError(test, error)
            self._record(test, "error", _text(error))

    return Recorder


def _text(failure: Any) -> str:
    from twisted.python.failure import Failure

    if isinstance(failure, tuple):  # (type, value, traceback): unittest's form
        failure = Failure(failure[1], failure[0], failure[2])
    return str(failure.getTraceback()) if isinstance(failure, Failure) else repr(failure)


def _run_trial(suite: Suite, name: str, timeout: float, results: str) -> int:
    """Run ``suite`` on reactor ``name`` in this process; write the outcomes to ``results`` as JSON.
    Returns trial's verdict as an exit status."""
    reactor = REACTORS[name]
    if reactor.loop is not None:
        os.environ["UDPIO_LOOP"] = reactor.loop  # read by the plugin's install() and by the factories above
    if name == "asyncio-uvloop":  # trial's global asyncio reactor makes its loop through the policy
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    from twisted.internet.test import reactormixins
    from twisted.scripts import trial
    from twisted.trial import util

    # Trial reads its default per-test timeout from util at run time; ReactorBuilder.runReactor from its
    # own copy of the name, taken at import.
    util.DEFAULT_TIMEOUT_DURATION = timeout
    reactormixins.DEFAULT_TIMEOUT_DURATION = timeout  # type: ignore[attr-defined]
    # makeTestCaseClasses() reads this list when trial imports the test module, below.
    reactormixins.ReactorBuilder._reactors = [reactor.factory.format(runner=__name__)]

    with tempfile.TemporaryDirectory(prefix="udpio-trial-") as scratch:
        config = trial.Options()
        config.parseOptions(
            [
                f"--reactor={reactor.trial_name}",
                f"--temp-directory={os.path.join(scratch, '_trial_temp')}",
                "--reporter=text",
                suite.name,
            ]
        )
        config["reporter"] = _recording(config["reporter"])
        trial._initialDebugSetup(config)
        result = trial._makeRunner(config).run(trial._getSuite(config))
    from twisted.internet import reactor as global_reactor

    with open(results, "w", encoding="utf-8") as out:
        json.dump({"global_reactor": repr(global_reactor), "tests": _outcomes}, out, indent=1, sort_keys=True)
    return 0 if result.wasSuccessful() else 1


# -- outside: the runs, the table, the verdict -------------------------------------------------------------


@dataclass
class Run:
    """One (suite, reactor) trial run as the parent sees it: outcomes by normalised test id."""

    suite: str
    reactor: str
    status: int = 0
    seconds: float = 0.0
    log: str = ""
    tests: dict[str, dict[str, str]] = field(default_factory=dict)
    global_reactor: str = "?"
    builder_classes: frozenset[str] = frozenset()


def normalise(test_id: str) -> str:
    """The test's id with the reactor's name taken out, so one test on two reactors has one key:
    ``...ProcessTestsBuilder_UdpioReactorTests.test_x`` -> ``...ProcessTestsBuilder_*.test_x``."""
    return _BUILDER_CLASS.sub("_*.", test_id)


def _one(suite: str, reactor: str, timeout: float, directory: str) -> Run:
    results = os.path.join(directory, f"{suite}.{reactor}.json")
    log = os.path.join(directory, f"{suite}.{reactor}.log")
    command = [
        "unshare",
        "--net",
        "--",
        sys.executable,
        os.path.abspath(__file__),
        "--inside",
        suite,
        reactor,
        results,
        f"--timeout={timeout}",
    ]
    run = Run(suite, reactor, log=log)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as output:
        try:
            run.status = subprocess.run(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, timeout=RUN_TIMEOUT, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            run.status = -1
    run.seconds = time.monotonic() - started
    if os.path.exists(results):
        with open(results, encoding="utf-8") as data:
            loaded = json.load(data)
        run.tests = {normalise(name): value for name, value in loaded["tests"].items()}
        run.global_reactor = loaded["global_reactor"]
        run.builder_classes = frozenset(
            match.group(1) for name in loaded["tests"] if (match := _BUILDER_CLASS.search(name))
        )
    return run


def counts(run: Run) -> dict[str, int]:
    """passed / failed / error / skipped, as trial counts them (expected failures pass, unexpected
    successes fail)."""
    tally = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for value in run.tests.values():
        outcome = value["outcome"]
        key = {"expected failure": "passed", "unexpected success": "failed"}.get(outcome, outcome)
        tally[key] += 1
    return tally


def table(runs: dict[tuple[str, str], Run], suites: Sequence[str], reactors: Sequence[str]) -> str:
    """One row per suite, one column per reactor: ``passed/failed/errors/skipped`` and seconds."""
    width = 20
    header = f"{'suite':<30}" + "".join(
        f"{name + (' (ref)' if name == REFERENCE else ''):>{width}}" for name in reactors
    )
    lines = [f"{'':<30}" + f"{'passed/failed/errors/skipped, seconds':>{width * len(reactors)}}", header]
    lines.append("-" * len(header))
    for suite in suites:
        cells = []
        for name in reactors:
            run = runs[suite, name]
            if not run.tests:
                cells.append(f"{'no results':>{width}}")
                continue
            c = counts(run)
            cells.append(f"{c['passed']}/{c['failed']}/{c['error']}/{c['skipped']} {run.seconds:5.1f}s".rjust(width))
        lines.append(f"{suite.removeprefix('twisted.'):<30}" + "".join(cells))
    return "\n".join(lines)


def verdict(runs: dict[tuple[str, str], Run], suites: Sequence[str], reactors: Sequence[str]) -> list[str]:
    """What makes the run fail, one line (and its evidence) each; empty when udpio's reactors are no worse
    than the reference on any test."""
    problems: list[str] = []
    for suite in suites:
        reference = runs[suite, REFERENCE]
        for name in reactors:
            run = runs[suite, name]
            if not run.tests:
                problems.append(f"{suite} on {name}: no results (exit status {run.status}; log: {run.log})")
                continue
            expected = REACTORS[name].short
            others = run.builder_classes - {expected} - PINNED.keys()
            if others:
                problems.append(f"{suite} on {name}: ReactorBuilder ran {sorted(others)} too")
            if SUITES[suite].builder and expected not in run.builder_classes:
                problems.append(f"{suite} on {name}: no ReactorBuilder test ran on {expected}")
            if name.startswith("udpio"):
                wanted = f"<udpio.compat.UdpioReactor on {REACTORS[name].loop}>"
                if run.global_reactor != wanted:
                    problems.append(f"{suite} on {name}: trial's reactor was {run.global_reactor}, not {wanted}")
                problems.extend(_worse(run, reference))
    return problems


def _worse(run: Run, reference: Run) -> list[str]:
    problems = []
    for test_id in sorted(set(reference.tests) | set(run.tests)):
        mine = run.tests.get(test_id, {"outcome": "not run", "detail": ""})
        theirs = reference.tests.get(test_id, {"outcome": "not run", "detail": ""})
        if mine["outcome"] in PASSING:
            continue
        if theirs["outcome"] in PASSING:
            why = f"{mine['outcome']}, passes on {REFERENCE}"
        elif mine["outcome"] in FAILING and test_id not in KNOWN_FAILURES:
            why = f"{mine['outcome']} ({theirs['outcome']} on {REFERENCE}), not a known failure"
        else:
            continue
        evidence = "\n".join("    " + line for line in mine["detail"].splitlines()[-30:])
        problems.append(f"{test_id} on {run.reactor}: {why}" + (f"\n{evidence}" if evidence else ""))
    return problems


def _unavailable() -> str | None:
    reason = _namespace.unavailable()
    if reason is not None:
        return reason
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip()}"
    return None


def _choose(value: str, known: Iterable[str], what: str) -> list[str]:
    chosen = [item for item in value.split(",") if item]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--inside"]:
        inside = argparse.ArgumentParser()
        inside.add_argument("suite", choices=sorted(SUITES))
        inside.add_argument("reactor", choices=sorted(REACTORS))
        inside.add_argument("results")
        inside.add_argument("--timeout", type=float, required=True)
        args = inside.parse_args(argv[1:])
        _namespace._configure_namespace()
        return _run_trial(SUITES[args.suite], args.reactor, args.timeout, args.results)

    parser = argparse.ArgumentParser(prog="run_twisted_suites.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reactors", default=",".join(DEFAULT_REACTORS), help="default: %(default)s")
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES), help="default: all but twisted.test.test_process")
    parser.add_argument("--jobs", type=int, default=4, help="trial runs at once (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-test timeout in seconds (trial's: 120)")
    parser.add_argument("--results", help="keep logs and JSON results here (default: a temporary directory)")
    args = parser.parse_args(argv)
    reactors = _choose(args.reactors, REACTORS, "reactor")
    if REFERENCE not in reactors:
        reactors.append(REFERENCE)
    suites = _choose(args.suites, SUITES, "suite")
    reason = _unavailable()
    if reason is not None:
        print(f"UNAVAILABLE: {reason}", flush=True)
        return EXIT_UNAVAILABLE

    directory = args.results or tempfile.mkdtemp(prefix="udpio-twisted-suites-")  # kept only if it fails
    os.makedirs(directory, exist_ok=True)
    started = time.monotonic()
    jobs = sorted(((s, r) for s in suites for r in reactors), key=lambda job: -SUITES[job[0]].cost)
    runs: dict[tuple[str, str], Run] = {}
    print(f"{len(jobs)} trial runs, {args.jobs} at a time, per-test timeout {args.timeout:g} s", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_one, s, r, args.timeout, directory) for s, r in jobs]
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs[run.suite, run.reactor] = run
            print(f"  {run.suite} on {run.reactor}: {run.seconds:.1f} s", flush=True)
    print()
    print(table(runs, suites, reactors))
    kept = "" if args.results else " (removed unless something fails)"
    print(f"\nwall time {time.monotonic() - started:.1f} s; logs and results: {directory}{kept}")
    known = sorted(
        {
            f"{test_id} on {run.reactor}"
            for run in runs.values()
            if run.reactor.startswith("udpio")
            for test_id, value in run.tests.items()
            if test_id in KNOWN_FAILURES and value["outcome"] in FAILING
        }
    )
    for line in known:
        print(f"known failure (every reactor): {line}")
    problems = verdict(runs, suites, reactors)
    for problem in problems:
        print(f"\nWORSE ON UDPIO: {problem}")
    udpio_runs = [run for run in runs.values() if run.reactor.startswith("udpio")]
    passed = sum(counts(run)["passed"] for run in udpio_runs)
    skipped = sum(counts(run)["skipped"] for run in udpio_runs)
    print(f"\nudpio reactors against {REFERENCE}: {passed} passed, {len(problems)} failed, {skipped} skipped")
    if not problems and not args.results:
        shutil.rmtree(directory)  # nothing to look at: trial's logs matter only when something failed
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
