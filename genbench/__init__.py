"""genbench: benchmark generalization measures on populations of trained networks.

Library entry points (all lazy: importing genbench does not import torch)::

    import genbench
    result = genbench.run("default", store="runs/default")   # same data as `genbench run --json`

A plugin needs only ``from genbench import hookimpl, Measure, Params, MeasureContext``
(and ``genbench.testing`` for its tests; see docs/writing-a-plugin.md).
"""

from __future__ import annotations

from typing import Any

from genbench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "run", "Measure", "Params", "MeasureContext", "__version__"]

_LAZY = {"Measure": "genbench.components", "Params": "genbench.components",
         "MeasureContext": "genbench.context"}


def __getattr__(name: str) -> Any:
    """The plugin author's names, imported on first use (MeasureContext needs torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genbench' has no attribute {name!r}")


def run(suite: Any = "default", **kwargs: Any) -> dict[str, Any]:
    """Train, measure and score a suite; see :func:`genbench.runner.run`."""
    from genbench.runner import run as _run

    return _run(suite, **kwargs)
