"""genbench.catalog: the registry's suites, their sizes and the cost model's counts."""

from __future__ import annotations

import pytest

from genbench import catalog
from genbench.plugins import get_registry


def test_macs_are_counted_by_hand():
    reg = get_registry()
    mlp = catalog.model_costs(reg, {"name": "mlp", "params": {"depth": 2, "width": 128}}, (40,), 10)
    assert mlp["lin"] == 40 * 128 + 128 * 128 + 128 * 10 and mlp["conv"] == 0 and mlp["layers"] == 3
    cnn = catalog.model_costs(reg, {"name": "cnn", "params": {}}, (1, 40), 10)
    # Conv1d 1->64 k3: 38 positions; Conv1d 64->128 k3: 36 positions; pool 7 -> 5; dense 640->128
    assert cnn["conv"] == 38 * 64 * 3 + 36 * 128 * 64 * 3
    assert cnn["lin"] == 640 * 128 + 128 * 10
    assert cnn["dim3"] == (3 ** 3 + 64 ** 3) + (192 ** 3 + 128 ** 3) + (640 ** 3 + 128 ** 3) + (128 ** 3 + 10 ** 3)


def test_vgg16_on_cifar_has_the_known_313_million_macs():
    vgg = catalog.model_costs(get_registry(), {"name": "vgg", "params": {"depth": 16}}, (3, 32, 32), 10)
    assert vgg["conv"] + vgg["lin"] == pytest.approx(313.46e6, rel=1e-3)


def test_every_registry_suite_is_listed_with_its_size_and_estimate():
    rows = {r["name"]: r for r in catalog.list_suites()}
    for name in ("vgg-cifar10", "vgg-cifar100", "alexnet-cifar10", "alexnet-cifar100"):
        assert rows[name]["models"] == 288 and rows[name]["dataset"].startswith("cifar")
        assert rows[name]["est_seconds"] > 1e7  # years on this CPU: GPU scale
    for name, n in (("dropout-rates", 12), ("noise", 15), ("controls", 12)):
        row = rows[name]
        assert row["models"] == n and row["dataset"] in ("mnist1d", "digits")
        assert 0 < row["est_seconds"] < 600  # a few minutes here
    assert all(set(r) >= {"name", "description", "models", "est_seconds", "dataset"}
               for r in rows.values())


def test_twins_record_the_volume_during_training():
    from genbench.suite import load_suite

    for name in ("dropout-rates", "noise", "controls"):
        assert load_suite(name).train.track_volume is not None


def test_estimate_grows_with_epochs_and_tracking():
    shape = {"input_shape": (40,), "n_classes": 10, "n_train": 3200, "n_test": 800}
    costs = catalog.model_costs(get_registry(), {"name": "mlp", "params": {}}, (40,), 10)
    cfg = {"train": {"max_epochs": 10, "batch_size": 64, "track_volume": None}}
    base = catalog.spec_seconds(cfg, shape, costs)
    longer = catalog.spec_seconds({"train": {**cfg["train"], "max_epochs": 20}}, shape, costs)
    tracked = catalog.spec_seconds({"train": {**cfg["train"], "track_volume": {"every": 5}}}, shape, costs)
    assert longer == pytest.approx(2 * base, rel=0.05) and tracked > base
