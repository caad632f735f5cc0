"""Every ``python`` example in the documentation (docs/*.md) runs as written, as the README's do
(tests/test_readme.py): each in its own interpreter, bounded in time.

Fences marked ``py`` are fragments (calls shown inside a larger program) and are not run. The documentation
itself is built, warnings as errors, by .ci/run (``sphinx-build -W -n``); these tests need no Sphinx.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).parent.parent / "docs"
#: (page, n-th python block on it, code)
BLOCKS = [
    (page.name, index, code)
    for page in sorted(DOCS.glob("*.md"))
    for index, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S))
]
#: Examples that serve until Ctrl-C by design; the CLI tests cover that behaviour.
FOREVER = ("udpio.run(udpio.serve_echo())",)


def test_the_docs_have_examples_on_every_mode_page() -> None:
    pages = {page for page, _, _ in BLOCKS}
    assert {"getting-started.md", "echo.md", "connected.md", "multicast.md", "adoption.md"} <= pages


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS, ids=[f"{page}-{i}" for page, i, _ in BLOCKS])
def test_docs_example_runs(page: str, index: int, code: str) -> None:
    if any(marker in code for marker in FOREVER):
        pytest.skip("serves until Ctrl-C by design")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{page}, python block {index}:\n{code}\n--- stderr ---\n{done.stderr}"
