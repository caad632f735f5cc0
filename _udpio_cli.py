"""Start of the ``udpio`` console script, kept outside the udpio package on purpose.

Importing udpio (its ``__init__`` imports the whole library and asyncio, about 0.3 s) is most of the
command's start-up. A Ctrl-C in that window must end the command as a Ctrl-C at any later moment does,
quietly with status 0 (see udpio._cli), not with a traceback: so the import happens here, inside a ``try``.
A module inside the package could not do that, as its package is imported before it.
``python -m udpio`` imports the package before any of its code runs and keeps that window.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the ``udpio`` console script: import the command line, then run it."""
    try:
        from udpio._cli import main as run_command  # noqa: PLC0415  # the import is what is guarded
    except KeyboardInterrupt:
        sys.exit(0)  # nothing has run yet: stop as udpio._cli.main does for a Ctrl-C before the loop starts
    sys.exit(run_command())


if __name__ == "__main__":
    main()
