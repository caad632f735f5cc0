"""Test plumbing: every ``async def`` test runs once per loop (asyncio, uvloop), on a fresh loop.

Fixtures: ``loop_kind`` (the loop the test runs on), ``family`` / ``host`` (IPv4 and IPv6 loopback; IPv6
skips with a reason when ``::1`` cannot be bound), ``receive_strategy``.

Receive tests (those using the ``receive_strategy`` fixture, usually through
``pytest.mark.usefixtures("receive_strategy")``) run once per receive strategy in udpio's registry
(``udpio._receive.REGISTRY``): every transport the test builds uses that strategy (``_receive.forced``). A
strategy registered later (the compiled one, when its module imports) joins the matrix with no test edit.
A test whose endpoints use socket features declares them with ``pytest.mark.receive_features("gro", ...)``
(on the test or on one of its parameters); it then runs only on the strategies that can read them, and the
other combinations are deselected (the summary counts them).

A third loop, ``no-readers``: the standard selector loop with ``add_reader``/``add_writer`` refusing as a
proactor loop's do (Windows' default loop raises :class:`NotImplementedError` from both), so endpoints run on
``udpio/_fallback.py``. A module opts in with ``pytestmark = pytest.mark.fallback``: its async tests then run
on that loop too (once, whatever the receive strategy: none is used there); ``pytest.mark.fallback("only")``
runs them on that loop alone. A test that cannot apply there
says why with ``pytest.mark.needs_readers("reason")`` and is skipped with that reason on that loop only.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import udpio
from udpio import _receive
from udpio._loop import uvloop_available

LOOPS = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]
#: The loop kind of the fallback tests (see the module doc).
NO_READERS = "no-readers"


class NoReadersLoop(asyncio.SelectorEventLoop):
    """The standard loop without readiness callbacks, as a proactor loop: ``add_reader``/``add_writer`` raise
    :class:`NotImplementedError`. asyncio's own transports keep working: they call the loop's private
    ``_add_reader``, as the proactor loop's transports use its own completion machinery."""

    def add_reader(self, fd: object, callback: object, *args: object) -> None:
        raise NotImplementedError("add_reader: this loop, like a proactor loop, has no readiness callbacks")

    def add_writer(self, fd: object, callback: object, *args: object) -> None:
        raise NotImplementedError("add_writer: this loop, like a proactor loop, has no readiness callbacks")


def run_without_readers(coro: Any) -> None:
    """Run ``coro`` on a fresh :class:`NoReadersLoop`, as ``udpio.run`` runs the other kinds."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=NoReadersLoop) as runner:
            runner.run(coro)
        return

    class Policy(asyncio.DefaultEventLoopPolicy):  # pragma: no cover - Python 3.10: no asyncio.Runner
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return NoReadersLoop()

    previous = asyncio.get_event_loop_policy()  # pragma: no cover
    asyncio.set_event_loop_policy(Policy())  # pragma: no cover
    try:  # pragma: no cover
        udpio.run(coro, loop="asyncio")  # asyncio.new_event_loop() asks the policy
    finally:  # pragma: no cover
        asyncio.set_event_loop_policy(previous)


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_works()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function) and "loop_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("loop_kind")
    if "loop_kind" in metafunc.fixturenames:
        fallback = metafunc.definition.get_closest_marker("fallback")
        kinds = LOOPS if fallback is None else [NO_READERS] if "only" in fallback.args else [*LOOPS, NO_READERS]
        metafunc.parametrize("loop_kind", kinds, scope="function")
    if "receive_strategy" in metafunc.fixturenames:
        metafunc.parametrize("receive_strategy", list(_receive.REGISTRY), indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (strategy, test) pairs where the strategy cannot read a feature the test's endpoints use, and
    on the ``no-readers`` loop every strategy but the first (no strategy runs there: the runs would be the
    same); skip there, with their reason, the tests marked ``needs_readers``."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    first = next(iter(_receive.REGISTRY))
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        name = params.get("receive_strategy")
        needs = {feature for mark in item.iter_markers("receive_features") for feature in mark.args}
        if params.get("loop_kind") == NO_READERS:
            if name is not None and name != first:
                dropped.append(item)
                continue
            mark = item.get_closest_marker("needs_readers")
            if mark is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs add_reader: {mark.args[0]}"))
            kept.append(item)
        elif name is not None and not needs <= _receive.REGISTRY[name].features:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames if name in pyfuncitem.funcargs
    }
    kind = pyfuncitem.callspec.params["loop_kind"]
    if "loop_kind" in inspect.signature(pyfuncitem.obj).parameters:
        kwargs["loop_kind"] = kind
    if kind == NO_READERS:
        run_without_readers(pyfuncitem.obj(**kwargs))
    else:
        udpio.run(pyfuncitem.obj(**kwargs), loop=kind)
    return True


@pytest.fixture(params=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> int:
    if request.param == "ipv6" and not IPV6:
        pytest.skip("IPv6 loopback ::1 cannot be bound on this machine")
    return socket.AF_INET if request.param == "ipv4" else socket.AF_INET6


@pytest.fixture
def host(family: int) -> str:
    return "127.0.0.1" if family == socket.AF_INET else "::1"


@pytest.fixture
def raw_socket(family: int, host: str) -> Iterator[socket.socket]:
    """A plain blocking-with-timeout UDP socket on loopback, for talking to endpoints under test."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def receive_strategy(request: pytest.FixtureRequest) -> Iterator[str]:
    """The receive strategy every transport of this test uses (parametrized over the registry)."""
    name: str = request.param
    with _receive.forced(name):
        yield name
