"""Processes and signals on the drop-in reactor (``python -m udpio.compat``), on both loops.

Each test runs a small Twisted program in a fresh interpreter through the runner users run, because what is
under test is process-wide state (SIGCHLD's disposition, the signal wake-up descriptor) that a test inside
pytest's process would share with everything else.

The children synchronise on events, not on time: a child closes its pipes, then waits for SIGUSR1, which the
program sends on the turn after Twisted saw the last pipe close (and tried, too early, to reap it); the exit
that follows is then something only SIGCHLD or the child's pidfd can report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("twisted")

from udpio.compat._reactor import SIGCHLD_ONLY_ON_UVLOOP

import udpio

REPO = Path(__file__).resolve().parent.parent
UVLOOP = udpio._loop.uvloop_available()
#: ``None``: the default reactor (``python -m udpio.compat`` with no ``--loop``: uvloop when installed), then
#: the standard loop when the default is not already it.
LOOPS = [None, "asyncio"] if UVLOOP else [None]
CHILD_TIMEOUT = 60
#: How long the program waits for processEnded before it says it never came (the event takes milliseconds).
GIVE_UP = 20

#: A child that closes every pipe Twisted gave it, then exits 0 when told (SIGUSR1). Its handler is in place
#: before the pipes close, and the program signals only after it saw them close: no race.
CHILD = """
import os, signal
signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
for fd in (0, 1, 2):
    os.close(fd)
while True:
    signal.pause()
"""

PROGRAM = """
import signal
import sys
from twisted.internet import reactor, protocol

CHILD = {child!r}
GIVE_UP = {give_up}


class Child(protocol.ProcessProtocol):
    closed = 0

    def childConnectionLost(self, fd):
        self.closed += 1
        if self.closed == 3:  # every pipe closed, the child still running: only its exit is left to see
            print("pipes closed", flush=True)
            # On the next turn: right after this callback Twisted tries one waitpid() of its own (the pipes
            # are all closed), which must find the child still running, or the test proves nothing.
            # A number: Twisted's signalProcess names only KILL, TERM and INT.
            reactor.callLater(0, self.transport.signalProcess, signal.SIGUSR1)

    def processEnded(self, reason):
        print("processEnded", type(reason.value).__name__, reason.value.exitCode, flush=True)
        reactor.stop()


def spawn():
    reactor.spawnProcess(Child(), sys.executable, [sys.executable, "-c", CHILD], env=None)


def give_up():
    print("no processEnded after", GIVE_UP, "s", flush=True)
    reactor.stop()


{setup}
reactor.callLater(GIVE_UP, give_up)
print(repr(reactor), flush=True)
reactor.run()
"""


def _run(tmp_path: Path, loop: str | None, setup: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM.format(child=CHILD, give_up=GIVE_UP, setup=textwrap.dedent(setup)))
    command = [sys.executable, "-X", "dev", "-m", "udpio.compat", *(["--loop", loop] if loop else []), str(script)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
        env={**os.environ, "UDPIO_LOOP": ""},  # the runner's own default when no --loop is given
        check=False,
    )


def _expected_loop(loop: str | None) -> str:
    return loop or ("uvloop" if UVLOOP else "asyncio")


def _assert_ended(proc: subprocess.CompletedProcess[str], loop: str | None, warned: bool = False) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"<udpio.compat.UdpioReactor on {_expected_loop(loop)}>" in proc.stdout, output
    assert "pipes closed" in proc.stdout, output
    assert "processEnded ProcessDone 0" in proc.stdout, output
    stderr = proc.stderr.replace(f"RuntimeWarning: {SIGCHLD_ONLY_ON_UVLOOP}", "") if warned else proc.stderr
    assert (stderr != proc.stderr) == warned, output
    assert "Warning" not in stderr, output  # -X dev: no ResourceWarning, no unclosed descriptor


@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: loop or "default")
def test_child_that_closes_its_pipes_before_exiting_gets_processEnded(tmp_path: Path, loop: str | None) -> None:
    """Regression (issue 14): on uvloop the child's exit was never reported. uvloop points the signal
    wake-up descriptor at its own socket while it runs, so Twisted's SIGCHLD pipe never heard of the exit,
    and Twisted otherwise notices one only when the pipes close after it."""
    _assert_ended(_run(tmp_path, loop, "reactor.callWhenRunning(spawn)"), loop)


@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: loop or "default")
def test_processEnded_through_sigchld_alone(tmp_path: Path, loop: str | None) -> None:
    """The SIGCHLD path by itself (pidfds turned off, as on a platform without them): the reactor's Python
    SIGCHLD handler wakes it even though uvloop holds the wake-up descriptor. On uvloop the reactor says,
    once, that this child depends on SIGCHLD alone, and what that means."""
    setup = """
        import udpio.compat._children
        udpio.compat._children.HAVE_PIDFD = False
        reactor.callWhenRunning(spawn)
    """
    _assert_ended(_run(tmp_path, loop, setup), loop, warned=_expected_loop(loop) == "uvloop")


def test_sigchld_after_asyncio_moved_the_wakeup_descriptor_on_the_standard_loop(tmp_path: Path) -> None:
    """The standard loop takes the signal wake-up descriptor too, once asyncio code calls
    ``add_signal_handler``: Twisted's SIGCHLD pipe then hears nothing (Twisted's own asyncio reactor loses the
    exit). The reactor's Python handler still wakes it (pidfds off, to test that path alone)."""
    setup = """
        import asyncio
        import udpio.compat._children
        udpio.compat._children.HAVE_PIDFD = False

        def start():
            asyncio.get_event_loop().add_signal_handler(signal.SIGUSR2, lambda: None)
            spawn()

        reactor.callWhenRunning(start)
    """
    _assert_ended(_run(tmp_path, "asyncio", setup), "asyncio")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd_open(2) on this platform")
@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: loop or "default")
def test_processEnded_after_asyncio_ran_a_subprocess_on_the_same_loop(tmp_path: Path, loop: str | None) -> None:
    """Once uvloop has run a subprocess of its own, libuv owns SIGCHLD (its C handler replaces Python's, then
    ``SIG_DFL`` when its child is gone): no Python SIGCHLD handler runs again. The pidfd still reports."""
    setup = """
        import asyncio

        async def asyncio_child():
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
            print("asyncio child exited", await proc.wait(), flush=True)
            spawn()

        reactor.callWhenRunning(lambda: asyncio.ensure_future(asyncio_child()))
    """
    proc = _run(tmp_path, loop, setup)
    assert "asyncio child exited 0" in proc.stdout, proc.stdout + proc.stderr
    _assert_ended(proc, loop)


@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: loop or "default")
def test_spawn_before_run_is_reaped(tmp_path: Path, loop: str | None) -> None:
    """A child started before ``reactor.run()`` (its pidfd registered before the loop runs) is reaped too."""
    _assert_ended(_run(tmp_path, loop, "spawn()"), loop)


# -- signals that stop the reactor ---------------------------------------------------------------------------

STOPPABLE = """
from twisted.internet import reactor

reactor.addSystemEventTrigger("before", "shutdown", lambda: print("shutting down", flush=True))
reactor.callWhenRunning(lambda: print("running", repr(reactor), flush=True))
reactor.callLater({give_up}, lambda: (print("no signal seen", flush=True), reactor.stop()))
reactor.run()
print("exit signal", reactor._exitSignal, flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: loop or "default")
def test_sigterm_and_sigint_stop_the_reactor_as_on_twisted(
    tmp_path: Path, loop: str | None, signum: signal.Signals
) -> None:
    """Twisted's handlers run on either loop: shutdown triggers fire, ``run()`` returns, and the reactor
    remembers the signal (``_exitSignal``, which twistd uses to exit by the same signal)."""
    script = tmp_path / "stoppable.py"
    script.write_text(STOPPABLE.format(give_up=GIVE_UP))
    command = [sys.executable, "-X", "dev", "-m", "udpio.compat", *(["--loop", loop] if loop else []), str(script)]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "UDPIO_LOOP": ""},
    ) as child:
        assert child.stdout is not None
        first = child.stdout.readline()  # the reactor runs: its handlers are installed
        assert first.startswith(f"running <udpio.compat.UdpioReactor on {_expected_loop(loop)}>"), first
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == 0, stdout + stderr
    assert "shutting down" in stdout, stdout + stderr
    assert f"exit signal {int(signum)}" in stdout, stdout + stderr
    assert "Warning" not in stderr, stderr
