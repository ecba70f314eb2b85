"""In-memory datasets: every dataset plugin returns a :class:`DataBundle`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - a bundle holds tensors; declaring it needs no torch
    import torch


@dataclass
class DataBundle:
    """Train and test tensors of a classification task.

    ``augment`` (optional) maps a training batch ``x`` to an augmented batch; it is
    applied by the trainer only, never when measuring.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    def to(self, device: torch.device | str) -> DataBundle:
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))
