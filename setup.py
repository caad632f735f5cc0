"""Build steps pyproject.toml cannot declare; everything else (metadata, packages) is in pyproject.toml.

1. The optional compiled I/O core, ``udpio._core``. The extension is optional, as aiohttp's, yarl's and
   multidict's are: where it cannot be built (no C compiler, no Python headers, not Linux, not CPython) the
   install still succeeds with a warning, and udpio runs its pure-Python path (``udpio.IO_CORE`` says which
   one runs). ``UDPIO_NO_EXTENSIONS=1`` (any non-empty value) skips the build, and at run time makes udpio
   ignore an extension that is installed.
2. udpio-twisted-plugin.pth: one line at the top of site-packages that starts ``_udpio_twisted_plugin`` (the
   Twisted plugin's finder, compat/twisted_plugin/__init__.py says why it exists). Setuptools has no setting
   for a file at the top of site-packages, in a wheel or in an editable install, hence the two commands below.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel
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


PTH_NAME = "udpio-twisted-plugin.pth"
# site.py runs a .pth line that starts with "import". In an editable install _udpio_twisted_plugin is found by
# setuptools' finder, which its own __editable__.udpio-*.pth installs: site.py reads .pth files in sorted
# order, and "__editable__" sorts before "udpio".
PTH_LINE = "import _udpio_twisted_plugin; _udpio_twisted_plugin.install()\n"


class build_py_with_pth(build_py):
    """The wheel: the .pth goes to the top of build_lib, which is the top of the wheel (site-packages)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # the editable wheel gets it from editable_wheel_with_pth
            with open(os.path.join(self.build_lib, PTH_NAME), "w", encoding="utf-8") as pth:
                pth.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_NAME)]


class editable_wheel_with_pth(editable_wheel):
    """The editable wheel: setuptools writes its own files through a "strategy" object; this adds the .pth
    the same way, so it is in the wheel's RECORD and ``pip uninstall`` removes it. (``_select_strategy`` is
    setuptools' internal, the same in setuptools 77 (our minimum) and 84; should it change, the editable
    install has no .pth and tests/test_packaging.py fails.)"""

    def _select_strategy(self, name: str, tag: str, build_lib: Any) -> Any:
        return _AddPth(super()._select_strategy(name, tag, build_lib))


class _AddPth:
    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self._strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_LINE.encode("utf-8"))

    def __enter__(self) -> _AddPth:
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._strategy.__exit__(*exc_info)


setup(
    ext_modules=extensions,
    cmdclass={"build_ext": OptionalBuildExt, "build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth},
)
