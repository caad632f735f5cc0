"""Write flow control on a real socket whose send buffer fills (a rate-limited ``lo`` in a namespace)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from . import _netns

SCENARIO = pathlib.Path(__file__).parent / "scenarios" / "flow_control.py"
pytestmark = pytest.mark.netns


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pause_resume_and_hard_limit_drop(loop: str) -> None:
    reason = _netns.skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("tc") is None:
        pytest.skip("needs tc (iproute2) to slow the namespace's loopback")
    with _netns.netns("fc") as ns:
        # 1 Mbit/s with a deep queue: the qdisc holds datagrams, so the sender's socket buffer fills.
        subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
             "tbf", "rate", "1mbit", "burst", "2kb", "limit", "1mb"],
            check=True, capture_output=True, timeout=30,
        )
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(SCENARIO), loop],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loop"] == loop
    assert report["events"][:2] == ["pause", "resume"]
    assert report["buffered_peak"] > 8_000  # above the high-water mark: that is why it paused
    assert report["buffered_peak"] <= 20_000  # never above the hard limit
    assert report["dropped_send_buffer"] > 0
    assert report["sent"] + report["dropped_send_buffer"] == 40
    assert report["received"] == report["sent"]
    assert report["buffer_after"] == 0
    assert report["close_had_buffered"] > 0 and report["close_flushed"] == 5
    assert report["abort_pending"] > 0
    assert report["abort_dropped_on_close"] == report["abort_pending"]
