"""Every ``python`` example in the README runs as written (in a subprocess, bounded in time).

Fences marked ``py`` are fragments (they show calls inside a larger program) and are not run.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
#: Examples that serve until Ctrl-C by design; the CLI tests cover that behaviour.
FOREVER = ("udpio.run(udpio.serve_echo())", "asyncio.run(udpio.serve_echo())")


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str) -> None:
    if any(marker in code for marker in FOREVER):
        pytest.skip("serves until Ctrl-C by design")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{code}\n--- stderr ---\n{done.stderr}"
