"""The sampling weight-volume estimator (science.md 1b) against known posteriors."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian

from genbench import sampling as S
from genbench import taps
from genbench import volume as V
from genbench.data import DataBundle


# Tiny models in float64 so exact comparisons can be tight (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("float64_default")


class Drop(taps.TapHandler):
    def __init__(self, q):
        self.q = q

    def activation(self, tap, a):
        return a * torch.empty_like(a).bernoulli_(1 - self.q) / (1 - self.q)


def bundle(n=64, d=6, classes=3):
    x = torch.randn(n, d, dtype=torch.float32)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataBundle("toy", x, y % classes, x[:8], y[:8] % classes, classes)


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


# -- a posterior with a known Hessian ---------------------------------------------------------
def kron_problem(din=5, dout=3, n=300, mixing=1.0, seed=0):
    """One linear layer at its least-squares minimum, loss 1/2 mean r^T Q r: a quadratic
    whose Hessian is exactly Q (x) E[x x^T] (row-major vec W). ``mixing`` correlates the
    inputs (more mixing: a more correlated posterior)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=g) @ (torch.eye(din) + mixing * torch.randn(din, din,
                                                                               generator=g))
    b = torch.randn(dout, dout, generator=g)
    q = b @ b.T + 0.5 * torch.eye(dout)
    y = x @ torch.randn(dout, din, generator=g).T + 0.1 * torch.randn(n, dout, generator=g)
    net = nn.Linear(din, dout, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.linalg.lstsq(x, y).solution.T)

    def loss(out, target):
        r = out - target
        return 0.5 * torch.einsum("ni,ij,nj->n", r, q, r).mean()

    h = hessian(lambda w: loss(x @ w.reshape(dout, din).T, y), net.weight.detach().reshape(-1))
    return net, x, y, loss, h


def truth(h, damping):
    """log_vol of the posterior covariance (H + damping * mean diag(H))^{-1}, brute force."""
    return V.log_vol(torch.linalg.inv(h + damping * torch.diagonal(h).mean()
                                      * torch.eye(h.shape[0])))


def chain_log_vol(net, x, y, loss, **kw):
    chain = S.langevin_chain(net, x, y, loss, **kw)
    assert not chain.diverged
    lc = chain.layers["weight"]
    return S.kronecker_log_vol(lc.samples)["log_vol"], lc


FAST = {"n_samples": 80, "burn_in": 10, "thin": 2, "step": 0.5, "damping": 1e-6}


@pytest.mark.parametrize("target", ["gauss_newton", "loss"])
def test_langevin_recovers_the_log_volume_of_a_known_hessian(target):
    """(a) The exact Hessian (torch.autograd) of a quadratic: within 10% of log_vol(H^-1)."""
    net, x, y, loss, h = kron_problem()
    w0 = net.weight.detach().clone()
    est, lc = chain_log_vol(net, x, y, loss, target=target, **FAST)
    assert truth(h, 1e-6) < -20  # a strongly correlated posterior, not a trivial 0
    assert est == pytest.approx(truth(h, 1e-6), rel=0.1)
    assert 20 < lc.ess <= 80
    assert torch.allclose(net.weight.detach(), w0, atol=1e-12)  # the chain returns the model as it found it


def test_different_curvature_gives_different_volumes_in_the_right_order():
    """(b) More correlated inputs, a more correlated posterior: the estimates follow."""
    vols = []
    for mixing in (0.2, 1.5):
        net, x, y, loss, h = kron_problem(mixing=mixing)
        est, _ = chain_log_vol(net, x, y, loss, **FAST)
        vols.append((truth(h, 1e-6), est))
    (t_flat, e_flat), (t_corr, e_corr) = vols
    assert t_corr < t_flat - 10
    assert e_corr < e_flat
    assert (e_flat - e_corr) == pytest.approx(t_flat - t_corr, rel=0.2)


def test_the_kronecker_fit_recovers_a_matrix_normal_covariance():
    """Independent draws from U (x) V, fewer samples than dimensions: log_vol within 5%."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 6, generator=g), torch.randn(8, 8, generator=g)
    u, v = a @ a.T + 0.3 * torch.eye(6), b @ b.T + 0.3 * torch.eye(8)
    lu, lv = torch.linalg.cholesky(u), torch.linalg.cholesky(v)
    draws = lu @ torch.randn(30, 6, 8, generator=g) @ lv.T  # 30 samples, 48 dimensions
    exact = 8 * V.log_vol(u) + 6 * V.log_vol(v)
    assert exact == pytest.approx(V.log_vol(torch.kron(u, v)))
    assert S.kronecker_log_vol(draws)["log_vol"] == pytest.approx(exact, rel=0.05)
    raw = S.kronecker_log_vol(draws, debias=False)["log_vol"]
    assert raw < S.kronecker_log_vol(draws)["log_vol"]  # the small-sample bias is downwards


def test_softmax_layer_is_measured_off_its_null_direction():
    """Adding the same row to every class changes nothing: such moves are not measured."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 4, generator=g)
    u, v = a @ a.T + 0.3 * torch.eye(4), torch.eye(5) + 0.5
    base = torch.linalg.cholesky(u) @ torch.randn(200, 4, 5, generator=g) @ torch.linalg.cholesky(v).T
    shift = base + 30.0 * torch.randn(200, 1, 5, generator=g)  # a huge ones-direction spread
    est = S.kronecker_log_vol(base, ones_null=True)["log_vol"]
    assert S.kronecker_log_vol(shift, ones_null=True)["log_vol"] == pytest.approx(est, abs=1e-6)
    assert est < 0


# -- the default: exact draws (perturbation and conjugate gradients) ---------------------------
def draws_log_vol(net, x, y, loss, **kw):
    draws = S.posterior_draws(net, x, y, loss, **kw)
    lc = draws.layers["weight"]
    return S.kronecker_log_vol(lc.samples)["log_vol"], draws


def test_exact_draws_recover_the_log_volume_of_a_known_hessian():
    """(a) The exact Hessian (torch.autograd) of a quadratic: within 10% of log_vol(H^-1);
    the solves converge and the draws are independent (covariance from 200 of them)."""
    net, x, y, loss, h = kron_problem()
    w0 = net.weight.detach().clone()
    est, draws = draws_log_vol(net, x, y, loss, n_samples=200, damping=1e-6, tol=1e-6)
    assert truth(h, 1e-6) < -20
    assert est == pytest.approx(truth(h, 1e-6), rel=0.1)
    assert draws.residual < 1e-6 and draws.iterations < 15  # 15 unknowns: CG is exact by then
    assert torch.equal(net.weight.detach(), w0)


def test_exact_draws_order_different_curvatures_right():
    """(b) More correlated inputs, a more correlated posterior: the estimates follow."""
    vols = []
    for mixing in (0.2, 1.5):
        net, x, y, loss, h = kron_problem(mixing=mixing)
        vols.append((truth(h, 1e-6), draws_log_vol(net, x, y, loss, n_samples=100,
                                                   damping=1e-6, tol=1e-6)[0]))
    (t_flat, e_flat), (t_corr, e_corr) = vols
    assert t_corr < t_flat - 10
    assert (e_flat - e_corr) == pytest.approx(t_flat - t_corr, rel=0.2)


def exact_gauss_newton(net, x, y):
    """G of the mean cross-entropy over every weight matrix, from per-sample Jacobians
    (torch.func) and diag(p) - p p^T: no Kronecker, block or sampling approximation."""
    from torch.func import functional_call, jacrev, vmap

    params = dict(net.named_parameters())
    names = [n for n in params if n.endswith("weight")]

    def logits(w, xs):
        return functional_call(net, {**params, **w}, (xs[None],))[0]

    jac = vmap(jacrev(logits), in_dims=(None, 0))({n: params[n].detach() for n in names}, x)
    j = torch.cat([jac[n].reshape(len(x), jac[n].shape[1], -1) for n in names], 2)
    p = torch.softmax(net(x).detach(), 1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("sci,scd,sdj->ij", j, h, j).detach() / len(x), names


def matrix_normal_projection(cov, rows, cols):
    """log_vol of the U (x) V the maximum-likelihood fit converges to on infinitely many
    draws from N(0, cov): flip-flop on cov itself."""
    c = cov.reshape(rows, cols, rows, cols)
    v = torch.eye(cols)
    for _ in range(100):
        u = torch.einsum("aibj,ji->ab", c, torch.linalg.inv(v)) / cols
        v = torch.einsum("aibj,ba->ij", c, torch.linalg.inv(u)) / rows
    return cols * V.log_vol(u) + rows * V.log_vol(v)


def test_exact_draws_measure_a_relu_networks_joint_posterior():
    """(a) on a real network: a 2-hidden-layer ReLU MLP with cross-entropy, where the
    layers' posteriors are coupled and not Kronecker. Truth: the exact Gauss-Newton
    matrix of every layer jointly (torch.func), its inverse with the estimator's prior,
    each hidden layer's block of it, and that block's matrix-normal projection (what a
    matrix-normal fit to draws converges to). The estimate is within 10% of the
    projection; the projection and the block itself differ (the fit's stated bias)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                        nn.Linear(5, 3))
    data = bundle(n=200)
    x, y = data.train_x.double(), data.train_y
    g, names = exact_gauss_newton(net, x, y)
    factors = V.kronecker_factors(net, x, y, F.cross_entropy, fisher="exact", noise=False)
    deltas = torch.cat([torch.full((net.get_parameter(n).numel(),), 0.1 * float(
        torch.diagonal(factors[n[:-7]].A).mean() * torch.diagonal(factors[n[:-7]].G).mean()))
        for n in names])
    cov = torch.linalg.inv(g + torch.diag(deltas))
    draws = S.posterior_draws(net, x, y, F.cross_entropy, n_samples=400, damping=0.1, tol=1e-8)
    start = 0
    for name in names[:-1]:
        rows, cols = net.get_parameter(name).shape
        block = cov[start:start + rows * cols, start:start + rows * cols]
        start += rows * cols
        projection = matrix_normal_projection(block, rows, cols)
        est = S.kronecker_log_vol(draws.layers[name].samples)["log_vol"]
        assert est == pytest.approx(projection, rel=0.1)
        assert V.log_vol(block) < projection  # the fit sees only the Kronecker part


# -- (c) a model's estimate is its own ----------------------------------------------------------
def contexts(tmp_path, registry):
    from genbench.context import MeasureContext
    from genbench.population import expand
    from genbench.runner import DataCache, _quiet, train_population
    from genbench.store import Store
    from genbench.suite import load_suite

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    suite = load_suite(path, registry)
    specs = expand(suite, registry)
    data = DataCache(registry)
    store = Store(tmp_path / "store")
    train_population(specs, suite, store, registry, "cpu", _quiet, data=data)

    def make(model, key=None):
        init, final = store.load_weights(model["key"])
        return MeasureContext(key=key or model["key"], hparams=model["hparams"],
                              config=model["config"], data=data.get(model["config"]),
                              registry=registry, store=None, init_state=init,
                              final_state=final, settings={"volume": {"sampling": FAST_PLUGIN}})

    return store, store.models([sp.key for sp in specs]), make


FAST_PLUGIN = {"n_samples": 30}
TINY_SUITE = """
name = "tiny"
[dataset]
name = "mnist1d"
params = { num_samples = 300 }
[model]
name = "mlp"
params = { depth = 1, width = 8 }
[train]
max_epochs = 2
batch_size = 64
[regularizers.dropout]
rate = 0.0
[grid]
"regularizers.dropout.rate" = [0.0, 0.3]
[measures]
parameter_norm = {}
"""


def test_an_estimate_depends_on_its_model_only(tmp_path):
    """(c) Seeded from the model's content key: the same whatever else is estimated
    before it, and two models never share one chain's noise."""
    from genbench.plugins import get_registry

    torch.set_default_dtype(torch.float32)
    store, (first, second), make = contexts(tmp_path, get_registry())
    with store:
        alone = make(first).volume("sampling")
        make(second).volume("sampling")
        torch.manual_seed(123)  # whatever state the run left behind
        after = make(first).volume("sampling")
        assert {**after, "seconds": 0} == {**alone, "seconds": 0}
        # The same weights under another key: another chain, the same volume up to noise.
        other = make(first, key="f" * 20).volume("sampling")
        assert other["log_vol_sum"] != alone["log_vol_sum"]
        assert other["log_vol_sum"] == pytest.approx(alone["log_vol_sum"], rel=0.1)


# -- the plugin ---------------------------------------------------------------------------------
def test_langevin_plugin_reports_the_posterior_and_what_it_cost():
    """mode="langevin" through the plugin: the known-Hessian volume, kept/tried, ESS and the cost in epochs;
    dropout noise stays out of the chain (full-batch, noise-free gradients)."""
    from genbench.plugins import get_registry

    entry = get_registry().get("volume_estimator", "sampling")
    net, x, y, loss, h = kron_problem()
    data = DataBundle("toy", x, y, x[:4], y[:4], 3)
    params = entry.cls.Params(mode="langevin", **FAST)
    est = entry.cls(params).estimate(net, data, loss_fn=loss)
    assert est["log_vol_sum"] == pytest.approx(truth(h, 1e-6), rel=0.1)
    assert est["layers"]["weight"]["dim"] == 15
    assert (est["kept"], est["tried"]) == (80, 10 + 80 * 2)
    assert est["epochs"] == 10 + 80 * 2 + 1 + S.POWER_ITERATIONS + 1  # steps, mu_max, factors
    assert 20 < est["ess_min"] <= 80
    tapped = taps.number_taps(nn.Sequential(nn.Linear(6, 8), taps.Tap(nn.ReLU()),
                                            nn.Linear(8, 3))).float()
    plain = entry.cls(entry.cls.Params(mode="langevin", n_samples=20, burn_in=2))
    torch.manual_seed(5)
    clean = plain.estimate(tapped, bundle(), loss_fn=F.cross_entropy)
    taps.attach(tapped, [Drop(0.5)])
    torch.manual_seed(5)
    assert plain.estimate(tapped, bundle(), loss_fn=F.cross_entropy)["layers"] == clean["layers"]


def test_exact_plugin_reports_the_posterior_and_what_it_cost():
    """The default mode through the plugin: the known-Hessian volume, every draw kept and
    independent, the solve's residual and its cost in passes over the data."""
    from genbench.plugins import get_registry

    cls = get_registry().get("volume_estimator", "sampling").cls
    net, x, y, loss, h = kron_problem()
    est = cls(cls.Params(n_samples=100, damping=1e-6, tol=1e-6)).estimate(
        net, DataBundle("toy", x, y, x[:4], y[:4], 3), loss_fn=loss)
    assert est["mode"] == "exact"
    assert est["log_vol_sum"] == pytest.approx(truth(h, 1e-6), rel=0.1)
    assert (est["kept"], est["tried"], est["ess_min"]) == (100, 100, 100.0)
    assert est["residual"] < 1e-6
    assert est["epochs"] == 2 + 100 * (est["iterations"] + 1)  # factors, perturbations, solves


def test_each_mode_refuses_the_params_of_the_others():
    from genbench.plugins import get_registry

    cls = get_registry().get("volume_estimator", "sampling").cls
    with pytest.raises(ValueError, match="sigma_u apply to mode='paper' only"):
        cls.Params(sigma_u=0.005)
    with pytest.raises(ValueError, match="burn_in apply to mode='langevin' only"):
        cls.Params(burn_in=5)
    with pytest.raises(ValueError, match="tol apply to mode='exact' only"):
        cls.Params(mode="langevin", tol=1e-3)
    paper = cls(cls.Params(mode="paper", n_samples=8, sigma_u=0.01, eps=1.0))
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).float()
    est = paper.estimate(net, bundle(), loss_fn=F.cross_entropy)
    assert (est["mode"], est["kept"], est["tried"], est["epochs"]) == ("paper", 8, 8, 8)


# -- mode="paper": Algorithm 1 as written ------------------------------------------------------
def test_sampling_keeps_by_eps_and_never_resets():
    net, x, y, loss, _ = kron_problem(din=3, dout=2)
    w0 = net.weight.detach().clone()
    chain = S.sample_posterior(net, x, y, loss, n_samples=60, sigma_u=0.05, lr=1e-12,
                               batch_size=300, eps=0.02)
    ref = chain.ref_loss
    assert chain.kept_flags == [abs(v - ref) <= 0.02 for v in chain.losses]
    assert 0 < chain.kept < chain.tried == 60
    assert chain.samples["weight"].shape == (chain.kept, 6)
    # A random walk: after 60 steps the displacement has variance 60 sigma^2 per weight.
    drift = float(((net.weight.detach() - w0) ** 2).mean())
    assert 60 * 0.05 ** 2 / 3 < drift < 60 * 0.05 ** 2 * 3


