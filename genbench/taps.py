"""Taps: where regularizers reach into a network.

Every model family puts a :class:`Tap` in place of each hidden layer's activation
function. A tap sees the pre-activation ``h`` (forward value; a handler may hook
its gradient, the "node loss" of the paper) and the activation ``a`` after the
nonlinearity (a handler may replace it, e.g. dropout). Handlers also get a call
after every optimizer step (weight noise). So dropout, reverse noise and weight
noise are the same kind of thing, and any family supports all of them.

Noise acts only in training mode, or inside :func:`noise_active` (the dropout-aware
Laplace estimator needs the noise with the rest of the model in eval mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from genbench.components import TapHandler  # noqa: F401 - defined without torch, used here


class Tap(nn.Module):
    """The activation of hidden layer ``index``, with regularizer handlers around it."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation
        self.index = -1  # set by number_taps()
        self.handlers: list[TapHandler] = []
        self.force_noise = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        active = (self.training or self.force_noise) and self.handlers
        if active:
            for handler in self.handlers:
                h = handler.preactivation(self, h)
        a = self.activation(h)
        if active:
            for handler in self.handlers:
                a = handler.activation(self, a)
        return a

    def extra_repr(self) -> str:
        return f"index={self.index}"


def taps(model: nn.Module) -> list[Tap]:
    """The model's taps, in forward order (module registration order)."""
    return [m for m in model.modules() if isinstance(m, Tap)]


def number_taps(model: nn.Module) -> nn.Module:
    """Give each tap its hidden-layer index; model families call this at the end of build()."""
    for i, tap in enumerate(taps(model)):
        tap.index = i
    return model


def attach(model: nn.Module, handlers: list[TapHandler]) -> None:
    """Bind ``handlers`` to every tap of ``model`` (replacing any bound before)."""
    for tap in taps(model):
        tap.handlers = list(handlers)


def after_step(model: nn.Module) -> None:
    """Run every handler's weight-level hook once (after an optimizer step)."""
    seen: list[TapHandler] = []
    for tap in taps(model):
        for handler in tap.handlers:
            if not any(handler is s for s in seen):
                seen.append(handler)
    for handler in seen:
        handler.after_step(model)


@contextmanager
def noise_active(model: nn.Module, active: bool = True) -> Iterator[None]:
    """Apply the regularizers' forward noise even in eval mode (for dropout-aware estimates)."""
    tap_list = taps(model)
    before = [t.force_noise for t in tap_list]
    for t in tap_list:
        t.force_noise = active
    try:
        yield
    finally:
        for t, b in zip(tap_list, before):
            t.force_noise = b


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose weights the measures and volume estimators read (Linear, Conv)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
