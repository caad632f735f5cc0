"""The seams, checked on the source: who may touch the transport's private parts, each limit written once, the
receive strategy registry, and options a type checker reads.

Rules on private attributes (``x._name``, single underscore, where ``x`` is not ``self``/``cls`` or a module),
checked on the AST of every module in ``udpio/`` and ``compat/``:

A. *The transport's privacy.* Outside the transport's own modules (``_transport.py``, ``_send.py``,
   ``_send_from.py``, ``_receive/``, and ``_fallback.py``, its subclass for loops without ``add_reader``), no
   access to a name that is a private attribute of the transport or of its parts (the send path, every
   registered receive strategy): the names are read from live objects, so a new private attribute is covered
   the day it is added. A private name shared by accident with another class (say ``_closing``) counts as a
   violation too: rename, or use the public surface.
B. *Layers are clients.* In ``compat/``, a private attribute may only be one that a class of ``compat/``
   itself defines (a port and its bridge, the reactor and its ports are one unit), never udpio's or
   Twisted's, with one exception named below. In ``udpio/`` (outside the transport's modules) a module may
   use the private parts of the classes it defines, and nothing else's.

Both rules are conservative: any violation fails, none is waived without an entry here and a reason.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import pathlib
import textwrap
import types
from collections.abc import Iterator

import pytest

import udpio
from udpio import _limits, _receive
from udpio._options import TransportOptions

from ._helpers import Collector

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The transport's own modules: the only code that may use its private parts.
TRANSPORT_MODULES = {"udpio/_transport.py", "udpio/_send.py", "udpio/_send_from.py", "udpio/_fallback.py"} | {
    str(path.relative_to(ROOT)) for path in (ROOT / "udpio" / "_receive").glob("*.py")
}
#: Private attributes of Twisted that compat must read: AsyncioSelectorReactor keeps its asyncio loop in
#: ``_asyncioEventloop`` and offers no public accessor (Twisted 23-25).
TWISTED_PRIVATE_ALLOWED = {"_asyncioEventloop"}


def _sources(*roots: str) -> list[pathlib.Path]:
    # udpio/bench is the benchmark's, built on the public API plus one constant (GSO_MAX_SEGMENTS); it is kept
    # to the same rules.
    return sorted(path for root in roots for path in (ROOT / root).rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "compat":
        parts = ["udpio", "compat", *parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_aliases(name: str, path: pathlib.Path, tree: ast.Module) -> set[str]:
    """Names bound to modules by the imports of module ``name`` (``from . import _sockopts``, ``import errno``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                try:
                    value = getattr(importlib.import_module(base), alias.name)
                except (ImportError, AttributeError):
                    continue
                if isinstance(value, types.ModuleType):
                    aliases.add(alias.asname or alias.name)
    return aliases


def _private_accesses(path: pathlib.Path, module: str | None = None) -> Iterator[tuple[int, str, str]]:
    """``(line, expression, name)`` for every ``x._name`` whose ``x`` is not self, cls or a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = _module_aliases(module or _module_name(path), path, tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        value = node.value
        if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in aliases):
            continue
        yield node.lineno, ast.unparse(node), name


def _names_defined_by_classes(paths: list[pathlib.Path]) -> set[str]:
    """Private names the classes of ``paths`` define: methods, class attributes, ``self._x = ...``."""
    names: set[str] = set()
    for path in paths:
        for cls in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(cls, ast.ClassDef):
                continue
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
                elif isinstance(node, (ast.AnnAssign, ast.Assign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _private_names(obj: object) -> set[str]:
    found = {name for klass in type(obj).__mro__ for name in vars(klass) if name.startswith("_")}
    found |= {name for klass in type(obj).__mro__ for name in getattr(klass, "__slots__", ())}
    found |= set(getattr(obj, "__dict__", {}))
    return {name for name in found if name.startswith("_") and not name.startswith("__")}


async def _transport_private_names() -> set[str]:
    """The private attribute names of a live transport, its send path and one strategy of each kind."""
    transport, _ = await udpio.listen(Collector, "127.0.0.1", 0)
    try:
        names = _private_names(transport)
        for value in list(vars(transport).values()):
            if type(value).__module__.startswith("udpio."):
                names |= _private_names(value)
        sock = transport.get_extra_info("socket")
        config = _receive.ReceiveConfig(_limits.ReceiveLimits.for_max_size(None))
        for spec in _receive.REGISTRY.values():
            names |= _private_names(spec.build(sock, Collector(), config, transport._routes))
    finally:
        transport.close()
    return names


async def test_nothing_outside_the_transport_touches_its_private_parts() -> None:
    """Rule A (module docstring)."""
    transport_names = await _transport_private_names()
    assert {"_send", "_strategy", "_counters", "_buffer", "_reading", "_remote", "_extra"} <= transport_names
    violations = [
        f"{path.relative_to(ROOT)}:{line}: {expr}"
        for path in _sources("udpio", "compat")
        if str(path.relative_to(ROOT)) not in TRANSPORT_MODULES
        for line, expr, name in _private_accesses(path)
        if name in transport_names
    ]
    assert violations == []


def test_compat_uses_only_public_surfaces() -> None:
    """Rule B for compat/: only private names compat's own classes define (and Twisted's loop attribute)."""
    compat = _sources("compat")
    own = _names_defined_by_classes(compat)
    violations = [
        f"{path.relative_to(ROOT)}:{line}: {expr}"
        for path in compat
        for line, expr, name in _private_accesses(path)
        if name not in own and name not in TWISTED_PRIVATE_ALLOWED
    ]
    assert violations == []


def test_udpio_modules_use_only_their_own_private_parts() -> None:
    """Rule B for udpio/: a module touches the private parts of the classes it defines, nothing else's."""
    violations = []
    for path in _sources("udpio"):
        if str(path.relative_to(ROOT)) in TRANSPORT_MODULES:
            continue
        own = _names_defined_by_classes([path])
        violations += [
            f"{path.relative_to(ROOT)}:{line}: {expr}"
            for line, expr, name in _private_accesses(path)
            if name not in own
        ]
    assert violations == []


def test_the_rules_catch_what_they_are_for(tmp_path: pathlib.Path) -> None:
    """The scanner sees an access through a local name, an attribute chain and a class, and lets modules by."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            import errno
            from udpio import _sockopts
            from udpio._transport import DatagramTransport

            def f(transport, port):
                transport._send.sendto(b"", None)
                port._transport._counters.send_errors += 1
                DatagramTransport._begin(transport, None)
                return _sockopts.OPTION_MISSING, errno.EIO
            """
        )
    )
    found = sorted(expr for _, expr, _ in _private_accesses(sample, "udpio._sample"))
    assert found == [
        "DatagramTransport._begin",
        "port._transport",
        "port._transport._counters",
        "transport._send",
    ]


# -- limits -------------------------------------------------------------------------------------------------

#: Values that must appear as a literal only in udpio/_limits.py (whatever expression spells them there).
LIMIT_VALUES = {
    _limits.MAX_PAYLOAD_IPV4,
    _limits.MAX_PAYLOAD_IPV6,
    _limits.MAX_PORT,
    _limits.RECV_BUFFER_SIZE,
    _limits.BATCH_BYTES,
    _limits.DEFAULT_BUFFER_LIMIT,
}

#: Literals that equal a limit by coincidence and mean something else: (file, value) -> what it is.
COINCIDENCES = {
    ("udpio/_policy.py", 16_384): "MAX_TRACKED_SOURCES / MAX_TRACKED_REPLIES, numbers of peers, not bytes",
    ("udpio/_policy.py", 65_535): "0xFFFF, the ::ffff:0:0/96 mapped-address prefix (RFC 4291), not a port",
    ("udpio/_cli/send.py", 65_536): "STDIN_CHUNK, a read size for standard input, not a datagram limit",
}


def _constant_ints(tree: ast.AST) -> Iterator[tuple[int, int]]:
    """Every int literal, and every product/sum/power of int literals (``16 * 1024``), with its line."""

    def fold(node: ast.AST) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add, ast.Sub, ast.Pow)):
            left, right = fold(node.left), fold(node.right)
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            return left**right if right < 64 else None
        return None

    for node in ast.walk(tree):
        value = fold(node)
        if value is not None:
            yield node.lineno, value


def test_each_limit_is_written_once() -> None:
    """65507, 65527, 65535, 65536, 16 KiB and 1 MiB appear as literals in udpio/_limits.py only (udpio/ and
    compat/; the benchmark and the tests may restate them)."""
    violations = [
        f"{path.relative_to(ROOT)}:{line}: {value}"
        for path in _sources("udpio", "compat")
        if path.relative_to(ROOT) != pathlib.Path("udpio/_limits.py") and "bench" not in path.parts
        for line, value in _constant_ints(ast.parse(path.read_text(encoding="utf-8")))
        if value in LIMIT_VALUES and (str(path.relative_to(ROOT)), value) not in COINCIDENCES
    ]
    assert violations == []


# -- the receive strategy registry --------------------------------------------------------------------------


def test_registry_holds_the_strategies_and_forcing_is_checked() -> None:
    python = ["per_datagram", "batch", "recvmsg", "zero_copy"]
    # The compiled strategy is in the registry (hence in every receive test's matrix) exactly when it runs.
    assert list(_receive.REGISTRY) == ([*python, "compiled"] if udpio.IO_CORE == "compiled" else python)
    with pytest.raises(udpio.InvalidArgumentError, match="receive strategy must be one of"):
        with _receive.forced("no-such-strategy"):
            pass


@pytest.mark.usefixtures("receive_strategy")
async def test_the_forced_strategy_is_the_one_serving(receive_strategy: str, host: str) -> None:
    """The matrix is real: every transport of a receive test is served by that test's strategy."""
    transport, _ = await udpio.listen(Collector, host, 0)
    try:
        assert transport.get_extra_info("receive_strategy") == receive_strategy
    finally:
        transport.close()


async def test_without_forcing_the_transport_picks_by_protocol_and_options(host: str) -> None:
    class Batches(asyncio.DatagramProtocol):
        def datagrams_received(self, batch: list[tuple[bytes, object]]) -> None:
            pass

    class LocalBatches(asyncio.DatagramProtocol):
        def datagrams_received_on(self, batch: list[tuple[bytes, object, udpio.LocalAddress]]) -> None:
            pass

    # The compiled strategy, where the compiled core runs, is the default for everything but zero copy.
    compiled = udpio.IO_CORE == "compiled"
    cases: list[tuple[object, dict[str, bool], str]] = [
        (Collector, {}, "compiled" if compiled else "per_datagram"),
        (Batches, {}, "compiled" if compiled else "batch"),
        (Collector, {"track_kernel_drops": True}, "compiled" if compiled else "recvmsg"),
        (Batches, {"gro": True}, "compiled" if compiled else "recvmsg"),
        (Batches, {"zero_copy": True}, "zero_copy"),
        (LocalBatches, {}, "compiled" if compiled else "recvmsg"),
        (LocalBatches, {"zero_copy": True}, "zero_copy"),
    ]
    for factory, options, expected in cases:
        transport, _ = await udpio.listen(factory, host, 0, **options)  # type: ignore[arg-type]
        try:
            assert transport.get_extra_info("receive_strategy") == expected, (factory, options)
        finally:
            transport.close()
    # The echo server on the wildcard takes local addresses (reply_from_local): no slower path for it.
    async with await udpio.start_echo("0.0.0.0" if host == "127.0.0.1" else "::", 0) as server:
        assert server.protocol.datagrams_received_on is not None
        assert server.transport.get_extra_info("receive_strategy") == ("compiled" if compiled else "recvmsg")


async def test_forcing_a_strategy_that_cannot_read_a_feature_is_refused(host: str) -> None:
    with _receive.forced("batch"):
        with pytest.raises(udpio.InvalidArgumentError, match="can read kernel_drops"):
            await udpio.listen(Collector, host, 0, track_kernel_drops=True)


def test_transport_options_are_frozen_and_validated() -> None:
    options = TransportOptions(max_size=100)
    with pytest.raises(AttributeError):
        options.max_size = 5  # type: ignore[misc]  # frozen: the point of the test
    with pytest.raises(udpio.InvalidArgumentError, match="zero_copy must be True or False, got 'no'"):
        TransportOptions(zero_copy="no")  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(udpio.InvalidArgumentError, match="buffer_limit"):
        TransportOptions(buffer_limit=-1)



# -- options a type checker reads ---------------------------------------------------------------------------

#: Calls of every public function that takes endpoint options; ``# error`` marks the lines mypy must reject
#: (a misspelt option, or a value of the wrong type), every other line must pass.
OPTION_CALLS = '''
import asyncio

import udpio
from twisted.internet.protocol import DatagramProtocol
from udpio.compat import listen_twisted


async def calls(sock: int) -> None:
    factory = asyncio.DatagramProtocol
    await udpio.listen(factory, "127.0.0.1", 0, gro=True, max_size=1200, rcvbuf=1 << 20, buffer_limit=4096)
    await udpio.listen(factory, "127.0.0.1", 0, groo=True)  # error
    await udpio.connect(factory, "127.0.0.1", 9, track_kernel_drops=True, local_port=0)
    await udpio.connect(factory, "127.0.0.1", 9, track_kernel_drop=True)  # error
    await udpio.adopt(factory, sock, zero_copy=True)
    await udpio.adopt(factory, sock, zero_copy="no")  # error
    await udpio.listen_multicast(factory, 0, group="239.1.2.3", ttl=2, gro=True)
    await udpio.listen_multicast(factory, 0, grop="239.1.2.3")  # error
    await udpio.open_endpoint("127.0.0.1", 0, queue_size=10, rcvbuf=1 << 20, max_size=100)
    await udpio.open_endpoint("127.0.0.1", 0, max_sise=100)  # error
    await udpio.open_endpoint("127.0.0.1", 0, zero_copy=True)  # error
    await udpio.open_endpoint(remote=("127.0.0.1", 9), gro="yes")  # error
    await udpio.open_multicast(0, group="239.1.2.3", queue_size=5, loopback=False)
    await udpio.open_multicast(0, gruop="239.1.2.3")  # error
    await udpio.start_echo("127.0.0.1", 0, policy=None, gro=True, buffer_limit=1 << 16)
    await udpio.start_echo("127.0.0.1", 0, bufer_limit=1 << 16)  # error
    await udpio.serve_echo("127.0.0.1", 0, track_kernel_drops=True)
    await udpio.serve_echo("127.0.0.1", 0, track_kernel_drops=1.5)  # error
    await udpio.serve_echo_workers(2, "127.0.0.1", 0, max_size=100, report_interval=1.0)
    await udpio.serve_echo_workers(2, "127.0.0.1", 0, maxsize=100)  # error
    await listen_twisted(0, DatagramProtocol(), max_packet_size=100, gro=True, rcvbuf=1 << 20)
    await listen_twisted(0, DatagramProtocol(), max_packet_sise=100)  # error
'''


@pytest.mark.timeout(240)
def test_mypy_rejects_a_misspelt_or_mistyped_option(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options are explicit typed keywords from the public functions down (then one frozen, validated
    TransportOptions object): mypy rejects exactly the wrong calls above and accepts the right ones."""
    mypy_api = pytest.importorskip("mypy.api")
    # The package as installed (compat/ is udpio.compat), built from symbolic links: an editable install maps
    # compat/ with an import hook that mypy does not follow.
    package = tmp_path / "site" / "udpio"
    package.mkdir(parents=True)
    for entry in (ROOT / "udpio").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "compat").symlink_to(ROOT / "compat")
    monkeypatch.setenv("MYPYPATH", str(package.parent))
    (tmp_path / "none.ini").write_text("[mypy]\n", encoding="utf-8")
    snippet = tmp_path / "option_calls.py"
    snippet.write_text(OPTION_CALLS, encoding="utf-8")
    stdout, stderr, _ = mypy_api.run(
        [
            str(snippet),
            f"--config-file={tmp_path / 'none.ini'}",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--no-incremental",
            "--follow-imports=silent",
            "--python-version=3.10",
        ],
    )
    reported = {
        int(line.split(":")[1]) for line in stdout.splitlines() if line.startswith(str(snippet)) and ": error:" in line
    }
    expected = {number for number, line in enumerate(OPTION_CALLS.splitlines(), 1) if line.endswith("# error")}
    assert expected, "the snippet must contain wrong calls"
    assert reported == expected, stdout + stderr


def _keywords(function: object) -> dict[str, tuple[object, object]]:
    """Keyword-only parameters of ``function``: name -> (default, annotation)."""
    return {
        name: (parameter.default, parameter.annotation)
        for name, parameter in inspect.signature(function).parameters.items()  # type: ignore[arg-type]
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_forwarded_options_do_not_drift() -> None:
    """Functions that pass options on declare each one as the function they call does: same name, same
    default, same annotation (explicit keywords repeated by hand would otherwise drift apart)."""
    from udpio.compat import listen_twisted

    listen = _keywords(udpio.listen)
    transport_options = {"max_size", "gro", "track_kernel_drops", "zero_copy", "buffer_limit"}
    assert transport_options <= set(listen)
    forwarders = {
        udpio.start_echo: (listen, {"policy", "reply_from_local"}),
        udpio.serve_echo: (listen, {"policy", "reply_from_local"}),
        udpio.open_endpoint: (listen, {"remote", "sock", "queue_size"}),
        udpio.open_multicast: (_keywords(udpio.listen_multicast), {"queue_size"}),
        listen_twisted: (listen, {"max_packet_size"}),
        udpio.serve_echo_workers: (_keywords(udpio.start_echo_workers), set()),
    }
    for function, (target, own) in forwarders.items():
        theirs = _keywords(function)
        for name in set(theirs) - own:
            assert name in target, f"{function.__name__}: {name} is not an option of the function it calls"
            assert theirs[name] == target[name], f"{function.__name__}: {name} differs from the callee's"
    for function in (udpio.listen, udpio.connect, udpio.adopt, udpio.listen_multicast):
        assert transport_options <= set(_keywords(function)), function.__name__
