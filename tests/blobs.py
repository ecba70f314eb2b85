"""A tiny in-memory dataset for engine tests, registered as a plugin by this module
(process and Ray workers re-import it by name)."""

from __future__ import annotations

import torch

import genbench
from genbench.components import Dataset, Params
from genbench.data import DataBundle


class Blobs(Dataset):
    """Gaussian blobs around 3 random centres: instant to make, easy to learn."""

    name = "blobs"
    version = "1"

    class Params(Params):
        n_train: int = 96
        n_test: int = 48
        features: int = 12
        spread: float = 1.5
        seed: int = 123
        layout: str = "flat"

    def load(self) -> DataBundle:
        p = self.params
        g = torch.Generator().manual_seed(p.seed)
        centers = torch.randn(3, p.features, generator=g) * p.spread
        y = torch.arange(p.n_train + p.n_test) % 3
        x = centers[y] + torch.randn(len(y), p.features, generator=g)
        if p.layout == "channels":
            x = x[:, None, :]
        k = p.n_train
        return DataBundle("blobs", x[:k], y[:k], x[k:], y[k:], 3)


@genbench.hookimpl
def register_datasets(register):
    register(Blobs)
