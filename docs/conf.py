"""Sphinx configuration of udpio's documentation.

Built by CI (.ci/run) with ``sphinx-build -W -n --keep-going docs docs/_build/html``: every warning fails the
build, and ``-n`` (nitpicky) makes every cross-reference that does not resolve a warning, so a docstring that
names a class udpio no longer has fails CI. Pages are MyST Markdown (the README's tables and fences move here as
they are) and reStructuredText; ```` ```python ```` fences run as tests (tests/test_docs.py), ```` ```py ````
fences are fragments and do not.

Intersphinx needs no network: Python's inventory comes from the Debian package python3-doc (installed by
.ci/run), else from docs.python.org; Twisted's is written at build time from the installed Twisted
(_ext/twisted_inventory.py).
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import sys
from typing import Any

from sphinx.application import Sphinx
from sphinx.ext import intersphinx

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import twisted_inventory  # noqa: E402  # from _ext/, put on sys.path just above
import udpio.compat  # noqa: E402

import udpio  # noqa: E402

project = "udpio"
author = "the udpio authors"
copyright = "the udpio authors"
release = version = udpio.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinxarg.ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

html_theme = "furo"
html_title = f"udpio {release}"
pygments_style = "sphinx"

# MyST: ```{directive}``` fences, definition lists, heading anchors for links like [x](safety.md#counters).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference ----------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Defaults as written (``clock=time.monotonic``, not an unparseable ``<built-in function monotonic>``).
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}

# -- cross-references ---------------------------------------------------------------------------------------
nitpicky = True


def _python_inventory() -> str | None:
    """A local copy of Python's objects.inv (``$UDPIO_PYTHON_INV``, else Debian's python3-doc), or None to
    fetch https://docs.python.org/3/objects.inv."""
    explicit = os.environ.get("UDPIO_PYTHON_INV")
    if explicit:
        return explicit
    found = sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"))
    return found[-1] if found else None


intersphinx_mapping = {
    "python": ("https://docs.python.org/3", _python_inventory()),
    "twisted": (twisted_inventory.BASE_URL, str(twisted_inventory.write(HERE / "_build" / "twisted-objects.inv"))),
}

#: Targets with no inventory entry to link to, each with its reason.
nitpick_ignore = [
    # Python's docs describe the AF_* constants, not the enum class that holds them: no entry to link to.
    ("py:class", "socket.AddressFamily"),
]
nitpick_ignore_regex = [
    # Type variables of generic signatures (P: the protocol type, T: a result type, _Item: a batch item) have no
    # page of their own.
    ("py:class", r"udpio\.(compat\.)?_\w+\.([PT]|_Item)"),
]


#: Private type aliases that public signatures use, and the API page's entry for each.
PRIVATE_ALIASES = {"InterfaceSpec": "udpio._interfaces.InterfaceSpec"}


def _public_name(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Link ``asyncio.events.AbstractEventLoop`` (the name annotations carry) to ``asyncio.AbstractEventLoop``
    (the name Python's docs index), likewise for asyncio's other submodules and the C module ``_asyncio``;
    link a private alias of :data:`PRIVATE_ALIASES` to its entry."""
    target = node.get("reftarget", "")
    if target in PRIVATE_ALIASES:
        py = env.get_domain("py")
        return py.resolve_xref(env, node["refdoc"], app.builder, "data", PRIVATE_ALIASES[target], node, contnode)
    module, _, name = target.rpartition(".")
    if module not in ("_asyncio", "asyncio.events", "asyncio.protocols", "asyncio.transports", "asyncio.tasks"):
        return None
    node["reftarget"] = f"asyncio.{name}"
    return intersphinx.missing_reference(app, env, node, contnode)


def _plain_repository_links(app: Sphinx, path: pathlib.Path, docname: str, content: list[str]) -> None:
    """Two things benchmarks/RESULTS.md does that read well on a forge and not here: links into the repository
    (``[x](../udpio/bench/servers/)``) are no page, so they show as the paths they name; and the benchmark's
    report tables, pasted under ``##`` sections, carry ``####`` titles, one level lower here."""
    if pathlib.Path(path).name == "RESULTS.md":
        text = re.sub(r"\[([^\]]+)\]\((\.\./[^)]+)\)", r"\1 (\2)", content[0])
        content[0] = re.sub(r"^#### ", "### ", text, flags=re.MULTILINE)


def _directive_for(module: str, name: str) -> str:
    value = getattr(sys.modules[module], name)
    if isinstance(value, type) and issubclass(value, BaseException):
        return f".. autoexception:: {module}.{name}"
    if isinstance(value, type):
        return f".. autoclass:: {module}.{name}"
    if callable(value):
        return f".. autofunction:: {module}.{name}"
    return f".. autodata:: {module}.{name}"


def _every_export_on_the_api_page(app: Sphinx, docname: str, source: list[str]) -> None:
    """The API page groups what udpio exports by topic; a name added to ``__all__`` that the page does not
    name yet is appended under "Not filed yet", so autodoc documents every export and none goes missing."""
    if docname != "api":
        return
    missing = [
        (module.__name__, name)
        for module in (udpio, udpio.compat)
        for name in module.__all__
        # named as "udpio.NAME", as ".. py:data:: NAME", or on a continuation line of a py:data directive
        if not re.search(rf"(\b{re.escape(module.__name__)}\.|:: ){name}\b|^ +{name}$", source[0], re.MULTILINE)
    ]
    if missing:
        lines = "\n".join(_directive_for(module, name) for module, name in missing)
        source[0] += f"\n## Not filed yet\n\n```{{eval-rst}}\n{lines}\n```\n"


def _api_page_always_read(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    """The API page depends on ``__all__``, not only on its own text: read it on every build."""
    return ["api"]


def setup(app: Sphinx) -> None:
    app.connect("source-read", _every_export_on_the_api_page)
    app.connect("env-get-outdated", _api_page_always_read)
    app.connect("missing-reference", _public_name)
    app.connect("include-read", _plain_repository_links)
