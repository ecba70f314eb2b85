"""The sampling weight-volume estimator (science.md 1b) against known posteriors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genbench import sampling as S
from genbench import taps
from genbench import volume as V
from genbench.data import DataBundle


@pytest.fixture(autouse=True)
def _double(torch_threads):
    """Tiny models in float64 so exact comparisons can be tight."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(before)


def squared_loss(out, target):
    return 0.5 * ((out - target) ** 2).sum(1).mean()


class Drop(taps.TapHandler):
    def __init__(self, q):
        self.q = q

    def activation(self, tap, a):
        return a * torch.empty_like(a).bernoulli_(1 - self.q) / (1 - self.q)


def bundle(n=64, d=6, classes=3):
    x = torch.randn(n, d, dtype=torch.float32)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataBundle("toy", x, y % classes, x[:8], y[:8] % classes, classes)


# -- (h) the sampling estimator --------------------------------------------------------------
def synthetic_gaussian_problem():
    """One linear layer, squared loss, zero residual: a quadratic loss with Hessian
    I (x) S. Full-batch Algorithm 1 records w <- M (w + U), M = I - lr S per output
    row, whose stationary covariance sigma^2 M^2 (I - M^2)^{-1} is the known posterior."""
    torch.manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(3, 3))[0]
    x = torch.randn(200, 3) @ torch.diag(torch.tensor([1.0, 2.0, 3.0]).sqrt()) @ rotation.T
    net = nn.Linear(3, 2, bias=False)
    y = (x @ net.weight.detach().T).clone()
    s = x.T @ x / 200
    lr = 0.8 / float(torch.linalg.eigvalsh(s).max())
    m = torch.eye(3) - lr * s
    m2 = m @ m
    stationary = m2 @ torch.linalg.inv(torch.eye(3) - m2)  # one output row; rows independent
    return net, x, y, lr, torch.block_diag(stationary, stationary)


def test_sampling_recovers_a_known_gaussian_posterior():
    net, x, y, lr, truth = synthetic_gaussian_problem()
    chain = S.sample_posterior(net, x, y, squared_loss, n_samples=1000, sigma_u=0.1, lr=lr,
                               batch_size=200, eps=1e9)
    assert chain.kept == chain.tried == 1000
    samples = chain.samples["weight"]
    full = S.sampled_log_vol(samples, subset_size=6)
    assert full["subset_size"] == 6
    assert full["log_vol"] == pytest.approx(V.log_vol(truth), abs=0.1)
    assert V.log_vol(truth) < -1.0  # a strongly correlated posterior, not a trivial 0
    # Random pairs: the target is the mean per-dimension log-volume of 2x2 marginals.
    pairs = [V.log_vol(truth[list(p)][:, list(p)]) / 2 for p in itertools.combinations(range(6), 2)]
    sub = S.sampled_log_vol(samples, subset_size=2, n_subsets=2000)
    assert sub["log_vol"] == pytest.approx(6 * sum(pairs) / len(pairs), abs=0.1)
    # Ledoit-Wolf shrinks towards 0 but with many samples it agrees.
    lw = S.sampled_log_vol(samples, subset_size=6, covariance="ledoit_wolf")
    assert lw["log_vol"] == pytest.approx(V.log_vol(truth), abs=0.15)
    assert lw["log_vol"] >= full["log_vol"] - 0.05


def test_debiasing_removes_small_sample_bias():
    """With 8 i.i.d. Gaussian samples the raw log det of a 4x4 sample correlation is far
    below the truth; the Wishart correction centres it."""
    corr = torch.tensor([[1.0, 0.5, 0.2, 0.0], [0.5, 1.0, 0.3, 0.1],
                         [0.2, 0.3, 1.0, 0.4], [0.0, 0.1, 0.4, 1.0]])
    chol = torch.linalg.cholesky(corr)
    draws = torch.randn(4000, 8, 4) @ chol.T
    centred = draws - draws.mean(1, keepdim=True)
    cov = torch.einsum("rni,rnj->rij", centred, centred) / 7
    raw = V.batched_log_vol(cov).mean()
    fixed = raw - S.wishart_log_vol_bias(4, 7)
    assert float(raw) < V.log_vol(corr) - 0.5
    assert float(fixed) == pytest.approx(V.log_vol(corr), abs=0.05)


def test_sampling_keeps_by_eps_and_never_resets():
    net, x, y, _, _ = synthetic_gaussian_problem()
    w0 = net.weight.detach().clone()
    chain = S.sample_posterior(net, x, y, squared_loss, n_samples=60, sigma_u=0.05, lr=1e-12,
                               batch_size=200, eps=0.02)
    ref = chain.ref_loss
    assert chain.kept_flags == [abs(v - ref) <= 0.02 for v in chain.losses]
    assert 0 < chain.kept < chain.tried == 60
    assert chain.samples["weight"].shape == (chain.kept, 6)
    # A random walk: after 60 steps the displacement has variance 60 sigma^2 per weight.
    drift = float(((net.weight.detach() - w0) ** 2).mean())
    assert 60 * 0.05 ** 2 / 3 < drift < 60 * 0.05 ** 2 * 3


def test_sampling_plugin_on_a_tapped_mlp_with_dropout():
    from genbench.plugins import get_registry

    torch.set_default_dtype(torch.float32)
    entry = get_registry().get("volume_estimator", "sampling")
    net = taps.number_taps(nn.Sequential(nn.Linear(6, 8), taps.Tap(nn.ReLU()), nn.Linear(8, 3)))
    taps.attach(net, [Drop(0.2)])
    params = entry.cls.Params(n_samples=8, sigma_u=0.01, eps=1.0, blocks=4)
    est = entry.cls(params).estimate(net.eval(), bundle(), loss_fn=F.cross_entropy)
    assert est["kept"] == est["tried"] == 8
    assert set(est["layers"]) == {"0.weight", "2.weight"}
    assert all(v["log_vol"] <= 0 and math.isfinite(v["log_vol"]) for v in est["layers"].values())
    assert 0 <= est["paper_blocks"]["mean"] <= 1
    too_strict = entry.cls(entry.cls.Params(n_samples=3, sigma_u=1.0, eps=1e-6))
    with pytest.raises(ValueError, match="kept"):
        too_strict.estimate(net, bundle(), loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="at least 6"):
        S.sampled_log_vol(torch.randn(5, 10), subset_size=4)
