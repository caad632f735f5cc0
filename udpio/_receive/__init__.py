"""Receive strategies: how a transport drains its socket and delivers datagrams (the receive seam of SEAMS.md).

One strategy object per (transport, protocol), chosen once when the protocol is set, never per event:

==================  =====================================================  ======================================
strategy            reads with                                             the transport's default when
==================  =====================================================  ======================================
``per_datagram``    ``recvfrom``; one ``datagram_received`` call each       the protocol has no ``datagrams_received``
``batch``           ``recvfrom``; lists for ``datagrams_received``          the protocol has ``datagrams_received``
``recvmsg``         ``recvmsg`` + control messages (GRO, ``SO_RXQ_OVFL``)  ``gro``, kernel drops, local addresses
``zero_copy``       ``recvmsg_into`` a reused arena; ``memoryview`` slices  ``zero_copy``
``compiled``        ``recvmmsg`` in C (``udpio._core``); all but views      everything but ``zero_copy``, wherever
                                                                           the compiled core runs (``IO_CORE``)
==================  =====================================================  ======================================

The first three are the defaults on the pure-Python path; where the compiled core runs it takes their place
(registered last, see :func:`choose`), and they serve only when forced (the tests).

Every strategy honours the same delivery contract (SEAMS.md): either handler shape (and, for those that read
``pktinfo``, either shape with local addresses), the same size rule (:class:`~udpio._limits.ReceiveLimits`),
counters added per event or per list, handler errors to the sink, nothing delivered after ``stop()``.

The registry is the one list tests are parametrized from (``tests/conftest.py``): a strategy registered with
:func:`register` when its module imports (the compiled one) joins the transport's choice and the test matrix
at once. :func:`forced` makes every transport built inside it use one named strategy: the test suite's hook,
not an option users have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from .. import _io_core
from .._errors import InvalidArgumentError
from ._recvfrom import Batch, PerDatagram
from ._recvmsg import Recvmsg, ZeroCopy
from ._seam import (
    Feature,
    ReceiveConfig,
    ReceiveSink,
    ReceiveStrategy,
    StrategyFactory,
    StrategySpec,
    has_batch_handler,
)

__all__ = [
    "REGISTRY",
    "Feature",
    "ReceiveConfig",
    "ReceiveSink",
    "ReceiveStrategy",
    "StrategyFactory",
    "StrategySpec",
    "choose",
    "forced",
    "register",
]

#: Every strategy, by name, in registration order (later ones win where they are preferred).
REGISTRY: dict[str, StrategySpec] = {}
_forced: str | None = None


def register(spec: StrategySpec) -> None:
    """Add a strategy (or replace one of the same name); from now on transports may choose it."""
    REGISTRY.pop(spec.name, None)
    REGISTRY[spec.name] = spec


def choose(config: ReceiveConfig, protocol: asyncio.BaseProtocol) -> StrategySpec:
    """The strategy for a transport with ``config`` serving ``protocol``: the forced one inside
    :func:`forced`, else the last registered that declares itself preferred and can serve ``config``."""
    if _forced is not None:
        spec = REGISTRY[_forced]
        if not spec.can_serve(config):
            wanted = ", ".join(sorted(config.features))
            raise InvalidArgumentError("forced receive strategy", f"one that can read {wanted}", spec.name)
        return spec
    batch_handler = has_batch_handler(protocol)
    for spec in reversed(REGISTRY.values()):
        if spec.can_serve(config) and spec.preferred(config, batch_handler):
            return spec
    raise LookupError(f"no receive strategy serves {sorted(config.features)}")  # pragma: no cover


@contextlib.contextmanager
def forced(name: str) -> Iterator[None]:
    """Make every transport (and every ``set_protocol``) inside the block use the strategy ``name``;
    choosing raises :class:`~udpio.InvalidArgumentError` for a transport whose features it cannot read."""
    global _forced
    if name not in REGISTRY:
        raise InvalidArgumentError("receive strategy", f"one of {sorted(REGISTRY)}", name)
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def _plain(config: ReceiveConfig) -> bool:
    return not config.features


register(StrategySpec("per_datagram", PerDatagram, frozenset(), lambda c, batch: _plain(c) and not batch))
register(StrategySpec("batch", Batch, frozenset(), lambda c, batch: _plain(c) and batch))
#: What the ``recvmsg`` strategies read from their control messages; ``pktinfo``: each datagram's local address,
#: for a protocol with ``datagram(s)_received_on`` (a strategy without it, such as a ``recvfrom`` one, is then
#: never chosen).
_CONTROL: frozenset[Feature] = frozenset({"gro", "kernel_drops", "pktinfo"})
register(StrategySpec("recvmsg", Recvmsg, _CONTROL, lambda c, batch: bool(c.features) and not c.zero_copy))
register(StrategySpec("zero_copy", ZeroCopy, _CONTROL | {"zero_copy"}, lambda c, b: c.zero_copy))
if _io_core.IO_CORE == "compiled":
    # Registered last, so it is the default wherever it can serve (every configuration but zero copy: views
    # into a reused buffer stay Python's, see ZeroCopy). UDPIO_NO_EXTENSIONS=1 leaves it out of the registry,
    # hence out of the transport's choice and of the test matrix.
    register(
        StrategySpec(
            "compiled",
            _io_core.build_receiver,
            frozenset({"gro", "kernel_drops", "pktinfo"}),
            lambda c, b: not c.zero_copy,
        )
    )
