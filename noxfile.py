"""The test suite on every Python udpio supports, each in its own venv: ``nox`` runs them all,
``nox -s tests-3.12`` one, ``nox -s tests-3.12 -- tests/test_api.py`` a part (arguments go to pytest).

Each session installs as the README does, ``pip install -e '.[test]'`` (through uv when nox has it): the suite
needs the editable install, since pytest puts the checkout's udpio/ first on sys.path and only setuptools'
finder maps compat/ to udpio.compat. It runs pytest without its cache (nothing to share between interpreters,
nor to race on when sessions run at once). Venvs are kept and reused.

On the current interpreter the README's one line stays the way to run the suite; .ci/run runs that, then the
other interpreters through this file (see .ci/run for how).
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]  # the classifiers in pyproject.toml name the same four

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True  # a missing interpreter fails: a skipped one would look green
nox.options.download_python = "never"  # nothing to fetch interpreters from here: find them or fail
# uv where it is installed (nox[uv]): it installs the test extra in seconds, pip in about a minute per venv.
nox.options.default_venv_backend = "uv|virtualenv"

# pyenv keeps each interpreter in ~/.pyenv/versions/X.Y.Z/bin/pythonX.Y, and its shims run only the versions
# selected with `pyenv global`/`local`: put every installed version's bin/ on PATH so nox finds pythonX.Y.
_PYENV_BINS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
os.environ["PATH"] = os.pathsep.join([*_PYENV_BINS, os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite (or the pytest arguments given after ``--``) on one interpreter."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-q", *session.posargs)
