"""A complete third-party genbench plugin: one measure, registered through the
`genbench` entry-point group (see pyproject.toml beside this file)."""

import math

from pydantic import Field

from genbench import Measure, Params, hookimpl


class WeightCount(Measure):
    """Log of the number of weights in the measured layers (times a scale): bigger = more capacity."""

    name = "weight_count"
    version = "1"

    class Params(Params):
        scale: float = Field(1.0, gt=0, description="multiplies the result")

    def compute(self, ctx):
        n = sum(w.numel() for w in ctx.weights().values())
        return self.params.scale * math.log(n)


@hookimpl
def register_measures(register):
    register(WeightCount)
