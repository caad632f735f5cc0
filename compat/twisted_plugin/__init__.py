"""Shows udpio's Twisted plugin (``trial --reactor=udpio``, ``twistd --reactor=udpio``) to Twisted.

Installed as the top-level package ``_udpio_twisted_plugin`` and started at interpreter start-up by the
one-line ``udpio-twisted-plugin.pth`` that udpio's wheel and its editable install put in site-packages (see
setup.py). It must stay cheap to import: ``sys`` and ``os`` only, which start-up has already loaded.

How Twisted finds plugins: ``twisted/plugins/__init__.py`` extends its ``__path__`` with
``<entry>/twisted/plugins`` for every ``sys.path`` entry that has no ``twisted/plugins/__init__.py``
(``twisted.plugin.pluginPackagePaths``), and ``getPlugins`` scans those folders. This package's folder holds
``twisted/plugins/udpio_reactor.py`` with no ``__init__.py`` below it, so it must be on ``sys.path`` when
``twisted.plugins`` is imported.

Why not the usual ``site-packages/twisted/plugins/udpio_reactor.py``, or this folder on ``sys.path`` for
good (a ``.pth`` path line):
- Without Twisted, a ``twisted/`` folder with no ``__init__.py`` on ``sys.path`` is a namespace package: a
  bare ``import twisted`` succeeds and misleads every probe for Twisted (issue 10: it broke udpio.compat's).
- setuptools' editable install of this project (it has a custom ``package-dir``) is an import finder, not a
  ``sys.path`` entry, so the checkout's plugin folder would never be seen (issue 12).
So :func:`install` puts a finder first on ``sys.meta_path`` that, the moment ``twisted.plugins`` is
imported, appends this folder to ``sys.path`` and finds nothing itself. Only a real Twisted can import
``twisted.plugins``, so the folder's ``twisted/`` is never a candidate for ``import twisted``, and it does not
matter whether Twisted was installed before or after udpio.

Twisted records what a plugin folder holds in a ``dropin.cache`` beside the plugins. It reloads a module newer
than the cache and, when the folder is read-only, computes the entries in memory and only logs that it could
not write: neither a stale nor an unwritable cache hides the plugin. udpio ships no cache (.ci/check_package
checks the wheel and runs the plugin from a read-only site-packages).
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing would cost every interpreter start a few milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

#: The folder that holds ``twisted/plugins/udpio_reactor.py``: this package's own (in site-packages, or in the
#: checkout for an editable install).
PLUGIN_ROOT = os.path.dirname(os.path.abspath(__file__))


class _PluginRootFinder:
    """A ``sys.meta_path`` finder that finds nothing: it only extends ``sys.path`` before ``twisted.plugins``
    computes its ``__path__``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if fullname == "twisted.plugins" and PLUGIN_ROOT not in sys.path:
            sys.path.append(PLUGIN_ROOT)
        # None: the import goes on through the next finders and loads Twisted's own twisted.plugins.


_FINDER = _PluginRootFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), ahead of the finder that loads ``twisted.plugins``."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
