"""genbench: benchmark generalization measures on populations of trained networks.

Library entry points (all lazy: importing genbench does not import torch)::

    import genbench
    result = genbench.run("default", store="runs/default")   # same data as `genbench run --json`
"""

from __future__ import annotations

from typing import Any

from genbench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "run", "__version__"]


def run(suite: Any = "default", **kwargs: Any) -> dict[str, Any]:
    """Train, measure and score a suite; see :func:`genbench.runner.run`."""
    from genbench.runner import run as _run

    return _run(suite, **kwargs)
