"""A module imported on first use, for plugin modules that must load without torch.

The registry imports every plugin module to read its components' names, versions and
Params; importing torch there would cost every command (a no-op rerun, ``genbench
plugins``) about a second. A plugin whose methods need torch can write::

    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

at module level and use ``torch.x`` in its methods as usual: torch is imported by the
first attribute read. Module-level code that *reads* an attribute (``class
X(nn.Module)``, ``{"relu": nn.ReLU}``) imports it at once; keep that inside functions.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it when an attribute is first read."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return LazyModule(name)
