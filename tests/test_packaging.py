"""The installed udpio as Twisted sees it: ``trial``/``twistd --reactor=udpio`` from any directory, and no
``twisted`` package faked where Twisted is absent.

These run against the install the suite runs in: in CI, the README's ``pip install -e '.[test]'`` (an
editable install, where the plugin used to be found only with the checkout on ``PYTHONPATH``: issue 12).
The wheel gets the same checks, and Twisted's UDP suite, in .ci/check_package. The children run in a scratch
directory with ``PYTHONPATH`` unset, so nothing comes from the checkout but through the install.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGIN_ROOT = REPO / "compat" / "twisted_plugin"
CHILD_TIMEOUT = 120


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    try:
        importlib.metadata.distribution("udpio")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("udpio is not installed in this interpreter (run pip install -e '.[test]')")


def _child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=_child_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )


def _script(name: str) -> str:
    """A console script installed beside this interpreter (the venv's ``trial``, ``twistd``)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


def test_the_plugin_folder_is_no_package() -> None:
    """Twisted searches ``<entry>/twisted/plugins`` only where that folder is not a package; and no
    ``twisted/`` may sit at the repository's root, where ``import twisted`` would find it (issue 10)."""
    assert (PLUGIN_ROOT / "twisted" / "plugins" / "udpio_reactor.py").is_file()
    assert not (PLUGIN_ROOT / "twisted" / "__init__.py").exists()
    assert not (PLUGIN_ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (REPO / "twisted").exists()


def test_every_package_in_the_source_tree_is_listed_for_the_wheel() -> None:
    """pyproject.toml lists the packages one by one (compat/ and the plugin install under other names), so a
    new subpackage left off the list would be missing from the wheel while the editable install, which maps
    whole folders, still imports it: every folder with an ``__init__.py`` under a listed package must be
    listed itself."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the other interpreters run the same check
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]

    def source(package: str) -> Path:  # setuptools' rule: the longest mapped prefix, then the rest as folders
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            if ".".join(parts[:cut]) in package_dir:
                return (REPO / package_dir[".".join(parts[:cut])]).joinpath(*parts[cut:]).resolve()
        return REPO.joinpath(*parts).resolve()

    listed = {source(package) for package in setuptools["packages"]}
    found = {init.parent for folder in listed for init in folder.rglob("__init__.py")}
    assert sorted(map(str, found - listed)) == []


@pytest.mark.parametrize("tool", ["trial", "twistd"])
def test_help_reactors_lists_udpio_from_any_directory(tool: str, tmp_path: Path) -> None:
    proc = _run([_script(tool), "--help-reactors"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+udpio\s+udpio's drop-in reactor", proc.stdout, re.MULTILINE), proc.stdout


def test_trial_runs_tests_on_the_udpio_reactor_from_any_directory(tmp_path: Path) -> None:
    """``trial --reactor=udpio`` as a user runs it on their own tests: a datagram over loopback."""
    (tmp_path / "test_on_udpio.py").write_text(
        textwrap.dedent(
            """
            from twisted.internet import defer, protocol, reactor
            from twisted.trial import unittest


            class OnTheUdpioReactor(unittest.TestCase):
                def test_the_global_reactor_is_udpio(self):
                    self.assertEqual(type(reactor).__module__, "udpio.compat._reactor")

                def test_a_datagram_over_loopback(self):
                    received = defer.Deferred()

                    class Receiver(protocol.DatagramProtocol):
                        def datagramReceived(self, data, addr):
                            received.callback(data)

                    port = reactor.listenUDP(0, Receiver(), interface="127.0.0.1")
                    self.addCleanup(port.stopListening)
                    port.write(b"ping", ("127.0.0.1", port.getHost().port))
                    return received.addCallback(self.assertEqual, b"ping")
            """
        )
    )
    proc = _run([_script("trial"), "--reactor=udpio", str(tmp_path / "test_on_udpio.py")], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "PASSED (successes=2)" in output, output


def test_twistd_runs_an_application_on_the_udpio_reactor_from_any_directory(tmp_path: Path) -> None:
    (tmp_path / "app.tac").write_text(
        textwrap.dedent(
            """
            from twisted.application import internet, service
            from twisted.internet import reactor
            from twisted.internet.protocol import DatagramProtocol

            class Once(DatagramProtocol):
                def startProtocol(self):
                    self.transport.write(b"ping", ("127.0.0.1", self.transport.getHost().port))

                def datagramReceived(self, data, addr):
                    print("received", data, flush=True)
                    reactor.stop()

            application = service.Application("udpio-packaging-test")
            internet.UDPServer(0, Once(), interface="127.0.0.1").setServiceParent(application)
            """
        )
    )
    proc = _run([_script("twistd"), "--reactor=udpio", "-n", "--pidfile=", "--logfile=-", "-y", "app.tac"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reactor class: udpio.compat._reactor.UdpioReactor" in proc.stdout, proc.stdout
    assert "received b'ping'" in proc.stdout, proc.stdout


def test_the_install_makes_no_twisted_package(tmp_path: Path) -> None:
    """With every site-packages folder dropped from ``sys.path`` after start-up (so Twisted is gone, while
    udpio's start-up hook and setuptools' editable finder stay installed), ``import twisted`` fails. Before
    issue 12 the editable finder declared a ``twisted`` namespace of its own, and it succeeded."""
    code = textwrap.dedent(
        """
        import sys
        import _udpio_twisted_plugin

        assert _udpio_twisted_plugin._FINDER in sys.meta_path, "the .pth did not install the finder"
        sys.path[:] = [entry for entry in sys.path if "-packages" not in entry]
        for name in [name for name in sys.modules if name == "twisted" or name.startswith("twisted.")]:
            del sys.modules[name]
        try:
            import twisted
        except ModuleNotFoundError as exc:
            print("absent:", exc.name)
        else:
            print("found:", twisted)
        """
    )
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "absent: twisted", proc.stdout
