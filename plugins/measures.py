"""Built-in complexity measures (science.md section 2). Bigger = predicts worse generalization.

Every measure reads weight matrices from the context: Linear and Conv weights,
biases excluded, conv kernels reshaped to (C_out, C_in*kh*kw), in float64.
"""

from __future__ import annotations

import torch

import genbench
from genbench.components import Measure


class FrobeniusDistance(Measure):
    """Distance from initialization: sum_l ||W^F_l - W^0_l||_F^2."""

    name = "frobenius_distance"
    version = "1"

    def compute(self, ctx):
        final, init = ctx.weights(), ctx.weights(initial=True)
        return float(sum(((final[n] - init[n]) ** 2).sum() for n in final))


class ParameterNorm(Measure):
    """Squared parameter norm: sum_l ||W^F_l||_F^2."""

    name = "parameter_norm"
    version = "1"

    def compute(self, ctx):
        return float(sum((w ** 2).sum() for w in ctx.weights().values()))


class SpectralNorm(Measure):
    """Spectral distance from initialization: sum_l ||W^F_l - W^0_l||_2^2 (top singular value squared)."""

    name = "spectral_norm"
    version = "1"

    def compute(self, ctx):
        final, init = ctx.weights(), ctx.weights(initial=True)
        return float(sum(torch.linalg.matrix_norm(final[n] - init[n], ord=2) ** 2 for n in final))


@genbench.hookimpl
def register_measures(register):
    register(FrobeniusDistance)
    register(ParameterNorm)
    register(SpectralNorm)
