"""Network namespaces for tests: created with unique names, always removed, skipped without root/iproute2."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def ip(*args: str) -> None:
    """Run ``ip ARGS`` and fail with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


@contextmanager
def namespace(prefix: str = "udpio") -> Iterator[str]:
    """A fresh namespace with ``lo`` up; deleted on exit whatever happened."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
