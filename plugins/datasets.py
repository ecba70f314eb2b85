"""Built-in datasets that need no download: MNIST-1D (generated) and scikit-learn's digits."""

from __future__ import annotations

import random

import numpy as np
import torch
from pydantic import Field

import genbench
from genbench.components import Dataset, Params
from genbench.data import DataBundle


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return x, y
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    return x[idx], y[idx]


def _bundle(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
            n_classes: int) -> DataBundle:
    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return DataBundle(name, f(x), g(y), f(xt), g(yt), n_classes)


class MNIST1D(Dataset):
    """MNIST-1D (Greydanus 2020), generated locally by the mnist1d package: 40-long signals, 10 classes."""

    name = "mnist1d"
    version = "1"

    class Params(Params):
        num_samples: int = Field(4000, ge=20, description="total samples before the train/test split")
        train_split: float = Field(0.8, gt=0, lt=1)
        generator_seed: int = Field(42, description="seed of the mnist1d generator")
        n_train: int | None = Field(None, ge=1, description="subsample the training set")
        layout: str = Field("flat", pattern="^(flat|channels)$",
                            description="'flat' (N, 40) for MLPs or 'channels' (N, 1, 40) for 1-D CNNs")

    def load(self) -> DataBundle:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = self.params.num_samples
        args.train_split = self.params.train_split
        args.seed = self.params.generator_seed
        # make_dataset reseeds numpy's and random's global RNGs: restore them afterwards.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        x, y = _subset(d["x"], d["y"], self.params.n_train, self.params.generator_seed)
        xt = d["x_test"]
        if self.params.layout == "channels":
            x, xt = x[:, None, :], xt[:, None, :]
        return _bundle("mnist1d", x, y, xt, d["y_test"], 10)


class Digits(Dataset):
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn), scaled to [0, 1]."""

    name = "digits"
    version = "1"

    class Params(Params):
        test_fraction: float = Field(0.3, gt=0, lt=1)
        split_seed: int = 0
        layout: str = Field("flat", pattern="^(flat|image)$",
                            description="'flat' (N, 64) or 'image' (N, 1, 8, 8)")

    def load(self) -> DataBundle:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.data.astype(np.float32) / 16.0
        y = d.target
        perm = np.random.default_rng(self.params.split_seed).permutation(len(y))
        n_test = int(round(len(y) * self.params.test_fraction))
        test, train = perm[:n_test], perm[n_test:]
        if self.params.layout == "image":
            x = x.reshape(-1, 1, 8, 8)
        return _bundle("digits", x[train], y[train], x[test], y[test], 10)


@genbench.hookimpl
def register_datasets(register):
    register(MNIST1D)
    register(Digits)
