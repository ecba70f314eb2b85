"""Built-in model families. Every hidden layer ends in a :class:`genbench.taps.Tap`."""

from __future__ import annotations

import math

from pydantic import Field
from torch import nn

import genbench
from genbench.components import ModelFamily, Params
from genbench.taps import Tap, number_taps

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class MLP(ModelFamily):
    """Fully connected network: depth hidden layers of `width` units (Linear -> [BatchNorm] -> activation -> Tap)."""

    name = "mlp"
    version = "1"

    class Params(Params):
        depth: int = Field(2, ge=1, le=64, description="number of hidden layers")
        width: int = Field(64, ge=1, description="units per hidden layer")
        widths: list[int] | None = Field(None, description="explicit hidden widths (overrides depth/width)")
        activation: str = Field("relu", pattern="^(relu|tanh|sigmoid|gelu)$")
        batch_norm: bool = False
        bias: bool = True

    def build(self, input_shape, n_classes):
        p = self.params
        widths = p.widths or [p.width] * p.depth
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        fan_in = math.prod(input_shape)
        for w in widths:
            layers.append(nn.Linear(fan_in, w, bias=p.bias))
            if p.batch_norm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(Tap(ACTIVATIONS[p.activation]()))
            fan_in = w
        layers.append(nn.Linear(fan_in, n_classes, bias=p.bias))
        return number_taps(nn.Sequential(*layers))


@genbench.hookimpl
def register_models(register):
    register(MLP)
