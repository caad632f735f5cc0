"""The benchmark's servers, one small script per backend, each run in its own process by ``udpio.bench``.

They live inside the package (``udpio/bench/servers/``), so every install, editable or not, ships them with
the harness that runs them; a reader can still run one by hand (``python udpio/bench/servers/twisted_server.py
--workload echo``). The C reference server (the ``c-ref`` row) is ``../native/refserver.c``, compiled at first
use. They are scripts, not library modules: nothing imports them, they import ``_common`` as a sibling, and
each imports only the framework it measures (the plain-asyncio, rloop and Twisted servers never import udpio).
"""
