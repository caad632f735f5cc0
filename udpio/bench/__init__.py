"""udpio.bench: the side-by-side benchmark, ``python -m udpio.bench`` (see ``benchmarks/RESULTS.md``).

Each backend's server runs in its own process (the scripts in ``servers/``, or the C reference server); a
load generator runs in another (the Python one, or the C one in ``native/`` for the many-peer,
request/response and flood workloads); this package only starts, pins, drives and reports. It never imports
Twisted: the Twisted servers are subprocesses like the rest.

Modules: ``_workloads`` (backends, workloads, figures), ``_generator`` (the Python load generator process),
``_native`` (building the C programs at first use), ``_harness`` (processes, pinning, RSS, clean-up),
``_report`` (tables, JSON, plot, machine), ``_cli``.
"""

from ._cli import main as main

__all__ = ["main"]
