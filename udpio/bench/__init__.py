"""udpio.bench: the side-by-side benchmark, ``python -m udpio.bench`` (see ``benchmarks/RESULTS.md``).

Each backend's server runs in its own process (the scripts in ``benchmarks/servers/``, installed as
``udpio.bench.servers``); a load generator runs in another; this package only starts, pins, drives and
reports. It never imports Twisted: the Twisted servers are subprocesses like the rest.

Modules: ``_workloads`` (backends, workloads, figures), ``_generator`` (the load generator process),
``_harness`` (processes, pinning, RSS, clean-up), ``_report`` (tables, JSON, plot, machine), ``_cli``.
"""

from ._cli import main as main

__all__ = ["main"]
