"""Network namespaces for tests: created with unique names, always removed, never touching the host's own
interfaces or routes.

``netns()`` makes one (``ip netns add``) and deletes it on exit, whatever happened inside. ``entered()``
moves the *calling thread* into a namespace and back (``setns(2)`` with ``CLONE_NEWNET`` is per thread), so
an in-process test can make its sockets there: a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
#: Every ``ip`` call is bounded: creating or deleting a namespace takes milliseconds.
IP_TIMEOUT = 20.0


@functools.cache
def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or ``None`` when they can (probed once by making one: root in
    a container without CAP_SYS_ADMIN cannot)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = unique_name("probe")
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NS] ARGS``; raise with its stderr when it fails and ``check`` is set."""
    command = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def sysctl(ns: str, *settings: str) -> None:
    """Set sysctls inside namespace ``ns`` (``net.*`` sysctls are per namespace)."""
    command = ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings]
    subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT, check=True)


def unique_name(tag: str) -> str:
    """A namespace name no other test run uses (pid and random bytes)."""
    return f"udpio-{tag}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def netns(tag: str) -> Iterator[str]:
    """A fresh network namespace (only ``lo``, down), deleted on exit even when the body fails."""
    name = unique_name(tag)
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", ns=name)
        yield name
    finally:
        ip("netns", "del", name, check=False)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the calling thread in namespace ``name`` until exit, then back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)
