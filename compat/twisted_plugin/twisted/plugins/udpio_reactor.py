"""Twisted plugin dropin: makes ``trial --reactor=udpio`` and ``twistd --reactor=udpio`` install udpio's
drop-in reactor (:mod:`udpio.compat._reactor`).

Twisted finds it through the folder that holds ``twisted/plugins/`` here, which ``_udpio_twisted_plugin``
(this folder's ``__init__.py`` two levels up) puts on ``sys.path`` when Twisted imports ``twisted.plugins``.
Neither ``twisted/`` nor ``twisted/plugins/`` here may have an ``__init__.py``: ``twisted.plugins`` extends
its ``__path__`` only with ``twisted/plugins`` folders that are not packages of their own
(``twisted.plugin.pluginPackagePaths``).
"""

from twisted.application.reactors import Reactor

udpio = Reactor(
    "udpio",
    "udpio.compat._reactor",
    "udpio's drop-in reactor: Twisted's asyncio reactor on uvloop (or asyncio, $UDPIO_LOOP), UDP on udpio.",
)
