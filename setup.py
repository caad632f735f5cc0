"""Build udpio's optional compiled I/O core, ``udpio._core`` (everything else is in pyproject.toml).

The extension is optional, as aiohttp's, yarl's and multidict's are: where it cannot be built (no C compiler,
no Python headers, not Linux, not CPython) the install still succeeds with a warning, and udpio runs its
pure-Python path (``udpio.IO_CORE`` says which one runs). ``UDPIO_NO_EXTENSIONS=1`` (any non-empty value)
skips the build, and at run time makes udpio ignore an extension that is installed.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

# recvmmsg(2), sendmmsg(2) and UDP_SEGMENT are Linux's; the C API is CPython's.
SUPPORTED = sys.implementation.name == "cpython" and sys.platform.startswith("linux")
NO_EXTENSIONS = bool(os.environ.get("UDPIO_NO_EXTENSIONS")) or not SUPPORTED

_BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing: the compiled core is an accelerator, never a requirement."""

    def run(self) -> None:
        try:
            super().run()
        except _BUILD_ERRORS as exc:  # no compiler at all: the command fails before any extension
            self._skipped(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except _BUILD_ERRORS as exc:
            self._skipped(exc)

    def _skipped(self, exc: BaseException) -> None:
        print(
            f"udpio: WARNING: the compiled I/O core was not built ({exc}); udpio will use its pure-Python path",
            file=sys.stderr,
        )


extensions = [] if NO_EXTENSIONS else [Extension("udpio._core", ["udpio/_core.c"], optional=True)]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
