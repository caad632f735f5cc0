"""The distribution: ``python -m build`` makes an sdist and, from it, a wheel that carries the compiled I/O core;
the wheel installs in a fresh venv and runs there on the compiled path, away from this source tree.

Slow (about 30-60 s: two isolated build environments, one venv): marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

SMOKE = r"""
import socket, sys
import udpio
from udpio import _core
from udpio._counters import Counters

assert udpio.IO_CORE == "compiled", udpio.IO_CORE
assert "site-packages" in _core.__file__, _core.__file__

class Limits:
    recv_size, max_size, per_event, batch_bytes = 65536, None, 256, 16384

class Sink:
    counters = Counters()
    def receive_error(self, exc): raise exc
    def handler_failed(self, exc, addr): raise exc

got = []
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    receiver = _core.Receiver(Sink(), rx.fileno(), Limits(), datagram_received=lambda d, a: got.append(d))
    assert _core.send_pairs(tx, [(b"one", rx.getsockname()), (b"two", rx.getsockname())], 0) == 2
    receiver.read_event()
assert got == [b"one", b"two"], got
print("wheel ok", udpio.IO_CORE)
"""


@pytest.mark.timeout(300)
def test_the_wheel_carries_the_compiled_core_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="needs the 'build' package (in the test extra)")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler: the wheel would rightly be pure Python")
    env = {k: v for k, v in os.environ.items() if k != "UDPIO_NO_EXTENSIONS"}
    dist = tmp_path / "dist"
    # Without --wheel/--sdist, build makes the sdist and builds the wheel from it: the sdist must be complete.
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], env=env,
                   check=True, capture_output=True, timeout=240)
    (wheel,) = dist.glob("udpio-*.whl")
    (sdist,) = dist.glob("udpio-*.tar.gz")
    assert sdist.stat().st_size > 0
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("udpio/_core.") and n.endswith(".so")], names
    assert "udpio/_core.pyi" in names and "udpio/py.typed" in names
    assert "udpio/_core.c" not in names
    assert "udpio/bench/native/loadgen.c" in names  # the benchmark compiles its own C at first use

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=env, check=True,
                   capture_output=True, timeout=240)
    # Run from an empty directory: only the installed wheel can be imported.
    done = subprocess.run([str(python), "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wheel ok compiled"
    demo = subprocess.run([str(python), "-m", "udpio", "demo", "-n", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert demo.returncode == 0, demo.stderr
    assert "compiled I/O core" in demo.stdout


@pytest.mark.timeout(300)
def test_without_a_compiler_the_build_succeeds_on_the_python_path(tmp_path: Path) -> None:
    """setup.py's optional build_ext: a compiler that cannot run only warns, and the wheel is pure Python."""
    pytest.importorskip("build", reason="needs the 'build' package (in the test extra)")
    env = {k: v for k, v in os.environ.items() if k != "UDPIO_NO_EXTENSIONS"}
    env["CC"] = str(tmp_path / "no-such-compiler")
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert "the compiled I/O core was not built" in done.stdout + done.stderr
    (wheel,) = dist.glob("udpio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("udpio/_core.") and n.endswith(".so")], names
    assert "udpio/_io_core.py" in names
    # Imported from the unpacked wheel, udpio says it runs the Python path. -S: without site's .pth files, so
    # an editable install of this checkout (whose finder would supply its built udpio._core) stays out; the
    # site-packages directory is still appended for uvloop.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    site = sysconfig.get_paths()["purelib"]
    script = (f"import sys; sys.path[:0] = [{str(unpacked)!r}]; sys.path.append({site!r}); "
              "import udpio; print(udpio.__file__, udpio.IO_CORE)")
    out = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == [str(unpacked / "udpio" / "__init__.py"), "python"]
