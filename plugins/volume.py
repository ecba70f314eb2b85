"""Built-in weight-volume estimators (science.md section 1)."""

from __future__ import annotations

import genbench


@genbench.hookimpl
def register_volume_estimators(register):
    pass
