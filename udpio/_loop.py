"""Choosing and running the event loop: uvloop when it is installed, the standard loop otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
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
