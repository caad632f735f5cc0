"""Choosing and running the event loop: uvloop when it is installed, the standard loop otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

from ._errors import InvalidArgumentError

T = TypeVar("T")
LoopKind = Literal["auto", "uvloop", "asyncio"]

#: Environment variable that forces a loop for :func:`run` and the CLI: ``uvloop`` or ``asyncio``.
LOOP_ENV = "UDPIO_LOOP"
LOOP_KINDS = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    """Whether uvloop can be imported here."""
    try:
        import uvloop  # noqa: F401, PLC0415  # optional: absent on Windows and PyPy
    except ImportError:
        return False
    return True


def resolve_loop_kind(kind: str | None = None) -> Literal["uvloop", "asyncio"]:
    """Turn ``kind`` (or ``$UDPIO_LOOP``, or ``"auto"``) into the loop that will really be used.

    ``"uvloop"`` asked for explicitly but not installed raises :class:`ImportError`; ``"auto"`` falls back.
    """
    chosen = kind if kind is not None else os.environ.get(LOOP_ENV) or "auto"
    if chosen not in LOOP_KINDS:
        source = "loop" if kind is not None else f"${LOOP_ENV}"
        raise InvalidArgumentError(source, "one of 'auto', 'uvloop', 'asyncio'", chosen)
    if chosen == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if chosen == "uvloop" and not uvloop_available():
        raise ImportError("loop='uvloop' was asked for but uvloop is not installed: pip install uvloop")
    return chosen  # type: ignore[return-value]  # narrowed by the checks above


def loop_factory(kind: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument callable that makes a new loop of ``kind`` (see :func:`resolve_loop_kind`)."""
    if resolve_loop_kind(kind) == "uvloop":
        import uvloop  # noqa: PLC0415  # optional dependency, imported only when chosen

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind``: ``"auto"`` (default), ``"uvloop"`` or ``"asyncio"``."""
    return loop_factory(kind)()


def loop_kind(loop: asyncio.AbstractEventLoop | None = None) -> Literal["uvloop", "asyncio"]:
    """Which kind ``loop`` (default: the running loop) is."""
    current = loop if loop is not None else asyncio.get_running_loop()
    return "uvloop" if type(current).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None, debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new loop, like :func:`asyncio.run`, and return its result.

    ``loop`` is ``"auto"`` (uvloop when installed; the default, overridden by ``$UDPIO_LOOP``), ``"uvloop"``
    or ``"asyncio"``. Remaining tasks are cancelled and async generators closed before the loop closes.
    """
    factory = loop_factory(loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    new_loop = factory()  # pragma: no cover - Python 3.10 path
    try:  # pragma: no cover
        asyncio.set_event_loop(new_loop)
        if debug is not None:
            new_loop.set_debug(debug)
        return new_loop.run_until_complete(main)
    finally:  # pragma: no cover
        try:
            pending = asyncio.all_tasks(new_loop)
            for task in pending:
                task.cancel()
            if pending:
                new_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            new_loop.run_until_complete(new_loop.shutdown_asyncgens())
            new_loop.run_until_complete(new_loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            new_loop.close()


async def wait_within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` for at most ``timeout`` seconds (``None``: no limit), else raise ``asyncio.TimeoutError``
    (the builtin :class:`TimeoutError` from Python 3.11). Use it instead of :func:`asyncio.wait_for` on any
    path that must stop when its task is cancelled.

    Why not ``wait_for``: on Python 3.11 it returns the inner result when the cancellation lands just as the
    inner await completes, so the caller's ``CancelledError`` is lost (python/cpython#86296, fixed in 3.12 by
    rebuilding ``wait_for`` on ``asyncio.timeout``); ``udpio ping -i 0`` ignored Ctrl-C that way on uvloop.
    From 3.11 this is ``asyncio.timeout``, which counts cancellations (``Task.uncancel``) and never swallows
    one it did not make. Python 3.10 has neither; there ``aw`` runs in its own task and this one only waits
    (``asyncio.wait`` never swallows a cancellation: it cancels the inner task and re-raises). The
    ``async-timeout`` backport is not used: on 3.10 it cannot tell its own cancellation from one arriving in
    the same loop iteration, and turns the latter into a timeout.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await aw
    task = asyncio.ensure_future(aw)  # pragma: no cover - Python 3.10 path
    try:  # pragma: no cover
        await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # pragma: no cover - cancelled (or interrupted) while waiting: stop the inner task too
        task.cancel()
        await _settle(task)
        raise
    if not task.done():  # pragma: no cover - the timeout
        task.cancel()
        await _settle(task)
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()  # pragma: no cover - done in time (or just before the timeout cancelled it)


async def _settle(task: asyncio.Future[Any]) -> None:  # pragma: no cover - Python 3.10 path
    """Wait until a cancelled inner task has finished (so a reader it held is released), without raising."""
    await asyncio.wait({task})
