"""Batched population training equals sequential train_one, model for model.

The truth is :func:`genbench.training.train_one` run on each spec alone: same
seeds, so the same initial weights, data order and dropout masks. A batched model
must match it to float tolerance (stacked matrix products round differently),
including with dropout, per-model lr / momentum / weight decay / schedules, Adam,
early stops and non-finite losses.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

import genbench
from genbench.plugins import load_registry
from genbench.population import expand
from genbench.runner import DataCache, Trainer
from genbench.suite import Suite
from tests import blobs
from genbench.training import train_one


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra=[("test_blobs_data", blobs)])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def suite(name: str = "t", grid: dict | None = None, train: dict | None = None,
          model: dict | None = None, regularizers: dict | None = None, seeds=(0,),
          dataset: dict | None = None, family: str = "mlp") -> Suite:
    return Suite(name=name, dataset={"name": "blobs", "params": dataset or {}},
                 model={"name": family, "params": model or {"depth": 2, "width": 16}},
                 train={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 32,
                        "max_epochs": 4, "lr_halve_every": 2, **(train or {})},
                 regularizers=regularizers if regularizers is not None else {"dropout": {"rate": 0.0}},
                 grid=grid or {}, seeds=list(seeds))


def sequential(specs, registry):
    data = DataCache(registry)
    out = []
    for s in specs:
        try:
            out.append(train_one(s, data.get(s.config), registry))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def assert_same(seq, bat, atol=2e-5):
    assert len(seq) == len(bat)
    for a, b in zip(seq, bat):
        if isinstance(a, BaseException):
            assert type(b) is type(a) and str(b) == str(a)
            continue
        assert not isinstance(b, BaseException), b
        assert set(a.init_state) == set(b.init_state)
        for k in a.init_state:  # the same seeded initialization, bit for bit
            assert torch.equal(a.init_state[k], b.init_state[k]), k
        for k in a.final_state:
            torch.testing.assert_close(b.final_state[k], a.final_state[k], atol=atol, rtol=1e-4)
        ma, mb = a.metrics, b.metrics
        assert ma["epochs"] == mb["epochs"]
        assert len(ma["history"]) == len(mb["history"])
        for ha, hb in zip(ma["history"], mb["history"]):
            assert ha["epoch"] == hb["epoch"] and ha["lr"] == hb["lr"]
            assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4, abs=1e-5)
            assert hb["train_acc"] == pytest.approx(ha["train_acc"], abs=1e-9)
        for k in ("train_loss", "test_loss", "gap"):
            assert mb[k] == pytest.approx(ma[k], rel=1e-4, abs=1e-5)
        for k in ("train_acc", "test_acc", "acc_gap"):
            assert mb[k] == pytest.approx(ma[k], abs=1e-9)


@pytest.fixture(scope="module")
def sgd_population(registry):
    """One stackable group mixing everything a model keeps for itself."""
    specs = expand(suite(grid={"regularizers.dropout.rate": [0.0, 0.3], "train.momentum": [0.0, 0.9],
                               "train.lr": [0.05, 0.2]}, seeds=(0, 1)), registry)
    specs += expand(suite("wd", train={"weight_decay": 0.01, "max_epochs": 2, "lr_halve_every": None},
                          regularizers={"dropout": {"rates": [0.5, 0.1]}}, seeds=(3,)), registry)
    specs += expand(suite("stops", train={"stop_train_loss": 10.0}, seeds=(4,)), registry)
    specs += expand(suite("wdreg", regularizers={"weight_decay": {"value": 0.02}}, seeds=(5,)),
                    registry)
    return specs, sequential(specs, registry)


@pytest.mark.parametrize("backend", ["bmm", "vmap"])
def test_batched_sgd_equals_sequential(registry, sgd_population, backend):
    from genbench.batched import train_batched

    specs, seq = sgd_population
    assert len(Trainer(registry, DataCache(registry), "cpu").groups(specs)) == 1
    bat = train_batched(specs, DataCache(registry).get(specs[0].config), registry, "cpu", backend)
    assert_same(seq, bat)
    epochs = [r.metrics["epochs"] for r in seq]
    assert 1 in epochs and 2 in epochs and 4 in epochs  # models left the stack at different epochs
    # dropout really acts: the dropout twin of a model differs from it
    assert not torch.allclose(bat[0].final_state["0.weight"], bat[8].final_state["0.weight"])


def test_batched_adam_equals_sequential(registry):
    from genbench.batched import train_batched

    specs = expand(suite(grid={"regularizers.dropout.rate": [0.0, 0.25], "train.lr": [0.01, 0.003],
                               "train.weight_decay": [0.0, 0.01]},
                         train={"optimizer": "adam", "max_epochs": 3}), registry)
    bat = train_batched(specs, DataCache(registry).get(specs[0].config), registry)
    assert_same(sequential(specs, registry), bat)


def test_cnn_stacks_through_vmap_with_dropout(registry):
    from genbench.batched import GroupTrainer

    specs = expand(suite(model={"channels": [4], "kernel_size": 3, "pool": 2, "dense": [8]},
                         dataset={"layout": "channels"}, train={"max_epochs": 2}, family="cnn",
                         grid={"regularizers.dropout.rate": [0.0, 0.3]}, seeds=(0, 1)), registry)
    data = DataCache(registry).get(specs[0].config)
    trainer = GroupTrainer(specs, data, registry)
    assert trainer.backend.name == "vmap"  # a Tap around activation + pool is not a plain MLP
    assert_same(sequential(specs, registry), trainer.run())


def test_nonfinite_loss_fails_that_model_only(registry):
    from genbench.batched import train_batched

    specs = expand(suite(grid={"train.lr": [0.05, 1e6]}, train={"max_epochs": 2}), registry)
    seq = sequential(specs, registry)
    assert isinstance(seq[1], FloatingPointError)
    bat = train_batched(specs, DataCache(registry).get(specs[0].config), registry)
    assert_same(seq, bat)


def test_batched_training_leaves_the_global_rng_alone(registry):
    from genbench.batched import train_batched

    specs = expand(suite(grid={"regularizers.dropout.rate": [0.0, 0.3]}, train={"max_epochs": 1}),
                   registry)
    torch.manual_seed(77)
    before = torch.get_rng_state()
    train_batched(specs, DataCache(registry).get(specs[0].config), registry)
    assert torch.equal(torch.get_rng_state(), before)


# -- the stacked optimizers against torch.optim, slice by slice ---------------------
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_stacked_optimizers_match_torch_optim(kind):
    from genbench.batched import StackedAdam, StackedSGD

    g = torch.Generator().manual_seed(0)
    lrs, moms, wds = [0.1, 0.03, 0.5], [0.0, 0.9, 0.5], [0.0, 0.01, 0.1]
    stacked = [torch.randn(3, 4, 5, generator=g), torch.randn(3, 5, generator=g)]
    singles = [[p[i].clone().requires_grad_() for p in stacked] for i in range(3)]
    if kind == "sgd":
        opt = StackedSGD(stacked, moms, wds)
        torch_opts = [torch.optim.SGD(singles[i], lr=lrs[i], momentum=moms[i], weight_decay=wds[i])
                      for i in range(3)]
    else:
        opt = StackedAdam(stacked, wds)
        torch_opts = [torch.optim.Adam(singles[i], lr=lrs[i], weight_decay=wds[i]) for i in range(3)]
    for step in range(5):
        scale = [1.0, 0.5, 0.25, 0.25, 1.0][step]  # a schedule changing lr mid-way
        opt.set_lr([lr * scale for lr in lrs], stacked)
        grads = [torch.randn(p.shape, generator=g) for p in stacked]
        opt.step(stacked, grads)
        for i in range(3):
            for group in torch_opts[i].param_groups:
                group["lr"] = lrs[i] * scale
            for p, gr in zip(singles[i], grads):
                p.grad = gr[i].clone()
            torch_opts[i].step()
    for i in range(3):
        for p, s in zip(stacked, singles[i]):
            torch.testing.assert_close(p[i], s.detach(), atol=1e-6, rtol=1e-5)


def test_stacked_sgd_select_keeps_the_right_models():
    from genbench.batched import StackedSGD

    p = [torch.zeros(3, 2)]
    opt = StackedSGD(p, [0.9, 0.0, 0.5], [0.0, 0.0, 0.0])
    opt.set_lr([1.0, 1.0, 1.0], p)
    opt.step(p, [torch.ones(3, 2)])
    keep = torch.tensor([0, 2])
    p = [p[0][keep]]
    opt.select(keep)
    opt.set_lr([1.0, 1.0], p)
    opt.step(p, [torch.ones(2, 2)])
    # model 0: buf 1 -> 1.9, p = -1 - 1.9; model 2: buf 1 -> 1.5, p = -1 - 1.5
    torch.testing.assert_close(p[0], torch.tensor([[-2.9, -2.9], [-2.5, -2.5]]))


# -- grouping and fallback (runner.Trainer) -------------------------------------------
def test_groups_split_by_architecture_batch_size_and_optimizer(registry):
    specs = expand(suite(grid={"model.width": [8, 16], "train.batch_size": [16, 32],
                               "train.optimizer": ["sgd", "adam"], "train.lr": [0.05, 0.01]}),
                   registry)
    trainer = Trainer(registry, DataCache(registry), "cpu")
    groups = trainer.groups(specs)
    assert len(groups) == 8 and all(len(g) == 2 for g in groups)
    for g in groups:
        a, b = (s.config for s in g)
        assert a["model"] == b["model"] and a["train"]["batch_size"] == b["train"]["batch_size"]
        assert a["train"]["lr"] != b["train"]["lr"]
    assert sorted(s.key for g in groups for s in g) == sorted(s.key for s in specs)  # each once
    off = Trainer(registry, DataCache(registry), "cpu", batching=False).groups(specs)
    assert off == [[s] for s in specs]


def test_unstackable_regularizers_and_volume_tracking_train_alone(registry):
    noisy = expand(suite(regularizers={"weight_noise": {"std": 0.01}}, seeds=(0, 1)), registry)
    switched_off = expand(suite(regularizers={"weight_noise": {"std": 0.0}}, seeds=(0, 1)), registry)
    tracked = expand(suite(train={"track_volume": {"estimator": "laplace"}}, seeds=(0, 1)), registry)
    trainer = Trainer(registry, DataCache(registry), "cpu")
    assert [len(g) for g in trainer.groups(tracked)] == [1, 1]
    assert [len(g) for g in trainer.groups(noisy)] == [1, 1]
    assert [len(g) for g in trainer.groups(switched_off)] == [2]  # a no-op regularizer is absent
    got = trainer.train_group(switched_off)
    for a, b in zip(sequential(switched_off, registry), got):
        assert not isinstance(b, Exception)
        for k in a.final_state:
            assert torch.allclose(a.final_state[k], b.final_state[k], atol=1e-5)


def test_group_that_cannot_stack_falls_back_quietly(registry, caplog):
    """BatchNorm (running statistics) is not stacked: the group trains one at a time,
    giving exactly train_one's results, with only a debug log."""
    specs = expand(suite(model={"depth": 1, "width": 8, "batch_norm": True},
                         train={"max_epochs": 1}, seeds=(0, 1)), registry)
    trainer = Trainer(registry, DataCache(registry), "cpu")
    assert [len(g) for g in trainer.groups(specs)] == [2]
    with caplog.at_level(logging.DEBUG, logger="genbench.batched"):
        got = trainer.train_group(specs)
    assert any("one at a time" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)
    for a, b in zip(sequential(specs, registry), got):
        for k in a.final_state:
            assert torch.equal(a.final_state[k], b.final_state[k])


def test_run_with_batching_equals_run_without(registry, tmp_path):
    s = suite(grid={"regularizers.dropout.rate": [0.0, 0.3], "train.lr": [0.05, 0.1],
                    "model.width": [8, 16]}, train={"max_epochs": 2})
    on = genbench.run(s, store=tmp_path / "on", registry=registry, device="cpu", batching=True)
    off = genbench.run(s, store=tmp_path / "off", registry=registry, device="cpu", batching=False)
    assert on["summary"]["trained"] == off["summary"]["trained"] == 8
    by_key = {r["key"]: r for r in off["models"]}
    for r in on["models"]:
        o = by_key[r["key"]]
        for k in ("train_loss", "test_loss", "gap"):
            assert math.isclose(r[k], o[k], rel_tol=1e-4, abs_tol=1e-5)
        assert r["epochs"] == o["epochs"]
