"""Which I/O core runs: ``udpio.IO_CORE``, the compiled one unless it is not built or ``UDPIO_NO_EXTENSIONS`` is
set (any non-empty value). Runs in both of .ci/run's passes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import udpio
from udpio import _io_core

BUILT = importlib.util.find_spec("udpio._core") is not None


def test_io_core_names_the_path_that_runs() -> None:
    if os.environ.get("UDPIO_NO_EXTENSIONS") or not BUILT:
        assert udpio.IO_CORE == "python"
        assert _io_core.send_pairs is None
        assert _io_core.compiled_receiver(object(), 0, object()) is None
    else:
        from udpio import _core

        assert udpio.IO_CORE == "compiled"
        assert _io_core.send_pairs is _core.send_pairs


def test_any_non_empty_udpio_no_extensions_forces_the_python_path() -> None:
    script = "import sys, udpio; print(udpio.IO_CORE, 'udpio._core' in sys.modules)"
    unset = "compiled True" if BUILT else "python False"
    for value, expected in (("1", "python False"), ("yes", "python False"), ("0", "python False"), ("", unset)):
        env = {**os.environ, "UDPIO_NO_EXTENSIONS": value}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        assert done.stdout.strip() == expected, (value, done.stdout, done.stderr)
