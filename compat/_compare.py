"""Side by side: run the scenarios on every stack, compare the traces, explain or flag each difference.

Each stack runs in its own process (``python -m udpio.compat._scenarios STACK``: a Twisted reactor can be
installed once per process) and reports a trace per scenario: for each role, the callbacks it saw in order,
datagrams with their content and their sender named by role (ports differ from run to run), errors by type.
The first available stack in :data:`~udpio.compat._scenarios.STACKS` (udpio on the standard loop) is the
reference; every other trace must equal it, or equal what :data:`EXPECTED_DIFFERENCES` says that stack does
instead, with the reason written down. Anything else is an unexplained difference, and so is a scenario
that failed or timed out. ``udpio compare`` prints the traces as a table and exits 1 on an unexplained one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeAlias

from ._scenarios import SCENARIOS, SILENCE_AFTER, STACKS, Event

#: A scenario's trace: role name -> its events, in order.
Roles: TypeAlias = dict[str, list[Event]]

#: Seconds one stack's process may take for all four scenarios (each takes well under a second on loopback;
#: a scenario guard inside the process fires after 20 s).
DEFAULT_TIMEOUT = 90.0
#: Stacks run at the same time: the processes mostly wait on timers, but the machine may be small.
DEFAULT_JOBS = 2
#: Width of one stack's column in the table (longer events are cut with an ellipsis).
COLUMN_WIDTH = 30


def _closed_on_first_refusal(roles: Roles) -> Roles:
    """Twisted epoll/poll: the connected client's port is closed at the first ICMP error, silently."""
    expected = {role: list(events) for role, events in roles.items() if role != "server again"}
    client = expected.get("client", [])
    for index, event in enumerate(client):
        if event[:2] == ("error", "ConnectionRefusedError"):
            expected["client"] = [*client[:index], ("lost", "None")]
            break
    return expected


def _deaf_after_first_refusal(roles: Roles) -> Roles:
    """Twisted's asyncio reactor on uvloop: the first refusal arrives, then the socket is never read again."""
    expected = {role: list(events) for role, events in roles.items() if role != "server again"}
    client = expected.get("client", [])
    for index, event in enumerate(client):
        if event[:2] == ("error", "ConnectionRefusedError"):
            silence = ("silence", f"no error and no loss within {SILENCE_AFTER:g} s")
            expected["client"] = [*client[: index + 1], silence, ("lost", "None")]
            break
    return expected


@dataclasses.dataclass(frozen=True)
class ExpectedDifference:
    """A difference that exists by design or by a known defect of the other stack, with its reason."""

    stacks: frozenset[str]
    scenario: str
    summary: str
    reason: str
    #: The trace this stack gives, made from the reference trace.
    expected: Callable[[Roles], Roles]


#: Every difference the comparison accepts. Each is checked exactly: the stack's trace must be the reference
#: trace transformed as described, event for event; any other deviation is unexplained.
EXPECTED_DIFFERENCES: tuple[ExpectedDifference, ...] = (
    ExpectedDifference(
        stacks=frozenset({"twisted-epoll"}),
        scenario="connected",
        summary="the connected client's port closes silently at the first ICMP port-unreachable: no "
        "connectionRefused, no second refusal, and the peer that comes back is never reached",
        reason="Twisted's epoll and poll reactors treat the socket's error event (EPOLLERR, which an ICMP "
        "error raises) as a lost connection and close the port instead of calling doRead, so connectionRefused "
        "is never called (Twisted #5377, #6287, #6467, open since 2011). Twisted's select and asyncio reactors "
        "call connectionRefused and keep the port, and so does udpio everywhere, including its drop-in reactor.",
        expected=_closed_on_first_refusal,
    ),
    ExpectedDifference(
        stacks=frozenset({"twisted-asyncio-uvloop"}),
        scenario="connected",
        summary="after the first ICMP port-unreachable the connected client's port is never read again: the "
        "second refusal is not reported (silence), and the peer that comes back is never heard",
        reason="libuv stops a poll watcher when it reports POLLERR (src/unix/poll.c, uv__poll_io) and uvloop "
        "then drops the reader without a word, so Twisted's asyncio reactor, which reads UDP ports through "
        "add_reader, goes deaf on that socket. udpio's transport re-registers its reader after each error on "
        "uvloop, so udpio and its drop-in reactor (also on uvloop) keep reading.",
        expected=_deaf_after_first_refusal,
    ),
)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One stack's result for one scenario, compared with the reference."""

    stack: str
    scenario: str
    kind: Literal["same", "documented", "unexplained", "unavailable"]
    detail: str = ""
    reason: str = ""


@dataclasses.dataclass
class Comparison:
    """Results of every stack and the findings; :attr:`ok` is false on any unexplained difference."""

    results: dict[str, dict[str, Any]]
    references: dict[str, str]
    findings: list[Finding]

    @property
    def unexplained(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "unexplained"]

    @property
    def documented(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "documented"]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "references": self.references,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "results": self.results,
        }


# -- running -----------------------------------------------------------------------------------------------


async def run_stack(stack: str, scenarios: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run ``scenarios`` on ``stack`` in a child process; its result, or a ``"failed"`` one saying why."""
    args = [sys.executable, "-m", "udpio.compat._scenarios", stack]
    for name in scenarios:
        args += ["--scenario", name]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes on Python 3.10
        return _failed(stack, f"its process did not finish within {timeout:g} s")
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave the child behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    stderr_tail = err.decode(errors="replace").strip().splitlines()[-5:]
    if proc.returncode != 0:
        return _failed(stack, f"its process exited with {proc.returncode}: " + " | ".join(stderr_tail))
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError:
        return _failed(stack, "its process printed no JSON result: " + " | ".join(stderr_tail))
    return result


def _failed(stack: str, reason: str) -> dict[str, Any]:
    return {"stack": stack, "status": "failed", "reason": reason, "scenarios": {}}


async def collect(
    stacks: Sequence[str] = STACKS,
    scenarios: Sequence[str] = SCENARIOS,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = DEFAULT_JOBS,
) -> dict[str, dict[str, Any]]:
    """Run every stack (``jobs`` at a time), each in its own process; results keyed by stack, in order."""
    limit = asyncio.Semaphore(max(1, jobs))

    async def one(stack: str) -> dict[str, Any]:
        async with limit:
            return await run_stack(stack, scenarios, timeout)

    results = await asyncio.gather(*(one(stack) for stack in stacks))
    return dict(zip(stacks, results, strict=True))


# -- comparing ---------------------------------------------------------------------------------------------


def _roles(result: dict[str, Any], scenario: str) -> Roles | None:
    """A scenario's trace with events as tuples, or ``None`` if it did not run to the end."""
    entry = result.get("scenarios", {}).get(scenario)
    if entry is None or entry.get("status") != "ok":
        return None
    return {role: [tuple(event) for event in events] for role, events in entry["roles"].items()}


def _status(result: dict[str, Any], scenario: str) -> tuple[str, str]:
    if result.get("status") != "ok":
        return result.get("status", "failed"), result.get("reason", "")
    entry = result.get("scenarios", {}).get(scenario)
    if entry is None:
        return "failed", "no result for this scenario"
    return entry.get("status", "failed"), entry.get("reason", "")


def first_difference(reference: Roles, actual: Roles) -> str:
    """Where two traces part, in words."""
    for role in [*reference, *(r for r in actual if r not in reference)]:
        ref, act = reference.get(role), actual.get(role)
        if ref is None:
            return f"{role}: extra role, not in the reference"
        if act is None:
            return f"{role}: role missing (reference has {len(ref)} events)"
        for index in range(max(len(ref), len(act))):
            a = event_text(act[index]) if index < len(act) else "(nothing)"
            r = event_text(ref[index]) if index < len(ref) else "(nothing)"
            if a != r:
                return f"{role} #{index + 1}: {a!r} where the reference has {r!r}"
    return "identical"


def compare(
    results: dict[str, dict[str, Any]],
    scenarios: Iterable[str] = SCENARIOS,
    expected: Sequence[ExpectedDifference] = EXPECTED_DIFFERENCES,
) -> Comparison:
    """Compare every stack's traces with the reference stack's, scenario by scenario."""
    findings: list[Finding] = []
    references: dict[str, str] = {}
    for scenario in scenarios:
        reference_stack = next((s for s, r in results.items() if _status(r, scenario)[0] == "ok"), None)
        for stack, result in results.items():
            status, reason = _status(result, scenario)
            if status == "unavailable":
                findings.append(Finding(stack, scenario, "unavailable", reason))
            elif status != "ok":
                findings.append(Finding(stack, scenario, "unexplained", f"{status}: {reason}"))
        if reference_stack is None:
            continue
        references[scenario] = reference_stack
        reference = _roles(results[reference_stack], scenario)
        assert reference is not None  # chosen above because its status is ok
        for stack, result in results.items():
            actual = _roles(result, scenario)
            if actual is None or stack == reference_stack:
                if stack == reference_stack:
                    findings.append(Finding(stack, scenario, "same", "reference"))
                continue
            if actual == reference:
                findings.append(Finding(stack, scenario, "same"))
                continue
            candidates = (e for e in expected if stack in e.stacks and e.scenario == scenario)
            match = next((e for e in candidates if e.expected(reference) == actual), None)
            if match is not None:
                findings.append(Finding(stack, scenario, "documented", match.summary, match.reason))
            else:
                findings.append(Finding(stack, scenario, "unexplained", first_difference(reference, actual)))
    return Comparison(results, references, findings)


# -- presenting --------------------------------------------------------------------------------------------


def event_text(event: Sequence[str]) -> str:
    """One event as a table cell: ``made``, ``recv b'hello' < server``, ``error ConnectionRefusedError``."""
    kind, *details = event
    if kind == "recv" and len(details) == 2:
        return f"recv {details[0]} < {details[1]}"
    if kind == "lost" and details == ["None"]:
        return "lost"
    if kind == "silence":
        return "silence"
    return " ".join([kind, *details])


def _cell(text: str, mark: str) -> str:
    text = f"{mark}{text}" if mark else text
    if len(text) > COLUMN_WIDTH:
        text = text[: COLUMN_WIDTH - 1] + "…"
    return text.ljust(COLUMN_WIDTH)


def format_table(comparison: Comparison) -> str:
    """The traces side by side, one block per scenario; ``~`` marks a documented difference, ``!`` another."""
    lines: list[str] = []
    results = comparison.results
    stacks = list(results)
    kinds = {(f.stack, f.scenario): f.kind for f in comparison.findings}
    scenarios = list(dict.fromkeys(f.scenario for f in comparison.findings))
    for scenario in scenarios:
        reference_stack = comparison.references.get(scenario)
        lines.append(f"== {scenario}" + (f" (reference: {reference_stack})" if reference_stack else ""))
        lines.append(" ".join(["role".ljust(16), *(s.ljust(COLUMN_WIDTH) for s in stacks)]).rstrip())
        traces = {s: _roles(results[s], scenario) for s in stacks}
        reference = traces.get(reference_stack) if reference_stack else None
        roles = list(dict.fromkeys(role for t in traces.values() if t for role in t))
        for role in roles:
            length = max(len(t.get(role, [])) for t in traces.values() if t)
            for index in range(length):
                cells = []
                for stack in stacks:
                    trace = traces[stack]
                    if trace is None:
                        status, _ = _status(results[stack], scenario)
                        cells.append(_cell(f"({status})" if index == 0 and role == roles[0] else "", ""))
                        continue
                    events = trace.get(role, [])
                    text = event_text(events[index]) if index < len(events) else ""
                    ref_events = reference.get(role, []) if reference else []
                    ref_text = event_text(ref_events[index]) if index < len(ref_events) else ""
                    kind = kinds.get((stack, scenario))
                    mark = "" if text == ref_text else ("~ " if kind == "documented" else "! ")
                    cells.append(_cell(text or ("-" if mark else ""), mark))
                label = role if index == 0 else ""
                lines.append(" ".join([label.ljust(16), *cells]).rstrip())
        lines.append("")
    return "\n".join(lines)


def format_findings(comparison: Comparison) -> str:
    """The differences found, documented ones with their reason, and what did not run."""
    lines: list[str] = []
    for f in comparison.findings:
        if f.kind == "unavailable":
            lines.append(f"skipped {f.stack} / {f.scenario}: {f.detail}")
    for f in comparison.documented:
        lines.append(f"documented difference, {f.stack} / {f.scenario}: {f.detail}")
        lines.append(f"    why: {f.reason}")
    for f in comparison.unexplained:
        lines.append(f"UNEXPLAINED difference, {f.stack} / {f.scenario}: {f.detail}")
    compared = sum(1 for f in comparison.findings if f.kind in ("same", "documented", "unexplained"))
    lines.append(
        f"{compared} stack/scenario runs compared: {len(comparison.documented)} documented difference(s), "
        f"{len(comparison.unexplained)} unexplained"
    )
    return "\n".join(lines)
