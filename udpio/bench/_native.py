"""The benchmark's C programs: built at first use with the system C compiler, kept in a per-user cache.

The sources ship inside the package (``udpio/bench/native/``: ``loadgen.c``, the load generator of the
many-peer, request/response and flood workloads; ``refserver.c``, the ``c-ref`` row's server; ``common.h``),
so an installed udpio builds them as well as a checkout does. A binary is named after a hash of everything
that goes into it (sources, header, compiler command, machine), so editing a source rebuilds it and two
versions of udpio never share a stale binary. Where there is no compiler, or not Linux, the rows and
workloads that need a program are skipped with the reason (:class:`NativeUnavailable`), never failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Where the sources are (package data).
SOURCE_DIR = Path(__file__).resolve().parent / "native"
#: Each program: its one source file; every program also includes :data:`HEADERS`.
PROGRAMS: dict[str, str] = {"loadgen": "loadgen.c", "refserver": "refserver.c"}
HEADERS = ("common.h",)
#: -O2 as a C user would build a server; -pthread for refserver's control thread.
CFLAGS = ("-O2", "-pthread", "-Wall")
#: Overrides the cache directory (tests point it at a temporary one).
CACHE_ENV = "UDPIO_BENCH_CACHE"
#: A compile that takes longer than this (seconds) is taken as failed.
COMPILE_TIMEOUT = 120.0
#: Lines of compiler output quoted in the reason when a build fails.
ERROR_TAIL = 4


class NativeUnavailable(Exception):
    """A C program cannot be built here; the message is the reason the report prints."""


def cache_dir() -> Path:
    """``$UDPIO_BENCH_CACHE``, else ``$XDG_CACHE_HOME/udpio/bench``, else ``~/.cache/udpio/bench``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "udpio" / "bench"


def compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (split like a shell would), else ``cc`` on the PATH; ``None`` if neither."""
    command = shlex.split(os.environ.get("CC", "")) or ["cc"]
    found = shutil.which(command[0])
    return [found, *command[1:]] if found else None


def _key(name: str, command: list[str]) -> str:
    digest = hashlib.sha256()
    for part in (*command, *CFLAGS, platform.machine(), name):
        digest.update(part.encode() + b"\0")
    for file in (PROGRAMS[name], *HEADERS):
        digest.update(file.encode() + b"\0" + (SOURCE_DIR / file).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


#: Outcomes so far, per (program, compiler setting, cache directory): a failed build is not retried for
#: every run of the suite, and a test that changes ``$CC`` or the cache gets a fresh answer.
_outcomes: dict[tuple[str, str, str], Path | NativeUnavailable] = {}


def build(name: str) -> Path:
    """The path of the compiled program ``name`` (a key of :data:`PROGRAMS`), compiling it if the cache has no
    binary for these sources; raises :class:`NativeUnavailable` with the reason it cannot be had."""
    key = (name, os.environ.get("CC", ""), str(cache_dir()))
    if key not in _outcomes:
        try:
            _outcomes[key] = _build(name)
        except NativeUnavailable as exc:
            _outcomes[key] = exc
    outcome = _outcomes[key]
    if isinstance(outcome, NativeUnavailable):
        raise outcome
    return outcome


def unavailable(name: str) -> str | None:
    """Why ``name`` cannot be built here, or ``None`` (building it now if need be)."""
    try:
        build(name)
    except NativeUnavailable as exc:
        return str(exc)
    return None


def _build(name: str) -> Path:
    if not sys.platform.startswith("linux"):
        raise NativeUnavailable(f"the C programs need Linux (recvmmsg, sendmmsg, epoll, UDP GSO), not {sys.platform}")
    command = compiler()
    if command is None:
        wanted = os.environ.get("CC", "").strip() or "cc"
        raise NativeUnavailable(f"no C compiler: {wanted} is not on the PATH (install one, or point $CC at it)")
    if not (SOURCE_DIR / PROGRAMS[name]).is_file():
        raise NativeUnavailable(f"the C source {PROGRAMS[name]} is missing from {SOURCE_DIR}; reinstall udpio")
    target = cache_dir() / f"{name}-{_key(name, command)}"
    if os.access(target, os.X_OK):
        return target
    # Compiled under a temporary name and renamed into place: a concurrent benchmark sees either no binary
    # or a whole one, never a half-written file.
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{name}-", dir=target.parent)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the build cache {target.parent} ({exc}); set ${CACHE_ENV}") from exc
    os.close(fd)
    try:
        argv = [*command, *CFLAGS, "-I", str(SOURCE_DIR), "-o", partial, str(SOURCE_DIR / PROGRAMS[name])]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NativeUnavailable(f"the C compiler could not build {name} ({shlex.join(argv[:1])}): {exc}") from exc
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-ERROR_TAIL:]
            raise NativeUnavailable(
                f"the C compiler failed on {PROGRAMS[name]} (status {done.returncode}): "
                + (" | ".join(lines) or "no output")
            )
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return target
