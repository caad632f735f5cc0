"""Twisted plugin dropin: makes ``trial --reactor=udpio`` and ``twistd --reactor=udpio`` install udpio's
drop-in reactor (:mod:`udpio.compat._reactor`).

Installed into site-packages' ``twisted/plugins/`` by udpio's packaging. This directory must have no
``__init__.py``: ``twisted.plugins`` extends its ``__path__`` with every ``twisted/plugins`` directory on
``sys.path`` that is not a package of its own (``twisted.plugin.pluginPackagePaths``).
"""

from twisted.application.reactors import Reactor

udpio = Reactor(
    "udpio",
    "udpio.compat._reactor",
    "udpio's drop-in reactor: Twisted's asyncio reactor on uvloop (or asyncio, $UDPIO_LOOP), UDP on udpio.",
)
