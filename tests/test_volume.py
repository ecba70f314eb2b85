"""Weight volume (science.md section 1) against exact curvature and closed forms.

Tests (a)-(h) of issue 4, plus the structural null directions, dropout-awareness,
BatchNorm, the block figure and the store-backed report.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

import genbench
from genbench import taps
from genbench.components import VolumeEstimator
from genbench import volume as V
from genbench.data import DataBundle
from genbench.threads import torch_threads


# Tiny models in float64 so exact comparisons can be tight (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("float64_default")


def squared_loss(out, target):
    return 0.5 * ((out - target) ** 2).sum(1).mean()


def weight_block_hessian(net, key, loss_fn, x, y):
    """Exact Hessian of the mean loss w.r.t. one weight matrix (row-major vec)."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    shape = params[key].shape

    def loss_of(w):
        p = dict(params)
        p[key] = w.reshape(shape)
        return loss_fn(functional_call(net, p, (x,)), y)

    return hessian(loss_of, params[key].reshape(-1))


def ggn_block(net, key, x, out_hessian):
    """Exact Gauss-Newton block E_s[J_s^T H_s J_s] of one weight matrix, from Jacobians."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    shape = params[key].shape

    def out_of(w, xi):
        p = dict(params)
        p[key] = w.reshape(shape)
        return functional_call(net, p, (xi[None],))[0]

    total = 0
    for i in range(x.shape[0]):
        jac = jacobian(lambda w: out_of(w, x[i]), params[key].reshape(-1))  # (C, k)
        total = total + jac.T @ out_hessian(i) @ jac
    return total / x.shape[0]


def kron_log_vol(h, damping):
    """Brute force: log_vol of the inverse of h + damping * mean(diag) * I."""
    hd = h + damping * torch.diagonal(h).mean() * torch.eye(h.shape[0])
    return V.log_vol(torch.linalg.inv(hd))


# -- (f) log_vol of a matrix ---------------------------------------------------------
def test_log_vol_properties():
    a = torch.randn(7, 7)
    m = a @ a.T + 0.1 * torch.eye(7)
    lv = V.log_vol(m)
    sign, logdet = torch.linalg.slogdet(m)
    assert sign > 0
    assert lv == pytest.approx(float(logdet - torch.log(torch.diagonal(m)).sum()), abs=1e-10)
    assert lv < 0
    assert V.log_vol(torch.diag(torch.rand(7) + 0.1)) == pytest.approx(0.0, abs=1e-14)
    assert V.log_vol(37.5 * m) == pytest.approx(lv, abs=1e-10)
    d = torch.diag(torch.rand(7) * 10 + 0.01)
    assert V.log_vol(d @ m @ d) == pytest.approx(lv, abs=1e-9)
    # Batched version agrees and marks singular matrices as NaN, never -inf.
    stack = torch.stack([m, torch.ones(7, 7)])
    out = V.batched_log_vol(stack)
    assert float(out[0]) == pytest.approx(lv, abs=1e-10) and math.isnan(float(out[1]))


# -- (a) one linear layer, squared loss --------------------------------------------------
@pytest.mark.parametrize("damping", [1e-1, 1e-3, 1e-6])
def test_single_linear_layer_matches_bruteforce_hessian(damping):
    lin = nn.Linear(4, 3, bias=False)
    x = torch.randn(50, 4) @ torch.randn(4, 4)
    y = torch.randn(50, 3)
    factors = V.kronecker_factors(lin, x, y, squared_loss)
    assert torch.allclose(factors[""].G, torch.eye(3), atol=1e-12)
    got = V.laplace_volume(factors, damping)["layers"]["weight"]
    h = hessian(
        lambda w: squared_loss(x @ w.reshape(3, 4).T, y), lin.weight.detach().reshape(-1))
    # E[H] = E[xx^T] (x) I exactly, and G = I, so the Kronecker damping equals
    # h + damping * mean(diag h) * I up to a scale (which log_vol ignores).
    assert got["log_vol"] == pytest.approx(kron_log_vol(h, damping), abs=1e-8)
    assert got["dim"] == 12 and got["vol_per_dim"] == pytest.approx(math.exp(got["log_vol"] / 12))


# -- (b) deep linear network, squared loss -------------------------------------------
def test_deep_linear_factors_equal_exact_gauss_newton_blocks():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2))
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    factors = V.kronecker_factors(net, x, y, squared_loss)
    for name in ("0", "1", "2"):
        exact = ggn_block(net, f"{name}.weight", x, lambda i: torch.eye(2))
        kron = torch.kron(factors[name].G, factors[name].A)
        assert torch.allclose(kron, exact, atol=1e-12 * float(exact.abs().max()) + 1e-14)
        assert not factors[name].ones_null


# -- (c) one data point, cross-entropy, ReLU MLP (with eval-mode BatchNorm) ------------
def test_one_point_cross_entropy_equals_exact_hessian_block():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.BatchNorm1d(6),
                        nn.ReLU(), nn.Linear(6, 3))
    net[3].running_mean.normal_()
    net[3].running_var.uniform_(0.5, 2.0)
    net.eval()
    x, y = torch.randn(1, 4), torch.tensor([1])
    factors = V.kronecker_factors(net, x, y, F.cross_entropy)
    for name in ("0", "2", "5"):
        # A piecewise-linear net: each layer's Hessian block is its Gauss-Newton block.
        exact = weight_block_hessian(net, f"{name}.weight", F.cross_entropy, x, y)
        kron = torch.kron(factors[name].G, factors[name].A)
        assert torch.allclose(kron, exact, atol=1e-12), name
    assert factors["5"].ones_null and not factors["0"].ones_null
    assert net[3].running_mean.requires_grad is False and not net.training


# -- (d) convolution -------------------------------------------------------------------
def test_conv_with_single_output_location_equals_linear():
    conv = nn.Sequential(nn.Conv2d(2, 3, kernel_size=3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 4))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(18, 3), nn.ReLU(), nn.Linear(3, 4))
    with torch.no_grad():
        lin[1].weight.copy_(conv[0].weight.reshape(3, 18))
        lin[1].bias.copy_(conv[0].bias)
        lin[3].load_state_dict(conv[3].state_dict())
    x, y = torch.randn(30, 2, 3, 3), torch.randint(0, 4, (30,))
    assert torch.allclose(conv(x), lin(x))
    fc, fl = V.kronecker_factors(conv, x, y), V.kronecker_factors(lin, x, y)
    assert torch.allclose(fc["0"].A, fl["1"].A, atol=1e-12)
    assert torch.allclose(fc["0"].G, fl["1"].G, atol=1e-12)
    vc = V.laplace_volume(fc, 1e-3)["layers"]["0.weight"]
    vl = V.laplace_volume(fl, 1e-3)["layers"]["1.weight"]
    assert vc["log_vol"] == pytest.approx(vl["log_vol"], abs=1e-9) and vc["dim"] == vl["dim"]
    # Conv1d over a single location is the same Linear layer too.
    conv1 = nn.Sequential(nn.Conv1d(2, 3, kernel_size=4), nn.Flatten(), nn.Linear(3, 2))
    lin1 = nn.Sequential(nn.Flatten(), nn.Linear(8, 3), nn.Linear(3, 2))
    with torch.no_grad():
        lin1[1].weight.copy_(conv1[0].weight.reshape(3, 8))
        lin1[1].bias.copy_(conv1[0].bias)
        lin1[2].load_state_dict(conv1[2].state_dict())
    x1, y1 = torch.randn(25, 2, 4), torch.randint(0, 2, (25,))
    f1, g1 = V.kronecker_factors(conv1, x1, y1), V.kronecker_factors(lin1, x1, y1)
    assert torch.allclose(f1["0"].A, g1["1"].A, atol=1e-12)
    assert torch.allclose(f1["0"].G, g1["1"].G, atol=1e-12)


def test_conv_factors_follow_the_expand_convention():
    """A = E_s[sum_t a_t a_t^T] over zero-padded, strided patches; G = E_s[(1/T) sum_t g_t g_t^T]."""
    net = nn.Sequential(nn.Conv2d(2, 3, kernel_size=2, stride=2, padding=1), nn.Tanh(),
                        nn.Flatten(), nn.Linear(3 * 3 * 3, 2))
    x, y = torch.randn(6, 2, 4, 4), torch.randn(6, 2)
    factors = V.kronecker_factors(net, x, y, squared_loss)
    conv = net[0]
    padded = F.pad(x, (1, 1, 1, 1))
    a_manual = torch.zeros(8, 8)
    patches = []
    for s in range(6):
        for i, j in itertools.product(range(3), range(3)):
            patch = padded[s, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1)
            patches.append(patch)
            a_manual += torch.outer(patch, patch)
    assert torch.allclose(factors["0"].A, a_manual / 6, atol=1e-12)
    # G: gradients of each output (squared loss: output Hessian = I) w.r.t. the conv output.
    h = conv(x)
    rest = lambda hi: net[3](net[2](net[1](hi[None])))[0]  # noqa: E731
    g_manual = torch.zeros(3, 3)
    for s in range(6):
        jac = jacobian(rest, h[s].detach())  # (2, 3, 3, 3)
        for c in range(2):
            rows = jac[c].reshape(3, -1).T  # one row per location
            g_manual += rows.T @ rows / 9
    assert torch.allclose(factors["0"].G, g_manual / 6, atol=1e-12)


# -- (e) Monte-Carlo E[G] -> exact ------------------------------------------------------
def test_monte_carlo_fisher_converges_to_exact():
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))
    x, y = torch.randn(16, 3), torch.randint(0, 4, (16,))
    exact = V.kronecker_factors(net, x, y)

    def error(draws):
        torch.manual_seed(1)
        mc = V.kronecker_factors(net, x, y, fisher="mc", mc_samples=draws)
        assert torch.equal(mc["0"].A, exact["0"].A)
        return max(float(torch.linalg.matrix_norm(mc[n].G - exact[n].G)
                         / torch.linalg.matrix_norm(exact[n].G)) for n in ("0", "2"))

    coarse, fine = error(10), error(20000)
    # Relative Frobenius error of the MC Fisher: about 1/sqrt(16 * draws); stated tolerance 3%.
    assert fine < 0.03
    assert fine < coarse / 5
    assert V.kronecker_factors(net, x, y, fisher="mc", mc_samples=4)["2"].ones_null


# -- structural null directions ------------------------------------------------------------
def test_softmax_null_direction_converges_as_damping_vanishes():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    factors = V.kronecker_factors(net, x, y)
    last = [V.laplace_volume(factors, d)["layers"]["2.weight"]["log_vol"]
            for d in (1e-4, 1e-6, 1e-8, 1e-10)]
    steps = [abs(a - b) for a, b in zip(last, last[1:])]
    assert steps[-1] < 1e-6 and steps[-1] < steps[0]
    assert all(math.isfinite(v) and v <= 0 for v in last)
    # Plain damping along the null direction diverges like log(damping): the artifact.
    naive = [V.laplace_volume(factors, d, null_space="damp")["layers"]["2.weight"]["log_vol"]
             for d in (1e-4, 1e-8)]
    assert naive[1] < naive[0] - 20


def test_profiled_null_direction_is_the_best_variance():
    """The profiled factor volume equals the maximum over t of log_vol(Sigma_reg + t u u^T),
    found here by brute force over a grid of t."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5))
    x, y = torch.randn(100, 3), torch.randint(0, 5, (100,))
    g = V.kronecker_factors(net, x, y)["2"].G
    prof = V.inverse_factor_volume(g, 1e-9, ones_null=True)
    u = torch.full((5,), 5 ** -0.5)
    proj = torch.eye(5) - torch.outer(u, u)
    reg = torch.linalg.pinv(proj @ g @ proj, hermitian=True)
    ts = torch.logspace(-6, 6, 4001) * float(torch.diagonal(reg).mean())
    best = max(V.log_vol(reg + t * torch.outer(u, u)) for t in ts)
    assert prof.null_profiled and prof.log_vol == pytest.approx(best, abs=1e-5)
    assert prof.log_vol >= best - 1e-9


def differentiable_log_vol(m):
    return torch.logdet(m) - torch.log(torch.diagonal(m)).sum()


def best_gauge_bruteforce(a, g, da, dg):
    """Brute force of the softmax layer's log-volume (docs/volume.md): build the full
    precision (G + dg I) (x) (A + da I) of row-major vec(W), restrict it to a *random*
    orthonormal basis of the complement of the directions 1_C (x) v, invert there, and
    maximize over every covariance M of the null directions the correlation log-det,
    in weight coordinates, of Sigma_S + N M N^T (LBFGS over M = L L^T)."""
    n, c = a.shape[0], g.shape[0]
    h = torch.kron(g + dg * torch.eye(c), a + da * torch.eye(n))
    null = torch.kron(torch.full((c, 1), c ** -0.5), torch.eye(n))  # (cn, n), orthonormal
    rand = torch.randn(c * n, c * n - n)
    basis = torch.linalg.qr(rand - null @ (null.T @ rand))[0]
    sigma_s = basis @ torch.linalg.inv(basis.T @ h @ basis) @ basis.T
    chol = (torch.eye(n) * float(torch.diagonal(sigma_s).mean()) ** 0.5).requires_grad_(True)
    opt = torch.optim.LBFGS([chol], max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -differentiable_log_vol(sigma_s + null @ chol @ chol.T @ null.T)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        return float(differentiable_log_vol(sigma_s + null @ chol @ chol.T @ null.T))


@pytest.mark.parametrize("damping", [1e-2, 1e-5])
def test_softmax_layer_is_the_best_gauge_of_the_restricted_kronecker_posterior(damping):
    """The last layer's log-volume equals a brute force over the full Kronecker matrix
    restricted to the (C-1)N-dimensional complement of 1_C (x) v, and it differs from the
    old handling (E[A]^-1's term C times) by exactly one copy of log_vol(E[A]^-1)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))  # tanh: no dead units
    x, y = torch.randn(100, 3), torch.randint(0, 5, (100,))
    f = V.kronecker_factors(net, x, y)["2"]
    est = V.laplace_volume({"2": f}, damping)
    layer, det = est["layers"]["2.weight"], est["layer_details"]["2.weight"]
    da, dg = det["damping_A"], det["damping_G"]
    truth = best_gauge_bruteforce(f.A, f.G, da, dg)
    assert layer["log_vol"] == pytest.approx(truth, abs=1e-6 * abs(truth) + 1e-8)
    assert layer["dim"] == 4 * 4 and det["null_profiled"]
    old = 5 * det["log_vol_A_inv"] + 4 * det["log_vol_G_inv"]
    assert old - layer["log_vol"] == pytest.approx(det["log_vol_A_inv"])
    assert det["log_vol_A_inv"] < -0.05  # so the old extra copy is a visible error


def test_softmax_layer_converges_to_the_undamped_restricted_posterior():
    """As damping -> 0 the layer's log-volume converges, to the brute force on the undamped
    Kronecker matrix restricted to the complement (invertible there)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    x, y = torch.randn(100, 3), torch.randint(0, 5, (100,))
    f = V.kronecker_factors(net, x, y)["2"]
    values = [V.laplace_volume({"2": f}, d)["layers"]["2.weight"]["log_vol"]
              for d in (1e-3, 1e-5, 1e-7, 1e-9)]
    steps = [abs(a - b) for a, b in zip(values, values[1:])]
    assert steps[2] < steps[1] < steps[0]
    limit = best_gauge_bruteforce(f.A, f.G, 0.0, 0.0)
    assert values[-1] == pytest.approx(limit, abs=1e-5 * abs(limit))


# -- (g) dead units and constant-zero inputs ----------------------------------------------
def test_dead_unit_and_zero_input_change_nothing():
    """A ReLU unit that never fires and an input that is always zero: the volumes equal
    those of the network with that unit / input removed."""
    big = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        big[0].weight[2] = 0.0
        big[0].bias[2] = -1.0  # unit 2 is dead
    x = torch.randn(80, 4)
    x[:, 1] = 0.0  # input 1 is always zero
    y = torch.randint(0, 3, (80,))
    small = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    keep_in, keep_hidden = [0, 2, 3], [0, 1, 3, 4]
    with torch.no_grad():
        small[0].weight.copy_(big[0].weight[keep_hidden][:, keep_in])
        small[0].bias.copy_(big[0].bias[keep_hidden])
        small[2].weight.copy_(big[2].weight[:, keep_hidden])
        small[2].bias.copy_(big[2].bias)
    assert torch.allclose(big(x), small(x[:, keep_in]))
    vb = V.laplace_volume(V.kronecker_factors(big, x, y), 1e-3)
    vs = V.laplace_volume(V.kronecker_factors(small, x[:, keep_in], y), 1e-3)
    for key in ("0.weight", "2.weight"):
        assert vb["layers"][key]["log_vol"] == pytest.approx(vs["layers"][key]["log_vol"], abs=1e-9)
        assert math.isfinite(vb["layers"][key]["log_vol"])
    assert vb["layer_details"]["0.weight"]["live_in"] == 3
    assert vb["layer_details"]["0.weight"]["live_out"] == 4
    assert vb["layers"]["0.weight"]["dim"] == 20  # dim counts every weight


def test_rank_deficient_factors_stay_finite():
    """Fewer samples than inputs and an all-dead layer: finite, <= 0, never NaN."""
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(3, 10), torch.randint(0, 3, (3,))
    out = V.laplace_volume(V.kronecker_factors(net, x, y), 1e-8)
    assert all(math.isfinite(v["log_vol"]) and v["log_vol"] <= 0 for v in out["layers"].values())
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # everything dead
    out = V.laplace_volume(V.kronecker_factors(net, x, y), 1e-3)
    assert out["layers"]["0.weight"]["log_vol"] == 0.0
    assert math.isfinite(out["log_vol_sum"])


# -- dropout-aware factors, BatchNorm ------------------------------------------------------
class Drop(taps.TapHandler):
    def __init__(self, q):
        self.q = q

    def activation(self, tap, a):
        return a * torch.empty_like(a).bernoulli_(1 - self.q) / (1 - self.q)


def tapped_mlp(batch_norm=False):
    layers = [nn.Linear(3, 4)] + ([nn.BatchNorm1d(4)] if batch_norm else []) + \
             [taps.Tap(nn.ReLU()), nn.Linear(4, 2)]
    return taps.number_taps(nn.Sequential(*layers))


def test_factors_are_accumulated_with_dropout_noise():
    net = tapped_mlp(batch_norm=True).eval()
    net[1].running_mean.normal_()
    taps.attach(net, [Drop(0.5)])
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clean = V.kronecker_factors(net, x, y, noise=False)
    torch.manual_seed(3)
    noisy = V.kronecker_factors(net, x, y, noise_passes=400)
    # The noise is active: E[(eta a)(eta a)^T] has diagonal E[a^2]/(1-q), off-diagonal E[a a^T].
    a_clean, a_noisy = clean["3"].A, noisy["3"].A
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(torch.diagonal(a_noisy), 2 * torch.diagonal(a_clean), rtol=0.05)
    assert torch.allclose(a_noisy[off], a_clean[off], rtol=0.1, atol=0.02 * float(a_clean.max()))
    assert torch.allclose(noisy["0"].A, clean["0"].A, atol=1e-12)  # nothing before the noise
    # Nothing else moved: BatchNorm statistics and weights as before, eval mode kept.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training and not net[1].training  # the mode it was given
    assert not any(t.force_noise for t in taps.taps(net))


# -- the plugins -------------------------------------------------------------------------
def bundle(n=64, d=6, classes=3):
    x = torch.randn(n, d, dtype=torch.float32)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataBundle("toy", x, y % classes, x[:8], y[:8] % classes, classes)


def test_laplace_plugin_reports_layers_and_the_block_figure():
    from genbench.plugins import get_registry

    entry = get_registry().get("volume_estimator", "laplace")
    torch.set_default_dtype(torch.float32)
    net = taps.number_taps(nn.Sequential(nn.Linear(6, 20), taps.Tap(nn.ReLU()), nn.Linear(20, 3)))
    est = entry.cls(entry.cls.Params(blocks=16)).estimate(net, bundle(), loss_fn=F.cross_entropy)
    assert set(est["layers"]) == {"0.weight", "2.weight"}
    assert est["layers"]["0.weight"]["dim"] == 120 and est["damping"] == 1e-3
    assert all(0 < v["vol_per_dim"] <= 1 for v in est["layers"].values())
    assert est["log_vol_sum"] == pytest.approx(sum(v["log_vol"] for v in est["layers"].values()))
    figure = est["block_figure"]
    assert figure["block"] == 16 and 0 < figure["mean"] <= 1
    # Blocks covering a whole factor give exp(log_vol) of that factor.
    cov = torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.5]])
    assert V.block_mean_det(cov, 16) == pytest.approx(math.exp(V.log_vol(cov)))
    assert V.block_mean_det(cov, 1) == pytest.approx(1.0)
    with_bias = entry.cls(entry.cls.Params(include_bias=True)).estimate(net, bundle())
    assert with_bias["layers"]["0.weight"]["dim"] == 140


def test_laplace_plugin_on_a_cnn_with_batchnorm_matches_torch_func_factors():
    """A CNN with eval-mode BatchNorm through the plugin. Conv 1 (16 output locations): A is
    the sum of hand-cut zero-padded patches' outer products and G the mean over locations of
    J_t^T H J_t, J_t from torch.func.jacrev through BatchNorm and ReLU. Conv 2 (one location):
    on one sample, kron(G, A) is the exact Hessian block (the net is piecewise linear in
    each weight). Each layer's log-volume equals a brute force on the full Kronecker matrix."""
    from torch.func import jacrev

    from genbench.plugins import get_registry

    entry = get_registry().get("volume_estimator", "laplace")
    net = taps.number_taps(nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), taps.Tap(nn.ReLU()),
        nn.Conv2d(3, 4, 4), nn.BatchNorm2d(4), taps.Tap(nn.ReLU()), nn.Flatten(),
        nn.Linear(4, 3)))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.3)
    net.eval()
    x = torch.randn(1, 1, 4, 4)
    y = torch.tensor([1])
    data = DataBundle("img", x, y, x, y, 3)
    est = entry.cls(entry.cls.Params(damping=1e-2)).estimate(net, data, loss_fn=F.cross_entropy)
    factors = V.kronecker_factors(net, x, y)
    p = torch.softmax(net(x), 1)[0].detach()
    out_h = torch.diag(p) - torch.outer(p, p)
    # Conv 1: hand-cut patches and per-location Jacobians through BatchNorm and ReLU.
    xpad = F.pad(x[0], (1, 1, 1, 1))
    patches = [xpad[:, i:i + 3, j:j + 3].reshape(-1) for i in range(4) for j in range(4)]
    a1 = sum(torch.outer(v, v) for v in patches)
    h1 = net[0](x)[0].detach()
    jac = jacrev(lambda h: net[1:](h[None])[0])(h1)  # (C, 3, 4, 4)
    g1 = sum(jac[:, :, i, j].T @ out_h @ jac[:, :, i, j] for i in range(4) for j in range(4)) / 16
    assert torch.allclose(factors["0"].A, a1, atol=1e-10)
    assert torch.allclose(factors["0"].G, g1, atol=1e-10)
    # Conv 2: one output location, one sample: the exact Hessian block.
    exact = weight_block_hessian(net, "3.weight", F.cross_entropy, x, y)
    assert torch.allclose(torch.kron(factors["3"].G, factors["3"].A), exact, atol=1e-10)
    for name, f in factors.items():
        det = est["layer_details"][V.layer_key(name)]
        n_in, n_out = f.A.shape[0], f.G.shape[0]
        if det["null_profiled"]:
            continue  # the softmax layer: tested against its own brute force above
        live_a, live_g = torch.diagonal(f.A) > 0, torch.diagonal(f.G) > 0
        a, g = f.A[live_a][:, live_a], f.G[live_g][:, live_g]
        h = torch.kron(g + det["damping_G"] * torch.eye(g.shape[0]),
                       a + det["damping_A"] * torch.eye(a.shape[0]))
        assert est["layers"][V.layer_key(name)]["log_vol"] == pytest.approx(
            V.log_vol(torch.linalg.inv(h)), rel=1e-8)
        assert est["layers"][V.layer_key(name)]["dim"] == n_in * n_out
    assert est["layers"]["7.weight"]["dim"] == 4 * (3 - 1)


# -- store-backed report and volume during training -------------------------------------------
TINY_SUITE = """
name = "tiny"
[dataset]
name = "mnist1d"
params = {{ num_samples = 300 }}
[model]
name = "mlp"
params = {{ depth = 1, width = 8 }}
[train]
max_epochs = 2
batch_size = 64
{track}
[regularizers.dropout]
rate = 0.0
[grid]
"regularizers.dropout.rate" = [0.0, 0.3]
[measures]
parameter_norm = {{}}
[volume.laplace]
damping = 0.02

[volume.sampling]
mode = "paper"
n_samples = 8
sigma_u = 0.001
eps = 1.0
"""


class Failing(VolumeEstimator):
    """An estimator that always fails, to check that failures are listed, not fatal."""

    name = "failing"

    def estimate(self, model, data, *, loss_fn=None, device=None):
        raise ValueError("kept 0 of 3 samples")


class FailingPlugin:
    @genbench.hookimpl
    def register_volume_estimators(self, register):
        register(Failing)


def test_volume_report_uses_the_stored_suites_settings_and_reuses_estimates(tmp_path):
    from genbench.estimate import volume_report
    from genbench.plugins import load_registry
    from genbench.runner import run
    from genbench.store import Store

    torch.set_default_dtype(torch.float32)
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE.format(track=""))
    store = tmp_path / "store"
    first = volume_report(store, "laplace", suite=path)
    assert first["params"]["damping"] == 0.02 and first["settings_from"] == "suite 'tiny'"
    assert len(first["models"]) == 2 and "failed" not in first
    by_rate = {m["hparams"]["regularizers.dropout.rate"]: m for m in first["models"].values()}
    assert "noise_off" not in by_rate[0.0]  # no noise regularizer bound
    assert set(by_rate[0.3]["noise_off"]) == {"layers", "log_vol_sum", "vol_per_dim_mean"}
    for m in first["models"].values():
        assert set(m["layers"]) == {"0.weight", "2.weight"}
        assert all(set(v) == {"log_vol", "dim", "vol_per_dim"} for v in m["layers"].values())
    with pytest.raises(FileNotFoundError, match="no genbench store"):
        volume_report(tmp_path / "nowhere", "laplace", {})
    # No run recorded yet: the estimator's defaults, and the report says so.
    bare = volume_report(store, "laplace")
    assert bare["params"]["damping"] == 1e-3 and "defaults" in bare["settings_from"]
    run(path, store=store, device="cpu")
    # Whole store, no suite named: the stored suite's [volume.laplace], reused from the store.
    again = volume_report(store, "laplace")
    assert again["params"] == first["params"] and again["models"] == first["models"]
    assert "last run" in again["settings_from"]
    assert volume_report(store, "laplace", {"damping": 0.1})["params"]["damping"] == 0.1
    with Store(store) as st:
        assert len(st.results(kind="volume")) == 2 * 3  # damping 0.02, 1e-3, 0.1
    # A model whose estimate fails is listed with its error, not fatal.
    registry = load_registry(extra=[("failing", FailingPlugin())])
    failed = volume_report(store, "failing", registry=registry)
    assert failed["models"] == {} and len(failed["failed"]) == 2
    assert all("kept 0" in e for e in failed["failed"].values())


def test_volume_command_exits_non_zero_when_every_estimate_failed(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import genbench.estimate
    from genbench.cli import app

    monkeypatch.setattr(genbench.estimate, "volume_report", lambda *a, **k: {
        "estimator": "laplace", "params": {"damping": 1e-3}, "settings_from": "x",
        "models": {}, "failed": {"abcdef0123": "ValueError: no"}})
    res = CliRunner().invoke(app, ["volume", "--store", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 3 and "every laplace estimate failed" in res.output
    assert "Traceback" not in res.output


def test_volume_is_recorded_during_training():
    from genbench.plugins import get_registry
    from genbench.population import expand
    from genbench.suite import validate
    from genbench.training import load_trained, train_one

    import tomllib

    torch.set_default_dtype(torch.float32)
    text = TINY_SUITE.format(track='track_volume = { estimator = "laplace", every = 1 }')
    registry = get_registry()
    suite = validate(tomllib.loads(text), registry)
    spec = expand(suite, registry)[1]
    data = registry.get("dataset", "mnist1d").cls(
        registry.get("dataset", "mnist1d").cls.Params(num_samples=300)).load()
    result = train_one(spec, data, registry)
    history = result.metrics["history"]
    assert [h["epoch"] for h in history if "volume" in h] == [h["epoch"] for h in history]
    # The volume tracked at the last epoch is the estimate of the weights the run ended with
    # (recomputed here from the stored final state, under the tracker's seed: dropout 0.3).
    entry = registry.get("volume_estimator", "laplace")
    torch.manual_seed(history[-1]["epoch"])  # the tracker seeds, then rebuilds the model
    model = load_trained(registry, spec.config, data, result.final_state)
    again = entry.cls().estimate(model, data, loss_fn=F.cross_entropy)
    assert spec.hparams["regularizers.dropout.rate"] == 0.3
    assert history[-1]["volume"]["log_vol_sum"] == pytest.approx(again["log_vol_sum"], rel=1e-12)
    assert history[-1]["volume"]["vol_per_dim_mean"] == pytest.approx(again["vol_per_dim_mean"],
                                                                      rel=1e-12)
    # and training moved it: the first epoch's weights had another volume
    assert history[0]["volume"]["log_vol_sum"] != pytest.approx(again["log_vol_sum"], rel=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_gram_is_exact_on_one_thread_and_on_several(threads):
    """dsyrk (one thread) and torch's matmul (more) both give rows^T rows: the truth is an
    exact-rational sum, computed in Python's fractions from the float64 rows."""
    from fractions import Fraction

    rows = torch.randn(300, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = [[float(sum(Fraction(a) * Fraction(b) for a, b in zip(rows[:, i].tolist(), rows[:, j].tolist())))
              for j in range(5)] for i in range(5)]
    with torch_threads(threads):
        got = V._gram(rows)
    torch.testing.assert_close(got, torch.tensor(exact, dtype=torch.float64), rtol=1e-13, atol=1e-12)
