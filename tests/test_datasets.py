"""Dataset loaders on tiny files written in each dataset's real on-disk format,
read through the real torchvision classes (nothing of torchvision is patched)."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from genbench.plugins import get_registry


def load(name, **params):
    cls = get_registry().get("dataset", name).cls
    return cls(cls.Params(**params)).load()


def images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# -- writers of the real formats ----------------------------------------------------------
def write_cifar10(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        x = images(n_per_batch, (3, 32, 32), i)
        y = [(i + j) % 10 for j in range(n_per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"batch {i}", "labels": y, "data": x.reshape(n_per_batch, -1),
                         "filenames": [f"{i}_{j}.png" for j in range(n_per_batch)]}, f)
        truth["train_x"].append(x)
        truth["train_y"] += y
    xt = images(3, (3, 32, 32), 99)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "test", "labels": [7, 8, 9], "data": xt.reshape(3, -1)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    truth["train_x"] = np.concatenate(truth["train_x"])
    truth.update(test_x=xt, test_y=[7, 8, 9])
    return truth


def write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, xt = images(6, (3, 32, 32), 1), images(2, (3, 32, 32), 2)
    for name, data, fine in (("train", x, [0, 17, 42, 99, 5, 63]), ("test", xt, [98, 1])):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(len(data), -1), "fine_labels": fine,
                         "coarse_labels": [v // 5 for v in fine]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return x, [0, 17, 42, 99, 5, 63], xt, [98, 1]


def write_svhn(root):
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, labels in (("train", 5, [10, 1, 2, 3, 10]), ("test", 2, [4, 10])):
        x = images(n, (3, 32, 32), n)
        # SVHN stores X as (32, 32, 3, N) and y as (N, 1), the digit 0 labelled 10
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": x.transpose(2, 3, 1, 0), "y": np.array(labels, np.uint8)[:, None]})
        out[split] = (x, [0 if v == 10 else v for v in labels])
    return out


def write_idx(root, folder):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", 6), ("t10k", 3)):
        x = images(n, (28, 28), n)
        y = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())
        out[split] = (x, y)
    return out


def normalized(x_uint8, mean, std):
    x = x_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)) / np.asarray(std, np.float32).reshape(1, -1, 1, 1)


# -- CIFAR-10 -------------------------------------------------------------------------------------
def test_cifar10_fake_files_fail_torchvisions_md5_check_with_a_clear_error(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="MD5 check.*verify=false"):
        load("cifar10", root=str(tmp_path))


def test_cifar10_loads_through_torchvision_without_md5(tmp_path):
    truth = write_cifar10(tmp_path)
    d = load("cifar10", root=str(tmp_path), verify=False)
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.train_y.tolist() == truth["train_y"] and d.test_y.tolist() == [7, 8, 9]
    cls = get_registry().get("dataset", "cifar10").cls
    want = normalized(truth["train_x"], cls.mean, cls.std)
    np.testing.assert_allclose(d.train_x.numpy(), want, rtol=1e-6, atol=1e-6)
    raw = load("cifar10", root=str(tmp_path), verify=False, normalize=False)
    np.testing.assert_allclose(raw.test_x.numpy() * 255, truth["test_x"], atol=1e-3)


def test_missing_files_name_the_root_and_the_download_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=true"):
        load("cifar10", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load("mnist", root=str(tmp_path))


def test_train_subset_is_a_seeded_subset(tmp_path):
    write_cifar10(tmp_path)
    full = load("cifar10", root=str(tmp_path), verify=False)
    a = load("cifar10", root=str(tmp_path), verify=False, n_train=7, subset_seed=3)
    b = load("cifar10", root=str(tmp_path), verify=False, n_train=7, subset_seed=3)
    assert a.n_train == 7 and torch.equal(a.train_x, b.train_x)
    # every subset image is one of the full set's, with its label
    for x, y in zip(a.train_x, a.train_y):
        i = int(torch.argmin((full.train_x - x).abs().flatten(1).sum(1)))
        assert torch.equal(full.train_x[i], x) and full.train_y[i] == y
    assert load("cifar10", root=str(tmp_path), verify=False, n_test=2).test_x.shape[0] == 2


def test_augmentation_crops_and_flips_training_batches_only(tmp_path):
    write_cifar10(tmp_path)
    d = load("cifar10", root=str(tmp_path), verify=False, augment=True)
    x = d.train_x[:8]
    out = d.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    # each output is its input shifted by at most 4 pixels, maybe mirrored: the interior
    # of the output shows a window of the (possibly flipped) input
    for xi, oi in zip(x, out):
        found = False
        for src in (xi, xi.flip(-1)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    a = oi[:, 4:28, 4:28]
                    b = src[:, 4 + dy:28 + dy, 4 + dx:28 + dx]
                    found |= torch.equal(a, b)
        assert found
    # the padding is black in the normalised units, and at most 4 pixels wide
    cls = get_registry().get("dataset", "cifar10").cls
    black = torch.tensor([-m / s for m, s in zip(cls.mean, cls.std)])
    assert torch.allclose(torch.tensor(d.augment.fill), black)
    const = torch.full((64, 3, 32, 32), 5.0)
    out = d.augment(const, torch.Generator().manual_seed(1))
    is_pad = torch.isclose(out, black.view(1, 3, 1, 1).expand_as(out))
    assert torch.logical_or(is_pad, out == 5.0).all() and is_pad.any()
    assert not is_pad[:, :, 4:28, 4:28].any()
    assert load("cifar10", root=str(tmp_path), verify=False).augment is None


# -- CIFAR-100, SVHN, MNIST, Fashion-MNIST ------------------------------------------------------------
def test_cifar100_reads_fine_labels(tmp_path):
    x, y, xt, yt = write_cifar100(tmp_path)
    with pytest.raises(RuntimeError, match="verify=false"):
        load("cifar100", root=str(tmp_path))
    d = load("cifar100", root=str(tmp_path), verify=False, normalize=False)
    assert d.n_classes == 100 and d.train_y.tolist() == y and d.test_y.tolist() == yt
    np.testing.assert_allclose(d.train_x.numpy() * 255, x, atol=1e-3)


def test_svhn_mat_files_map_label_10_to_0(tmp_path):
    truth = write_svhn(tmp_path)
    with pytest.raises(RuntimeError, match="MD5 check"):
        load("svhn", root=str(tmp_path))
    d = load("svhn", root=str(tmp_path), verify=False, normalize=False)
    assert d.train_y.tolist() == truth["train"][1] and d.test_y.tolist() == truth["test"][1]
    np.testing.assert_allclose(d.train_x.numpy() * 255, truth["train"][0], atol=1e-3)
    assert d.augment is None
    aug = load("svhn", root=str(tmp_path), verify=False, augment=True).augment
    assert aug.flip is False  # digits are not mirrored


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_load_with_torchvisions_reader(tmp_path, name, folder):
    truth = write_idx(tmp_path, folder)
    d = load(name, root=str(tmp_path))  # torchvision compares no MD5 for the raw idx files
    cls = get_registry().get("dataset", name).cls
    assert d.train_x.shape == (6, 1, 28, 28) and d.test_x.shape == (3, 1, 28, 28)
    assert d.train_y.tolist() == truth["train"][1].tolist()
    np.testing.assert_allclose(d.train_x.numpy(), normalized(truth["train"][0][:, None], cls.mean, cls.std),
                               rtol=1e-6, atol=1e-6)
    flat = load(name, root=str(tmp_path), layout="flat")
    assert flat.train_x.shape == (6, 784)


def test_root_defaults_to_the_environment(tmp_path, monkeypatch):
    write_idx(tmp_path, "MNIST")
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path))
    assert load("mnist").n_train == 6


def test_shape_matches_a_load_without_loading(tmp_path):
    write_idx(tmp_path, "MNIST")
    reg = get_registry()
    for name, params in (("mnist", {"root": str(tmp_path)}), ("digits", {}),
                         ("mnist1d", {"num_samples": 200, "layout": "channels"})):
        cls = reg.get("dataset", name).cls
        inst = cls(cls.Params(**params))
        d = inst.load()
        s = inst.shape()
        if name != "mnist":  # mnist's shape() gives the official sizes, the fixture is tiny
            assert (s["n_train"], s["n_test"]) == (d.n_train, d.test_x.shape[0])
        assert tuple(s["input_shape"]) == d.input_shape and s["n_classes"] == d.n_classes


def test_generated_mnist1d_is_cached_on_disk_and_checked(tmp_path, monkeypatch, caplog):
    """The truth is the generator itself: a cached load equals a fresh generation, and a
    damaged cache file is detected by its SHA-256 and regenerated."""
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path))
    MNIST1D = get_registry().get("dataset", "mnist1d").cls  # noqa: N806
    ds = MNIST1D(MNIST1D.Params(num_samples=200))
    generate = MNIST1D.generate
    fresh = ds.generate()
    first = ds.load()
    files = list((tmp_path / "generated").glob("mnist1d-*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(MNIST1D, "generate", lambda self: pytest.fail("regenerated"))
    again = ds.load()
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.test_y, first.test_y)
    assert np.array_equal(first.train_x.numpy(), fresh["x"].astype(np.float32))
    # Damage the cached data (same shapes, one value changed): it must be regenerated.
    with np.load(files[0]) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x"][0, 0] += 1.0
    np.savez(files[0], **arrays)
    monkeypatch.setattr(MNIST1D, "generate", lambda self: fresh)
    with caplog.at_level("WARNING"):
        repaired = ds.load()
    assert "integrity" in caplog.text and files[0].name in caplog.text
    assert torch.equal(repaired.train_x, first.train_x)
    # A truncated file (a killed writer on a filesystem without atomic rename) likewise.
    files[0].write_bytes(files[0].read_bytes()[:100])
    caplog.clear()
    with caplog.at_level("WARNING"):
        repaired = ds.load()
    assert "unreadable" in caplog.text and files[0].name in caplog.text
    assert torch.equal(repaired.train_x, first.train_x)
    monkeypatch.setattr(MNIST1D, "generate", lambda self: pytest.fail("regenerated"))
    assert torch.equal(ds.load().train_x, first.train_x)  # the regenerated file is used again
    monkeypatch.setattr(MNIST1D, "generate", generate)
    # Other generator settings get their own file.
    MNIST1D(MNIST1D.Params(num_samples=200, generator_seed=1)).load()
    assert len(list((tmp_path / "generated").glob("mnist1d-*.npz"))) == 2
