"""Built-in regularizers, all acting through the model's taps."""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

import genbench
from genbench.components import Params, Regularizer
from genbench.taps import Tap, TapHandler


class DropoutHandler(TapHandler):
    def __init__(self, rates: list[float] | float):
        self.rates = rates

    def rate(self, tap: Tap) -> float:
        if isinstance(self.rates, list):
            return self.rates[tap.index] if tap.index < len(self.rates) else self.rates[-1]
        return self.rates

    def activation(self, tap: Tap, a: torch.Tensor) -> torch.Tensor:
        q = self.rate(tap)
        if q <= 0:
            return a
        # eta_i = 0 w.p. q, 1/(1-q) otherwise (science.md section 4): E[eta] = 1.
        keep = torch.empty_like(a).bernoulli_(1.0 - q)
        return a * keep / (1.0 - q)


class Dropout(Regularizer):
    """Node dropout after every hidden activation: eta = 0 w.p. rate, else 1/(1-rate)."""

    name = "dropout"
    version = "1"

    class Params(Params):
        rate: float = Field(0.0, ge=0, lt=1, description="drop probability for every hidden layer")
        rates: list[float] | None = Field(None, description="per-hidden-layer rates (last one repeats)")

        @field_validator("rates")
        @classmethod
        def _rates_in_range(cls, v):
            if v is not None and (not v or any(not 0 <= r < 1 for r in v)):
                raise ValueError("every rate must be in [0, 1)")
            return v

    def bind(self, model):
        rates = self.params.rates if self.params.rates is not None else self.params.rate
        if (isinstance(rates, list) and not any(rates)) or rates == 0:
            return None
        return DropoutHandler(rates)


@genbench.hookimpl
def register_regularizers(register):
    register(Dropout)
