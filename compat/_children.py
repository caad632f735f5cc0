"""How the drop-in reactor learns that a child process exited, on uvloop as on the standard loop.

Twisted learns it from SIGCHLD: a byte that ``signal.set_wakeup_fd`` writes into the pipe of its
``_SIGCHLDWaker``, whose reader reaps the children (``process.reapAllProcesses``), which calls
``processEnded``. Two things break that when uvloop runs the loop:

* There is one signal wake-up descriptor per process, and uvloop points it at its own socket whenever its
  loop runs, restoring Twisted's only when the loop stops. It must: libuv's ``epoll_wait`` resumes after a
  signal without returning to Python, so only a descriptor libuv watches can wake it to run Python's signal
  handlers. The C-level byte for SIGCHLD then reaches uvloop, never Twisted's pipe, and a child is reaped
  only if its pipes happen to close after it exits. (The standard loop moves the descriptor too, as soon as
  anything calls ``loop.add_signal_handler``.)
* libuv owns SIGCHLD once uvloop runs a subprocess of its own (``asyncio.create_subprocess_exec`` on the
  shared loop): ``uv_spawn`` installs libuv's C handler in place of Python's, and sets ``SIG_DFL`` when its
  last child is gone (``uv__signal_unregister_handler``). From then on no Python SIGCHLD handler runs at all.
  uvloop refuses ``add_signal_handler(SIGCHLD, ...)`` for that reason ("it is used by the event loop to track
  subprocesses").

So the reactor does not depend on SIGCHLD for the children it starts: on Linux (5.3 and later) each child
of ``spawnProcess`` gets a pidfd (``pidfd_open(2)``), a descriptor that becomes readable when the child exits,
watched like any other; its event reaps that child. No signal is involved, so it works whoever owns SIGCHLD
and the wake-up descriptor. :class:`ChildSignals` keeps Twisted's SIGCHLD handling for everything else
(a platform without pidfds, a kernel or sandbox that refuses them, a ``process.Process`` made by hand),
with one addition that makes it work on uvloop until uvloop spawns a child itself: see its docstring.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

from twisted.internet._signals import _SIGCHLDWaker
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]  # zope ships no type information

__all__ = ["ChildSignals", "watch_exit"]

#: pidfd_open(2) exists (Linux, Python 3.9+); the kernel may still refuse it (ENOSYS before 5.3, EPERM
#: under some seccomp profiles), and then the child is left to SIGCHLD.
HAVE_PIDFD = hasattr(os, "pidfd_open")

#: The reactor's ``_addInternalReader`` / ``_removeInternalReader``. Typed loosely: mypy does not see that
#: ``@implementer(IReadDescriptor)`` classes provide the interface (zope has no mypy plugin here).
ReaderHook: TypeAlias = Callable[[Any], object]


class ChildSignals:
    """The reactor's SIGCHLD handling (Twisted's ``SignalHandling`` protocol): Twisted's own, plus a Python
    signal handler that wakes the reactor whoever holds the signal wake-up descriptor.

    When uvloop's descriptor wakes it, uvloop runs Python's signal handlers at once; the handler writes a
    byte into the waker's pipe, which makes the reactor reap on its next turn, exactly as the
    ``set_wakeup_fd`` byte does. (Reaping inside the handler would run ``processEnded`` at an arbitrary point
    of whatever code the signal interrupted.) Twisted's ``set_wakeup_fd`` is kept, so on a loop that leaves
    the descriptor alone nothing changes, and a SIGCHLD delivered to another thread still wakes the reactor;
    the second byte for the same signal costs one empty read.
    """

    def __init__(self, add_reader: ReaderHook, remove_reader: ReaderHook) -> None:
        self._add_reader = add_reader
        self._remove_reader = remove_reader
        self._waker: _SIGCHLDWaker | None = None

    def install(self) -> None:
        from twisted.internet import process  # noqa: PLC0415  # POSIX only, as this class

        if self._waker is None:
            self._waker = _SIGCHLDWaker()
            self._add_reader(self._waker)
        self._waker.install()  # Twisted's: its handler, SA_RESTART, set_wakeup_fd(pipe)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.siginterrupt(signal.SIGCHLD, False)  # no EINTR in the blocking calls the signal lands in
        # A child that exited before the handler was in place (spawnProcess before reactor.run) sent its
        # SIGCHLD to nobody: look now, as Twisted does.
        process.reapAllProcesses()

    def uninstall(self) -> None:
        waker, self._waker = self._waker, None
        if waker is None:
            return
        self._remove_reader(waker)
        waker.uninstall()  # SIGCHLD back to SIG_DFL, no wake-up descriptor: Twisted's own uninstall
        waker.connectionLost(Failure(Exception("uninstalled")))  # type: ignore[no-untyped-call]  # unannotated

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes of whatever was running: only a write, and never an
        # exception (it would surface in that code).
        fd = getattr(self._waker, "o", None)  # gone once the waker is closed
        if fd is None:
            return
        with contextlib.suppress(OSError):  # EAGAIN: the pipe is full of wake-ups already, and one is enough
            os.write(fd, b"\0")


@implementer(IReadDescriptor)
class _ExitWatcher:
    """One child's pidfd among the reactor's internal readers: its one read event reaps that child."""

    def __init__(self, fd: int, transport: Any, remove: ReaderHook) -> None:
        self._fd = fd
        self._transport = transport
        self._remove = remove

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "udpio-child-exit"

    def doRead(self) -> None:
        # Readable from the exit on, for good: one event is all there is to learn. Leave the loop before
        # the descriptor is closed (libuv must not watch a closed descriptor), then reap.
        self._remove(self)
        self._close()
        if self._transport.pid is not None:  # None once reaped (SIGCHLD, or the pipes closing, got there first)
            self._transport.reapProcess()

    def connectionLost(self, reason: Failure | None) -> None:
        # The reactor is being torn down (ReactorBuilder's cleanup hands internal readers None).
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def watch_exit(transport: Any, add_reader: ReaderHook, remove_reader: ReaderHook) -> bool:
    """Watch the child behind ``transport`` (what ``spawnProcess`` returned) through a pidfd, so its exit is
    reaped without SIGCHLD. Returns whether a pidfd watches it (``False``: left to SIGCHLD alone)."""
    pid = getattr(transport, "pid", None)
    if pid is None or not HAVE_PIDFD:  # already reaped inside spawnProcess, or no pidfds on this platform
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        # ENOSYS (kernel before 5.3), EPERM (a seccomp profile), EMFILE/ENFILE. Never raised: the child runs
        # already and its transport must reach the caller; SIGCHLD still reaps it, as on Twisted's reactors.
        return False
    try:
        add_reader(_ExitWatcher(fd, transport, remove_reader))
    except BaseException:
        os.close(fd)
        raise
    return True
