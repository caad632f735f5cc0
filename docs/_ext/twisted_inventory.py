"""An intersphinx inventory of the installed Twisted, written at build time (no network is needed).

Twisted publishes its API reference with pydoctor at https://docs.twisted.org/en/stable/api/ and an
``objects.inv`` beside it, but a build here cannot fetch it, and pydoctor needs about a minute to make it
from Twisted's sources. udpio's pages only refer to Twisted's networking API, so this module lists the
public names of :data:`MODULES` from the installed package, in pydoctor's URL scheme (a module or a class has
a page of its own, its members are anchors on it; checked against pydoctor's own inventory of Twisted 26.10),
and writes them with sphobjinv. A reference to a name Twisted does not have still fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
from typing import Any

import sphobjinv as soi
import twisted
from zope.interface.interface import InterfaceClass

#: Where the links point.
BASE_URL = "https://docs.twisted.org/en/stable/api/"
#: The Twisted modules udpio's API and pages refer to.
MODULES = (
    "twisted.internet.abstract",
    "twisted.internet.address",
    "twisted.internet.asyncioreactor",
    "twisted.internet.base",
    "twisted.internet.defer",
    "twisted.internet.error",
    "twisted.internet.interfaces",
    "twisted.internet.main",
    "twisted.internet.posixbase",
    "twisted.internet.protocol",
    "twisted.internet.task",
    "twisted.internet.udp",
    "twisted.logger",
    "twisted.python.failure",
    "twisted.python.log",
)


def _members(owner: Any) -> dict[str, str]:
    """Public members of a class or a zope interface, by role."""
    found: dict[str, str] = {}
    if inspect.isclass(owner):
        for name, value in vars(owner).items():
            if name.startswith("_"):
                continue
            method = inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod))
            found[name] = "method" if method else "attribute"
    else:  # a zope.interface InterfaceClass: names() lists its methods and attributes
        for name in owner.names():
            found[name] = "method" if callable(owner[name]) else "attribute"
    return found


def entries() -> list[soi.DataObjStr]:
    """One inventory entry per public module, class, interface, function and member of :data:`MODULES`."""
    out: list[soi.DataObjStr] = []

    def add(name: str, role: str, uri: str) -> None:
        out.append(soi.DataObjStr(name=name, domain="py", role=role, priority="1", uri=uri, dispname="-"))

    for module_name in MODULES:
        module = importlib.import_module(module_name)
        add(module_name, "module", f"{module_name}.html")
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module_name:
                continue
            full = f"{module_name}.{name}"
            if inspect.isclass(value) or isinstance(value, InterfaceClass):
                add(full, "class", f"{full}.html")
                for member, role in _members(value).items():
                    add(f"{full}.{member}", role, f"{full}.html#{member}")
            elif inspect.isfunction(value):
                add(full, "function", f"{module_name}.html#{name}")
    return out


def write(path: pathlib.Path) -> pathlib.Path:
    """Write the inventory to ``path`` (its folder is made) and return it."""
    inventory = soi.Inventory()
    inventory.project = "Twisted"
    inventory.version = twisted.__version__
    inventory.objects.extend(entries())
    path.parent.mkdir(parents=True, exist_ok=True)
    soi.writebytes(str(path), soi.compress(inventory.data_file(contract=True)))
    return path
