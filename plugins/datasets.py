"""Built-in datasets.

Offline: MNIST-1D (generated) and scikit-learn's digits. Torchvision-backed image sets
(``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion_mnist``) read the files a user
put under ``root`` with torchvision's own classes (downloading only with
``download=true``), normalise with the standard per-channel constants and can augment
training batches. See docs/models-and-data.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

import genbench
from genbench.components import Dataset, Params
from genbench.data import DataBundle

log = logging.getLogger(__name__)


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return x, y
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    return x[idx], y[idx]


def _bundle(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
            n_classes: int) -> DataBundle:
    import torch  # here, not at module level: the registry loads this module without torch

    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return DataBundle(name, f(x), g(y), f(xt), g(yt), n_classes)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached_arrays(what: dict[str, Any], make: Callable[[], dict[str, np.ndarray]],
                  root: str | None = None) -> dict[str, np.ndarray]:
    """``make()``'s arrays, generated once and kept under ``data_root()/generated`` at a
    content key of ``what`` (everything the arrays depend on), with the SHA-256 of their
    bytes: a file that does not match it (truncated, edited) is regenerated. Regenerating
    MNIST-1D took 0.6-1.2 s per process; reading it back takes milliseconds."""
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
    path = os.path.join(data_root(root), "generated", f"{what.get('name', 'data')}-{key}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files if k != "sha256"}
                if str(f["sha256"]) == _digest(arrays):
                    return arrays
            why = "failed its integrity check"
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            why = f"is unreadable ({type(exc).__name__})"
        log.warning("cached dataset %s %s: regenerating it", path, why)
    arrays = make()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, sha256=np.array(_digest(arrays)), **arrays)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError as exc:  # a read-only data folder: work without the cache
        log.debug("could not cache dataset at %s: %s", path, exc)
    return arrays


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

    def generate(self) -> dict[str, np.ndarray]:
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
        return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}

    def load(self) -> DataBundle:
        from importlib.metadata import version

        what = {"name": "mnist1d", "version": self.version, "mnist1d": version("mnist1d"),
                "num_samples": self.params.num_samples, "train_split": self.params.train_split,
                "generator_seed": self.params.generator_seed}
        d = cached_arrays(what, self.generate)
        x, y = _subset(d["x"], d["y"], self.params.n_train, self.params.generator_seed)
        xt = d["x_test"]
        if self.params.layout == "channels":
            x, xt = x[:, None, :], xt[:, None, :]
        return _bundle("mnist1d", x, y, xt, d["y_test"], 10)

    def shape(self) -> dict[str, Any]:
        """Sizes without loading (for run-time estimates)."""
        n_train = int(self.params.num_samples * self.params.train_split)
        n_train = min(n_train, self.params.n_train or n_train)
        return {"input_shape": (40,) if self.params.layout == "flat" else (1, 40), "n_classes": 10,
                "n_train": n_train, "n_test": self.params.num_samples - int(
                    self.params.num_samples * self.params.train_split)}


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

    def shape(self) -> dict[str, Any]:
        """Sizes without loading (for run-time estimates)."""
        n_test = int(round(1797 * self.params.test_fraction))
        return {"input_shape": (64,) if self.params.layout == "flat" else (1, 8, 8),
                "n_classes": 10, "n_train": 1797 - n_test, "n_test": n_test}


# -- torchvision-backed image datasets ----------------------------------------------------
def data_root(root: str | None) -> str:
    """The user's data folder: ``root``, else $GENBENCH_DATA, else ~/.genbench/data."""
    return os.path.expanduser(root or os.environ.get("GENBENCH_DATA") or "~/.genbench/data")


class RandomCropFlip:
    """Training-batch augmentation: random crop after padding ``pad`` pixels on each side
    (filled with ``fill``, per channel: black in the data's units), and, if ``flip``, a
    horizontal flip with probability 1/2. Vectorised over the batch; picklable."""

    def __init__(self, pad: int, flip: bool, fill: list[float]):
        self.pad, self.flip, self.fill = pad, flip, list(fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        b, c, h, w = x.shape
        p = self.pad
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                     torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out


class ImageParams(Params):
    root: str | None = Field(None, description="folder holding the dataset's files, as torchvision "
                             "lays them out (default: $GENBENCH_DATA, else ~/.genbench/data)")
    download: bool = Field(False, description="let torchvision download the files (needs a network)")
    verify: bool = Field(True, description="keep torchvision's MD5 check of the files (CIFAR, SVHN); "
                         "false loads files that fail it, e.g. re-packed copies or test fixtures")
    n_train: int | None = Field(None, ge=1, description="random subset of the training set")
    n_test: int | None = Field(None, ge=1, description="random subset of the test set")
    subset_seed: int = 0
    normalize: bool = Field(True, description="subtract the standard per-channel mean, divide by std")
    augment: bool = Field(False, description="random crop (+ flip where it makes sense) of training batches")
    layout: Literal["image", "flat"] = Field("image", description="(N, C, H, W) or flattened (N, C*H*W)")


class TorchvisionImages(Dataset):
    """Base of the torchvision-backed loaders: subclasses say which class, sizes and constants."""

    version = "1"
    Params = ImageParams
    n_classes: ClassVar[int] = 10
    sizes: ClassVar[tuple[int, int]] = (0, 0)  # official (train, test) sizes
    image_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    crop_pad: ClassVar[int] = 4
    flip: ClassVar[bool] = False

    # -- per-dataset pieces ----------------------------------------------------------
    def torchvision_class(self, verify: bool) -> type:
        raise NotImplementedError

    def open(self, cls: type, root: str, train: bool) -> Any:
        return cls(root, train=train, download=self.params.download)

    @staticmethod
    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images (N, C, H, W), int labels) from a torchvision dataset object."""
        raise NotImplementedError

    def expected_files(self, root: str) -> list[str]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def load(self) -> DataBundle:
        p = self.params
        root = data_root(p.root)
        cls = self.torchvision_class(p.verify)
        try:
            train, test = self.open(cls, root, True), self.open(cls, root, False)
        except RuntimeError as exc:
            missing = [f for f in self.expected_files(root) if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(
                    f"{self.name}: not found under {root} (missing {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}); put the official files there, point "
                    "dataset.root (or $GENBENCH_DATA) at them, or set download=true "
                    "(needs a network)") from None
            raise RuntimeError(
                f"{self.name}: torchvision rejected the files under {root} ({exc}); they are "
                "present but fail its MD5 check, so they are not the official files. Re-download "
                "them, or set verify=false to load them anyway (the checksums are then not "
                "compared)") from None
        x, y = self.arrays(train)
        xt, yt = self.arrays(test)
        x, y = _subset(x, y, p.n_train, p.subset_seed)
        xt, yt = _subset(xt, yt, p.n_test, p.subset_seed + 1)
        x, xt = self.scale(x), self.scale(xt)
        if p.layout == "flat":
            x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
        bundle = _bundle(self.name, x, y, xt, yt, self.n_classes)
        if p.augment:
            if p.layout == "flat":
                raise ValueError(f"{self.name}: augment=true needs layout='image'")
            bundle.augment = RandomCropFlip(self.crop_pad, self.flip, self.fill())
        return bundle

    def scale(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / 255.0
        if self.params.normalize:
            mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def fill(self) -> list[float]:
        """A black pixel in the loaded units (padding of the random crop)."""
        if not self.params.normalize:
            return [0.0] * self.image_shape[0]
        return [-m / s for m, s in zip(self.mean, self.std)]

    def shape(self) -> dict[str, Any]:
        """Sizes without loading (for run-time estimates)."""
        p = self.params
        n_train = min(self.sizes[0], p.n_train or self.sizes[0])
        n_test = min(self.sizes[1], p.n_test or self.sizes[1])
        shape = self.image_shape if p.layout == "image" else (int(np.prod(self.image_shape)),)
        return {"input_shape": shape, "n_classes": self.n_classes, "n_train": n_train,
                "n_test": n_test}


def _unverified_cifar(base: type) -> type:
    """torchvision's CIFAR class with the MD5 comparison left out (files must still exist);
    the parsing is torchvision's own."""
    from torchvision.datasets.utils import check_integrity

    class Unverified(base):
        def _check_integrity(self) -> bool:
            return all(check_integrity(os.path.join(self.root, self.base_folder, f))
                       for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not check_integrity(path):
                raise RuntimeError("Dataset metadata file not found")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Unverified.__name__ = f"Unverified{base.__name__}"
    return Unverified


class CIFAR10(TorchvisionImages):
    """CIFAR-10 through torchvision (cifar-10-batches-py under root): 50,000 + 10,000 32x32 colour images."""

    name = "cifar10"
    n_classes = 10
    sizes = (50000, 10000)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    flip = True
    torchvision_name = "CIFAR10"

    def _torchvision(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_name)

    def torchvision_class(self, verify):
        tv = self._torchvision()
        return tv if verify else _unverified_cifar(tv)

    @staticmethod
    def arrays(ds):
        return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)

    def expected_files(self, root):
        tv = self._torchvision()
        names = [f for f, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]
        return [os.path.join(root, tv.base_folder, f) for f in names]


class CIFAR100(CIFAR10):
    """CIFAR-100 (fine labels) through torchvision (cifar-100-python under root): 50,000 + 10,000 images."""

    name = "cifar100"
    n_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    torchvision_name = "CIFAR100"


class SVHN(TorchvisionImages):
    """SVHN cropped digits through torchvision (train_32x32.mat, test_32x32.mat under root); label 10 -> 0."""

    name = "svhn"
    n_classes = 10
    sizes = (73257, 26032)
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    flip = False  # digits are not mirror-symmetric

    def torchvision_class(self, verify):
        from torchvision.datasets import SVHN as tv
        from torchvision.datasets.utils import check_integrity

        if verify:
            return tv

        class UnverifiedSVHN(tv):
            def _check_integrity(self) -> bool:
                return check_integrity(os.path.join(self.root, self.filename))

        return UnverifiedSVHN

    def open(self, cls, root, train):
        return cls(root, split="train" if train else "test", download=self.params.download)

    @staticmethod
    def arrays(ds):
        return ds.data, np.asarray(ds.labels)

    def expected_files(self, root):
        return [os.path.join(root, f) for f in ("train_32x32.mat", "test_32x32.mat")]


class MNIST(TorchvisionImages):
    """MNIST through torchvision (MNIST/raw/*-ubyte under root): 60,000 + 10,000 28x28 digits."""

    name = "mnist"
    n_classes = 10
    sizes = (60000, 10000)
    image_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    crop_pad = 2
    tv_name = "MNIST"

    def torchvision_class(self, verify):
        # torchvision checks no MD5 when it reads MNIST's raw files: verify changes nothing.
        import torchvision.datasets as tvd

        return getattr(tvd, self.tv_name)

    @staticmethod
    def arrays(ds):
        return ds.data.numpy()[:, None], ds.targets.numpy()

    def expected_files(self, root):
        return [os.path.join(root, self.tv_name, "raw", f"{s}-{k}-idx{n}-ubyte")
                for s in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))]


class FashionMNIST(MNIST):
    """Fashion-MNIST through torchvision (FashionMNIST/raw/*-ubyte under root): 60,000 + 10,000 images."""

    name = "fashion_mnist"
    mean = (0.2860,)
    std = (0.3530,)
    tv_name = "FashionMNIST"


@genbench.hookimpl
def register_datasets(register):
    for cls in (MNIST1D, Digits, CIFAR10, CIFAR100, SVHN, MNIST, FashionMNIST):
        register(cls)
