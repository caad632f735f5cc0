"""The benchmark's servers, one small script per backend, each run in its own process by ``udpio.bench``.

They live here, in ``benchmarks/servers/``, so a reader finds them next to ``RESULTS.md`` and can run one by
hand (``python benchmarks/servers/twisted_server.py --workload echo``). ``pyproject.toml`` maps this
directory to the package ``udpio.bench.servers`` (as it maps ``compat/`` to ``udpio.compat``), so a regular
``pip install`` ships the scripts too and ``python -m udpio.bench`` finds them wherever udpio is installed.
They are scripts, not library modules: nothing imports them, and they import ``_common`` as a sibling.
"""
