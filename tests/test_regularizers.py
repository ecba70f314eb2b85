"""Each regularizer changes training exactly where it should (science.md section 4)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from genbench import taps
from genbench.data import DataBundle
from genbench.plugins import get_registry
from genbench.population import ModelSpec, resolve
from genbench.training import build_model, make_optimizer, train_one
from genbench.suite import TrainRecipe

from genbench_plugins.regularizers import (
    paired_volume_change, psd_factor, reverse_noise_covariance, reverse_offdiagonal)


def regularizer(name, **params):
    cls = get_registry().get("regularizer", name).cls
    return cls(cls.Params(**params))


def lone_tap(training=True):
    tap = taps.Tap(nn.Identity())
    tap.index = 0
    tap.train(training)
    return tap


def rows_with_moment(moment: np.ndarray, n: int, seed: int = 0) -> torch.Tensor:
    """n rows whose second moment (1/n) X^T X is exactly ``moment``."""
    z = np.random.default_rng(seed).standard_normal((n, moment.shape[0]))
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / n)).T  # whiten: (1/n) z^T z = I
    return torch.tensor(z @ np.linalg.cholesky(moment).T, dtype=torch.float32)


def clipped(matrix: np.ndarray) -> np.ndarray:
    """Independent reference: the matrix with negative eigenvalues set to 0 (numpy)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.maximum(w, 0)) @ v.T


# S is positive definite, r(S) is not (eigenvalue 1 + 2(-0.8) = -0.6): the documented clip.
S_INDEFINITE_R = np.array([[1.0, -0.8, -0.8], [-0.8, 1.0, 0.8], [-0.8, 0.8, 1.0]])


# -- dropout --------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.15, 0.45])
def test_dropout_mask_has_the_rate_and_scale(q):
    handler = regularizer("dropout", rate=q).bind(None)
    torch.manual_seed(0)
    out = handler.activation(lone_tap(), torch.ones(400_000))
    assert torch.allclose(torch.unique(out), torch.tensor([0.0, 1 / (1 - q)]))
    assert abs((out == 0).float().mean().item() - q) < 0.004  # ~5 binomial std errors
    assert abs(out.mean().item() - 1.0) < 0.01  # E[eta] = 1


def test_dropout_acts_in_training_and_under_noise_active_only():
    model = nn.Sequential(nn.Linear(4, 4), taps.Tap(nn.ReLU()), nn.Linear(4, 2))
    taps.number_taps(model)
    taps.attach(model, [regularizer("dropout", rate=0.5).bind(model)])
    x = torch.randn(256, 4)
    model.eval()
    assert torch.equal(model(x), model(x))
    with taps.noise_active(model):
        assert not torch.equal(model(x), model(x))


def test_dropout_follows_the_vgg_placement_of_tables_5_to_7():
    vgg = get_registry().get("model", "vgg").cls
    model = vgg(vgg.Params(depth=11, width=1 / 16)).build((1, 8, 8), 10)
    handler = regularizer("dropout", rate=0.3).bind(model)
    rates = [round(handler.rate(t), 6) for t in taps.taps(model)]
    # Conv-64 M Conv-128 M Conv-256 D(.3) Conv-256 M Conv-512 D(.3) Conv-512 M Conv-512 D(.3)
    # Conv-512 M D(.1) Dense-512 D(.1)
    assert rates == [0, 0, 0.3, 0, 0.3, 0, 0.3, 0.1, 0.1]
    torch.manual_seed(0)
    tap = taps.taps(model)[7]
    out = handler.activation(tap, torch.ones(200_000))
    assert abs((out == 0).float().mean().item() - 0.1) < 0.004


# -- reverse noise --------------------------------------------------------------------------
def test_r_flips_exactly_the_off_diagonal_signs():
    m = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 3.0, 4.0], [0.5, 4.0, 5.0]])
    want = torch.tensor([[2.0, 1.0, -0.5], [1.0, 3.0, -4.0], [-0.5, -4.0, 5.0]])
    assert torch.equal(reverse_offdiagonal(m), want)


def test_psd_factor_reproduces_psd_matrices_and_clips_indefinite_ones():
    a = torch.randn(5, 5, dtype=torch.float64)
    psd = a @ a.T
    factor, n_clipped = psd_factor(psd)
    assert n_clipped == 0 and torch.allclose(factor @ factor.T, psd, atol=1e-10)
    r = reverse_offdiagonal(torch.tensor(S_INDEFINITE_R))
    assert np.linalg.eigvalsh(r.numpy()).min() == pytest.approx(-0.6)
    factor, n_clipped = psd_factor(r)
    assert n_clipped == 1
    np.testing.assert_allclose((factor @ factor.T).numpy(), clipped(r.numpy()), atol=1e-12)


def test_activation_reverse_noise_has_the_clipped_covariance_it_claims():
    """Activations with E[A] = S^{-1}: Sigma_a = S, r(S) is indefinite; the noise added must
    have covariance clip(r(S)) (no damping, no normalisation, strength 1)."""
    moment = np.linalg.inv(S_INDEFINITE_R)
    a = rows_with_moment(moment, 300_000)
    handler = regularizer("activation_reverse_noise", strength=1.0, damping=0.0, normalize=False,
                          decay=0.0, max_rows=10**6, stats_every=1).bind(None)
    torch.manual_seed(1)
    eta = (handler.activation(lone_tap(), a) - a).double().numpy()
    want = clipped(reverse_offdiagonal(torch.tensor(S_INDEFINITE_R)).numpy())
    np.testing.assert_allclose(np.cov(eta.T), want, atol=0.015)
    np.testing.assert_allclose(eta.mean(0), 0.0, atol=0.01)
    assert handler.stats[0].clipped == 1


def test_reverse_noise_strength_mean_damping_and_normalisation():
    rng = np.random.default_rng(3)
    b = rng.standard_normal((4, 4))
    moment = 4.0 * (b @ b.T + 0.5 * np.eye(4))
    a = rows_with_moment(moment, 200_000, seed=4)
    handler = regularizer("activation_reverse_noise", strength=0.5, mean=0.3, damping=0.1,
                          normalize=True, decay=0.0, max_rows=10**6, stats_every=1).bind(None)
    torch.manual_seed(2)
    eta = (handler.activation(lone_tap(), a) - a).double().numpy()
    # reference written from the definition, in numpy
    scale = np.trace(moment) / 4
    r = np.linalg.inv(moment + 0.1 * scale * np.eye(4))
    r = 2 * np.diag(np.diag(r)) - r
    r *= scale / np.mean(np.diag(r))
    want = 0.25 * clipped(r)
    np.testing.assert_allclose(np.cov(eta.T), want, atol=0.03 * np.abs(want).max())
    np.testing.assert_allclose(eta.mean(0), 0.5 * 0.3 * np.sqrt(scale), atol=0.02)
    torch_cov = reverse_noise_covariance(torch.tensor(moment), 0.1, True).numpy()
    np.testing.assert_allclose(torch_cov, r, rtol=1e-10)


def test_node_loss_reverse_noise_perturbs_the_preactivation_gradient():
    """The gradient reaching h is R + lambda * eta with Cov(eta) = clip(r(E[G]^{-1}))."""
    moment = np.linalg.inv(S_INDEFINITE_R)
    grads = rows_with_moment(moment, 300_000, seed=5)
    handler = regularizer("node_loss_reverse_noise", strength=2.0, damping=0.0, normalize=False,
                          decay=0.0, max_rows=10**6, stats_every=1).bind(None)
    tap = lone_tap()
    tap.handlers = [handler]
    h = torch.zeros_like(grads, requires_grad=True)
    torch.manual_seed(3)
    (tap(h) * grads).sum().backward()  # d loss / d h = grads
    eta = ((h.grad - grads) / 2.0).double().numpy()
    want = clipped(reverse_offdiagonal(torch.tensor(S_INDEFINITE_R)).numpy())
    np.testing.assert_allclose(np.cov(eta.T), want, atol=0.015)
    # the forward value is untouched
    assert torch.equal(tap(h), h)


def test_reverse_noise_conv_units_are_channels():
    """For (B, C, H, W) activations the units are the C channels; positions are samples."""
    moment = np.linalg.inv(S_INDEFINITE_R)
    rows = rows_with_moment(moment, 64 * 25)
    a = rows.reshape(64, 5, 5, 3).permute(0, 3, 1, 2).contiguous()
    handler = regularizer("activation_reverse_noise", strength=1.0, damping=0.0, normalize=False,
                          decay=0.0, max_rows=10**6, stats_every=1).bind(None)
    handler.activation(lone_tap(), a)
    np.testing.assert_allclose(handler.stats[0].moment.numpy(), moment, rtol=1e-5, atol=1e-6)


def test_reverse_noise_refreshes_every_n_steps_and_tracks_a_running_moment():
    handler = regularizer("activation_reverse_noise", strength=0.1, refresh_every=5, stats_every=1,
                          decay=0.5).bind(None)
    tap = lone_tap()
    first, second = torch.full((10, 2), 1.0), torch.full((10, 2), 3.0)
    handler.activation(tap, first)
    handler.activation(tap, second)
    np.testing.assert_allclose(handler.stats[0].moment.numpy(), np.full((2, 2), 0.5 * 1 + 0.5 * 9), rtol=1e-6)
    for _ in range(10):
        handler.activation(tap, first)
    assert handler.stats[0].steps == 12 and handler.stats[0].refreshes == 3  # steps 0, 5, 10
    # moment updates every 3rd step only (steps 0, 3, 6): the refresh waits for one
    sparse = regularizer("activation_reverse_noise", strength=0.1, refresh_every=4, stats_every=3,
                         decay=0.5).bind(None)
    for x in (first, second, second, second, first, first, first):
        sparse.activation(tap, x)
    np.testing.assert_allclose(sparse.stats[0].moment.numpy(), np.full((2, 2), 0.25 * 1 + 0.25 * 9 + 0.5 * 1), rtol=1e-6)
    assert sparse.stats[0].refreshes == 2  # at step 0 and at step 6 (the first update >= 4 later)


def test_reverse_noise_is_a_training_perturbation_only():
    handler = regularizer("activation_reverse_noise", strength=1.0).bind(None)
    tap = lone_tap(training=False)
    tap.force_noise = True  # as inside noise_active(): still no reverse noise, no statistics
    a = torch.randn(8, 3)
    assert torch.equal(handler.activation(tap, a), a) and not handler.stats
    assert regularizer("activation_reverse_noise", strength=0.0).bind(None) is None


# -- weight noise -----------------------------------------------------------------------------
def test_weight_noise_adds_the_stated_std_to_weights_after_each_step():
    model = nn.Sequential(nn.Linear(200, 300), taps.Tap(nn.ReLU()), nn.Conv1d(1, 50, 9))
    taps.number_taps(model)
    handler = regularizer("weight_noise", std=0.03, every=2).bind(model)
    taps.attach(model, [handler])
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    taps.after_step(model)  # step 1: every=2, nothing yet
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    taps.after_step(model)
    diffs = [p.detach() - b for b, p in zip(before, model.parameters())]
    w_lin, b_lin, w_conv, b_conv = diffs
    for d in (w_lin, w_conv):
        n = d.numel()  # the sample std's relative standard error is 1/sqrt(2n): allow 4 of them
        assert d.std().item() == pytest.approx(0.03, rel=4 / np.sqrt(2 * n))
        assert abs(d.mean().item()) < 4 * 0.03 / np.sqrt(n)
    assert torch.equal(b_lin, torch.zeros_like(b_lin)) and torch.equal(b_conv, torch.zeros_like(b_conv))
    assert handler.injections == 1
    assert handler.sum_sq == pytest.approx(float(w_lin.square().sum() + w_conv.square().sum()), rel=1e-4)


def test_paired_volume_change_matches_each_run_with_its_noise_free_twin():
    def row(std, lr, seed, vol, drop=0.0):
        return {"hparams": {"regularizers.weight_noise.std": std, "train.lr": lr,
                            "regularizers.dropout.rate": drop}, "seed": seed,
                "volume": {"vol_per_dim_mean": vol}}

    rows = [row(0.0, 0.1, 0, 0.50), row(0.01, 0.1, 0, 0.40), row(0.01, 0.1, 1, 0.9),
            row(0.0, 0.2, 0, 0.30), row(0.01, 0.2, 0, 0.35), row(0.0, 0.1, 0, 0.7, drop=0.3)]
    out = paired_volume_change(rows, "regularizers.weight_noise.std")
    assert [(round(o["change"], 10), o["contracted"]) for o in out] == [(-0.1, True), (0.05, False)]
    assert out[0]["twin"] is rows[0] and out[1]["twin"] is rows[3]
    # several switches at once: each treated run against the run with all of them off
    both = paired_volume_change(rows, ["regularizers.weight_noise.std", "regularizers.dropout.rate"])
    assert [(round(o["change"], 10), o["twin"] is rows[0]) for o in both] == [
        (-0.1, True), (0.05, False), (0.2, True)]
    with pytest.raises(ValueError, match="ambiguous"):
        paired_volume_change(rows + [row(0.0, 0.1, 0, 0.55)], "regularizers.weight_noise.std")


# -- controls -----------------------------------------------------------------------------------
def test_weight_decay_is_an_optimizer_override_and_batch_norm_a_model_override():
    reg = get_registry()
    data = tiny_data((1, 8, 8))
    config = config_for("cnn", {"channels": [4], "dense": [8]}, {"weight_decay": {"value": 0.01},
                                                                  "batch_norm": {}})
    built = build_model(reg, config, data)
    opt = make_optimizer(built.model.parameters(), TrainRecipe(weight_decay=0.5),
                         built.optimizer_overrides)
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert any(isinstance(m, nn.BatchNorm2d) for m in built.model.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in built.model.modules())
    off = build_model(reg, config_for("cnn", {"channels": [4], "dense": [8]},
                                      {"batch_norm": {"enabled": False}}), data)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in off.model.modules())


# -- every regularizer x every model family trains --------------------------------------------------
TINY_FAMILIES = {
    "mlp": {"width": 8, "depth": 2},
    "cnn": {"channels": [4, 6], "dense": [8]},
    "vgg": {"depth": 11, "width": 1 / 32},
    "alexnet": {"depth": 7, "width": 1 / 32},
}
ACTIVE = {
    "dropout": {"rate": 0.3},
    "activation_reverse_noise": {"strength": 0.5},
    "node_loss_reverse_noise": {"strength": 0.5},
    "weight_noise": {"std": 0.01},
    "weight_decay": {"value": 0.05},
    "batch_norm": {},
}


def tiny_data(shape, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataBundle("tiny", torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g),
                      torch.randn(8, *shape, generator=g), torch.randint(0, 3, (8,), generator=g), 3)


def config_for(family, params, regularizers, **train):
    cfg = {"dataset": {"name": "digits", "params": {}}, "model": {"name": family, "params": params},
           "train": {"batch_size": 8, "max_epochs": 1, "lr": 0.05, **train},
           "regularizers": regularizers}
    return resolve(get_registry(), cfg)[0]


def spec(config, seed=0):
    return ModelSpec(key="t", hparams={}, seed=seed, config=config)


FAMILY_SHAPES = [(f, (1, 8, 8)) for f in sorted(TINY_FAMILIES)] + [
    (f, (1, 16)) for f in ("alexnet", "cnn", "vgg")]  # the 1-D convolutional variants


@pytest.mark.parametrize("family,shape", FAMILY_SHAPES, ids=[f"{f}-{len(s) - 1}d" for f, s in FAMILY_SHAPES])
def test_every_regularizer_trains_every_family_and_changes_its_weights(family, shape, torch_threads):
    reg = get_registry()
    data = tiny_data(shape)
    base = train_one(spec(config_for(family, TINY_FAMILIES[family], {})), data, reg)
    for name, params in ACTIVE.items():
        res = train_one(spec(config_for(family, TINY_FAMILIES[family], {name: params})), data, reg)
        assert np.isfinite(res.metrics["train_loss"]), name
        if name == "batch_norm":
            assert any(k.endswith("running_mean") for k in res.final_state)
            assert not any(k.endswith("running_mean") for k in base.final_state)
            continue
        assert all(torch.equal(res.init_state[k], base.init_state[k]) for k in base.init_state)
        changed = [k for k in base.final_state
                   if not torch.equal(res.final_state[k], base.final_state[k])]
        assert changed, f"{name} left every weight of {family} as without it"


# -- every regularizer x family x volume estimator -----------------------------------------------------
@functools.lru_cache(maxsize=None)
def trained_tiny(family, name):
    """One tiny model of ``family`` trained with regularizer ``name`` (cached: shared by tests)."""
    data = tiny_data((1, 8, 8))
    cfg = config_for(family, TINY_FAMILIES[family], {name: ACTIVE[name]})
    return cfg, data, train_one(spec(cfg), data, get_registry()).final_state


BINDS_A_HANDLER = {"dropout", "activation_reverse_noise", "node_loss_reverse_noise", "weight_noise"}
# The reverse noises perturb only in training mode (docs/regularizers.md) and weight noise acts
# after optimizer steps, so of the noises only dropout reaches the eval-mode factors.
NOISE_IN_THE_FACTORS = {"dropout"}


def log_vol_of_inverse(h: torch.Tensor) -> float:
    """log_vol(h^-1) by brute force from the eigendecomposition of the full matrix:
    logdet = -sum log lambda, diag(h^-1)_i = sum_k V_ik^2 / lambda_k. Unlike inv(h), this is
    accurate for an ill-conditioned h (a near-dead unit's damped factor, condition 7e7:
    inv() was 2e-3 nats off, this agrees with a 40-digit mpmath computation to 1e-11)."""
    lam, vec = torch.linalg.eigh(h)
    return float(-torch.log(lam).sum() - torch.log((vec ** 2 / lam).sum(1)).sum())


def test_laplace_on_every_combination_equals_the_brute_force_kronecker_volume(torch_threads):
    """Every family x regularizer: each layer's log-volume equals log_vol of the inverse of
    the full damped Kronecker matrix over the weights that touch the loss (the best gauge on
    the complement of 1 (x) v for the softmax layer), built from the factors by brute force; noise_off is there exactly when
    a noise regularizer is bound, and differs from the noise-on value exactly when the noise
    reaches the factors."""
    import torch.nn.functional as F

    from genbench import volume as V
    from genbench.training import load_trained
    from tests.test_volume import best_gauge_bruteforce

    reg = get_registry()
    est = reg.get("volume_estimator", "laplace").cls()
    before = torch.get_default_dtype()
    for family in TINY_FAMILIES:
        for name in ACTIVE:
            cfg, data, state = trained_tiny(family, name)
            model = load_trained(reg, cfg, data, state)
            torch.manual_seed(0)
            out = est.estimate(model, data, loss_fn=F.cross_entropy)
            torch.manual_seed(0)
            factors = V.kronecker_factors(model, data.train_x, data.train_y, F.cross_entropy)
            checked = 0
            torch.set_default_dtype(torch.float64)
            try:
                for lname, f in factors.items():
                    key = V.layer_key(lname)
                    det = out["layer_details"][key]
                    da, dg = det["damping_A"], det["damping_G"]
                    # Weights into a dead unit or from a zero input do not touch the loss: they
                    # are independent of the rest (log_vol 0), so the truth is over the others
                    # (a structural zero: a diagonal below ZERO_DIAG times the largest, the
                    # stated convention; round-off leaves such coordinates at ~1e-30, not 0).
                    a, g = (m[live][:, live] for m, live in
                            ((f.A, V.live_coordinates(f.A)), (f.G, V.live_coordinates(f.G))))
                    n_in, n_out = a.shape[0], g.shape[0]
                    if n_in * n_out > 400:
                        continue  # brute force kept small
                    if det["null_profiled"]:
                        truth = best_gauge_bruteforce(a, g, da, dg)
                    else:
                        h = torch.kron(g + dg * torch.eye(n_out), a + da * torch.eye(n_in))
                        truth = log_vol_of_inverse(h)
                    got = out["layers"][key]["log_vol"]
                    assert got == pytest.approx(truth, rel=1e-5, abs=1e-6), (family, name, key)
                    checked += 1
            finally:
                torch.set_default_dtype(before)
            assert checked >= 2, (family, name)
            assert ("noise_off" in out) == (name in BINDS_A_HANDLER), (family, name)
            if name in NOISE_IN_THE_FACTORS:
                assert out["noise_off"]["log_vol_sum"] != pytest.approx(out["log_vol_sum"]), name
            elif name in BINDS_A_HANDLER:
                assert out["noise_off"]["log_vol_sum"] == pytest.approx(out["log_vol_sum"], rel=1e-9)


def test_sampling_sees_the_trained_weights_not_the_regularizers_noise(torch_threads):
    """Every regularizer x family: the posterior draws use the noise-free loss
    (full-batch, eval mode), so removing every tap's noise handler changes nothing;
    a finite log-volume <= 0 per layer, every draw kept and its solve converged."""
    import torch.nn.functional as F

    from genbench import taps
    from genbench.training import load_trained

    reg = get_registry()
    cls = reg.get("volume_estimator", "sampling").cls
    est = cls(cls.Params(n_samples=20, tol=0.2, debias=False))  # accuracy is not the point here
    for family, fparams in TINY_FAMILIES.items():
        data = tiny_data((1, 8, 8))
        for name, rparams in ACTIVE.items():
            cfg = config_for(family, fparams, {name: rparams})
            res = train_one(spec(cfg), data, reg)
            model = load_trained(reg, cfg, data, res.final_state)
            torch.manual_seed(0)
            out = est.estimate(model, data, loss_fn=F.cross_entropy)
            for tap in taps.taps(model):
                tap.handlers = []
            torch.manual_seed(0)
            bare = est.estimate(model, data, loss_fn=F.cross_entropy)
            assert bare["layers"] == out["layers"], (family, name)
            assert (out["kept"], out["tried"]) == (20, 20), (family, name)
            assert out["residual"] < 0.2, (family, name)
            assert all(np.isfinite(v["log_vol"]) and v["log_vol"] <= 0
                       for v in out["layers"].values()), (family, name)
