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
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import pytest

import udpio
from udpio import _receive
from udpio._loop import uvloop_available

LOOPS = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]


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
        metafunc.parametrize("loop_kind", LOOPS, scope="function")
    if "receive_strategy" in metafunc.fixturenames:
        metafunc.parametrize("receive_strategy", list(_receive.REGISTRY), indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (strategy, test) pairs where the strategy cannot read a feature the test's endpoints use."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("receive_strategy") if callspec is not None else None
        needs = {feature for mark in item.iter_markers("receive_features") for feature in mark.args}
        if name is not None and not needs <= _receive.REGISTRY[name].features:
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
