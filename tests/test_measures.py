"""The eight complexity measures against independent truths (closed forms, numpy, analytic
quadratics), and the sharpness searches they rest on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import genbench
from genbench import context, sharpness
from genbench.sharpness import SigmaParams
from genbench.components import ModelFamily, Params, VolumeEstimator
from genbench.plugins import load_registry
from genbench.taps import Tap, number_taps
from genbench.testing import context as context_for
from genbench.testing import mlp_config, tiny_data

# One thread: the machine is shared, and oversubscribed threads make tiny models crawl.
pytestmark = pytest.mark.usefixtures("torch_threads")

# -- helpers ---------------------------------------------------------------------------


def make_ctx(config, data, registry=None, final=None, init=None, seed=0, settings=None,
             trained_steps=0, store=None):
    """:func:`genbench.testing.context`, untrained unless asked."""
    return context_for(config, data, registry, final, init, seed, settings, trained_steps, store)


def measure(name, ctx, **params):
    entry = ctx.registry.get("measure", name)
    out = entry.cls(entry.cls.Params(**params)).compute(ctx)
    return out["value"] if isinstance(out, dict) else out


FAST_SIGMA = {"depth": 10, "draws": 4, "n_samples": 48}
FAST_ALPHA = {"depth": 10, "restarts": 2, "steps": 4, "n_samples": 48}


# -- norms on hand-built weights -----------------------------------------------------


def test_norms_on_hand_built_weights():
    data = tiny_data(d=2, n_classes=2)
    w1, w2 = torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    i1, i2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2)
    ctx = make_ctx(mlp_config(depth=1, width=2), data,
                   final={"0.weight": w1, "2.weight": w2, "0.bias": torch.tensor([9.0, 9.0])},
                   init={"0.weight": i1, "2.weight": i2})
    # ||W1||^2 + ||W2||^2 = (9 + 16) + (1 + 4 + 4 + 16); biases excluded.
    assert measure("parameter_norm", ctx) == 50.0
    # ||diag(2, 3)||^2 + ||W2||^2 = 13 + 25
    assert measure("frobenius_distance", ctx) == 38.0
    # top singular values: diag(2, 3) -> 3; [[1, 2], [2, 4]] (rank 1) -> 5. Squared: 9 + 25.
    assert measure("spectral_norm", ctx) == pytest.approx(34.0, rel=1e-12)


class TinyCNN(ModelFamily):
    """Conv2d(1 -> 3, 3x3) -> ReLU tap -> flatten -> Linear: a conv kernel for the tests."""

    name = "tiny_cnn"

    class Params(Params):
        channels: int = 3

    def build(self, input_shape, n_classes):
        c = self.params.channels
        h, w = input_shape[1] - 2, input_shape[2] - 2
        return number_taps(nn.Sequential(nn.Conv2d(input_shape[0], c, 3), Tap(nn.ReLU()),
                                         nn.Flatten(), nn.Linear(c * h * w, n_classes)))


class ModelsPlugin:
    @genbench.hookimpl
    def register_models(self, register):
        register(TinyCNN)


def test_spectral_norm_matches_numpy_svd_including_a_conv_kernel():
    registry = load_registry(extra=[("test_models", ModelsPlugin())])
    data = tiny_data(shape=(2, 6, 6))
    config = {"dataset": {"name": "tiny", "params": {}},
              "model": {"name": "tiny_cnn", "params": {}}, "regularizers": {}}
    g = torch.Generator().manual_seed(3)
    kernel = torch.randn(3, 2, 3, 3, generator=g)
    dense = torch.randn(3, 48, generator=g)
    ctx = make_ctx(config, data, registry=registry, final={"0.weight": kernel, "3.weight": dense})
    init = ctx.init_state
    expected = sum(np.linalg.svd((ctx.final_state[n].double() - init[n].double()).numpy()
                                 .reshape(shape), compute_uv=False)[0] ** 2
                   for n, shape in (("0.weight", (3, 18)), ("3.weight", (3, 48))))
    assert measure("spectral_norm", ctx) == pytest.approx(expected, rel=1e-10)
    assert ctx.weights()["0.weight"].shape == (3, 18)  # (C_out, C_in*kh*kw)


# -- path norm ------------------------------------------------------------------------


def _relu_mlp_ctx(activation="relu", batch_norm=False, seed=1):
    data = tiny_data(d=4)
    return make_ctx(mlp_config(widths=[5, 3], activation=activation, batch_norm=batch_norm),
                    data, seed=seed)


def test_path_norm_equals_closed_form_without_biases():
    ctx = _relu_mlp_ctx()
    s = {k: v.double() for k, v in ctx.final_state.items()}
    ones = torch.ones(4, dtype=torch.float64)
    closed = torch.ones(3, dtype=torch.float64) @ (s["4.weight"] ** 2) @ (s["2.weight"] ** 2) \
        @ (s["0.weight"] ** 2) @ ones
    assert measure("path_norm", ctx, bias=False) == pytest.approx(math.sqrt(closed), rel=1e-12)


def test_path_norm_squares_biases_as_paths_from_a_constant_unit():
    ctx = _relu_mlp_ctx()
    s = {k: v.double() for k, v in ctx.final_state.items()}
    h = torch.ones(4, dtype=torch.float64)
    for layer in ("0", "2", "4"):
        h = s[f"{layer}.weight"] ** 2 @ h + s[f"{layer}.bias"] ** 2
    assert measure("path_norm", ctx) == pytest.approx(math.sqrt(h.sum()), rel=1e-12)
    assert measure("path_norm", ctx) > measure("path_norm", ctx, bias=False)


def test_path_norm_of_tanh_network_is_the_path_sum_unless_asked_for_the_literal_recipe():
    relu, tanh = _relu_mlp_ctx("relu"), _relu_mlp_ctx("tanh")
    assert measure("path_norm", tanh) == pytest.approx(measure("path_norm", relu), rel=1e-12)
    assert measure("path_norm", relu, activation="model") == pytest.approx(
        measure("path_norm", relu), rel=1e-12)  # ReLU of non-negative signals is the identity
    literal = measure("path_norm", tanh, activation="model")
    assert literal != pytest.approx(measure("path_norm", tanh), rel=1e-3)


def test_path_norm_reads_batch_norm_as_its_eval_mode_affine_map():
    ctx = _relu_mlp_ctx(batch_norm=True)
    g = torch.Generator().manual_seed(5)
    for bn in ("1", "4"):
        for stat, lo in (("running_mean", -1.0), ("running_var", 0.5), ("weight", -2.0),
                         ("bias", -1.0)):
            ctx.final_state[f"{bn}.{stat}"] = lo + torch.rand(ctx.final_state[f"{bn}.{stat}"].shape,
                                                              generator=g) * 2
    s = {k: v.double() for k, v in ctx.final_state.items()}
    h = torch.ones(4, dtype=torch.float64)
    for lin, bn in (("0", "1"), ("3", "4")):
        h = s[f"{lin}.weight"] ** 2 @ h + s[f"{lin}.bias"] ** 2
        scale = s[f"{bn}.weight"] / torch.sqrt(s[f"{bn}.running_var"] + 1e-5)
        shift = s[f"{bn}.bias"] - s[f"{bn}.running_mean"] * scale
        h = scale ** 2 * h + shift ** 2
    h = s["6.weight"] ** 2 @ h + s["6.bias"] ** 2
    assert measure("path_norm", ctx) == pytest.approx(math.sqrt(h.sum()), rel=1e-12)


# -- the evaluator of perturbed copies ------------------------------------------------


def test_batched_and_sequential_evaluation_agree_with_plain_forward_passes():
    ctx = _relu_mlp_ctx(batch_norm=True)
    model = ctx.build()
    names = [n for n, _ in model.named_parameters()]
    x, y = ctx.data.train_x, ctx.data.train_y
    g = torch.Generator().manual_seed(0)
    delta = {n: 0.1 * torch.randn((3, *p.shape), generator=g) for n, p in model.named_parameters()}
    batched = sharpness.PerturbedLoss(model, names, x, y, batched=True, rows_per_pass=40)
    looped = sharpness.PerturbedLoss(model, names, x, y, batched=False)
    lb, eb, gb = batched.evaluate(delta, with_grad=True)
    ll, el, gl = looped.evaluate(delta, with_grad=True)
    for k in range(3):  # the independent truth: perturb a copy in place, plain forward
        copy = ctx.build()
        with torch.no_grad():
            for n, p in copy.named_parameters():
                p.add_(delta[n][k])
        copy.requires_grad_(True)
        out = copy(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        assert lb[k].item() == pytest.approx(loss.item(), rel=1e-5)
        assert ll[k].item() == pytest.approx(loss.item(), rel=1e-5)
        assert eb[k].item() == el[k].item() == (out.argmax(1) != y).float().mean().item()
        for n, p in copy.named_parameters():
            torch.testing.assert_close(gb[n][k], p.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gl[n][k], p.grad, rtol=1e-4, atol=1e-6)


def test_drawn_noise_has_standard_deviation_sigma_not_sigma_squared():
    base = {"w": torch.zeros(200, 50)}
    noise = sharpness.draw_noise(base, 0.3, draws=4, generator=torch.Generator().manual_seed(0))
    assert noise["w"].shape == (4, 200, 50)
    assert noise["w"].std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise["w"].mean().item()) < 0.01


# -- sigma search on a known quadratic ------------------------------------------------


class Quadratic(nn.Module):
    """'Loss' 0.5 * sum_i h_i (w_i - c_i)^2 + offset, returned as the model output."""

    def __init__(self, h: torch.Tensor, c: torch.Tensor, offset: float = 0.3):
        super().__init__()
        self.weight = nn.Parameter(c.clone())
        self.register_buffer("h", h)
        self.register_buffer("c", c)
        self.offset = offset

    def forward(self, x):
        q = 0.5 * (self.h * (self.weight - self.c) ** 2).sum() + self.offset
        return q.expand(x.shape[0], 1)


def quadratic_loss(h, c, **kw):
    x, y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    return sharpness.PerturbedLoss(Quadratic(h, c), ["weight"], x, y,
                                   loss_fn=lambda out, _y: out.mean(), **kw)


def test_sigma_search_matches_the_analytic_sigma_of_a_quadratic():
    d, eps = 2000, 1.25
    g = torch.Generator().manual_seed(0)
    h = 0.5 + torch.rand(d, generator=g)
    c = torch.randn(d, generator=g)
    out = sharpness.sigma_search(quadratic_loss(h, c), eps=eps, depth=20, draws=10, seed=7)
    # E L(W + U) - L(W) = sigma^2 / 2 * sum_i h_i  =>  sigma* = sqrt(2 eps / sum h).
    analytic = math.sqrt(2 * eps / h.sum().item())
    assert out["sigma"] == pytest.approx(analytic, rel=0.03)
    # With the search's own draws Z_k the rise is sigma^2/2 mean_k sum_i h_i z_ki^2 exactly.
    z = torch.randn((10, d), generator=torch.Generator().manual_seed(7))
    exact = math.sqrt(2 * eps / (h * z ** 2).sum(1).mean().item())
    lo, hi = out["bracket"]
    assert lo <= exact + 1e-6 and exact <= hi + 1e-6 and hi - lo < 1e-5
    assert all((dev <= eps) == (s <= exact) for s, dev in out["probes"])


class Bump(nn.Module):
    """A loss that rises only when the perturbation's RMS size is near r0: the deviation is
    non-monotone in sigma, so only the max over sigma' <= sigma keeps sigma below the bump."""

    def __init__(self, d: int, r0: float = 0.3, width: float = 0.05):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d))
        self.r0, self.width = r0, width

    def forward(self, x):
        r = self.weight.pow(2).mean().sqrt()
        return torch.exp(-(r - self.r0) ** 2 / (2 * self.width ** 2)).expand(x.shape[0], 1)


def test_sigma_search_takes_the_max_over_smaller_sigmas():
    x, y = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    ev = sharpness.PerturbedLoss(Bump(4000), ["weight"], x, y, loss_fn=lambda o, _y: o.mean())
    eps = 0.1
    # The bump exceeds eps for |sigma - 0.3| < 0.05 sqrt(2 ln 10): the largest safe sigma
    # below it is 0.3 - 0.1517.
    below_bump = 0.3 - 0.05 * math.sqrt(2 * math.log(1 / eps))
    blind = sharpness.sigma_search(ev, eps=eps, depth=15, draws=2, envelope=0)
    assert blind["sigma"] == 2.0  # plain bisection never looks below the passing upper bound
    out = sharpness.sigma_search(ev, eps=eps, depth=15, draws=2, envelope=7)
    assert out["sigma"] == pytest.approx(below_bump, rel=0.02)


# -- alpha' search --------------------------------------------------------------------


def test_alpha_search_finds_the_box_corner_of_a_quadratic_and_sharper_scores_higher():
    d, eps = 50, 0.05
    g = torch.Generator().manual_seed(1)
    c = torch.randn(d, generator=g)
    radius_sq = ((c.abs() + 1e-3) ** 2).sum().item()
    values = {}
    for curvature in (1.0, 4.0):
        out = sharpness.alpha_search(quadratic_loss(torch.full((d,), curvature), c), eps=eps,
                                     depth=20, restarts=2, steps=10)
        # Worst case in the box is the corner: rise = curvature/2 alpha^2 sum (|c|+1e-3)^2.
        analytic = math.sqrt(2 * eps / (curvature * radius_sq))
        assert out["alpha"] == pytest.approx(analytic, rel=1e-4)
        values[curvature] = 1 / out["alpha"] ** 2
    assert values[4.0] > values[1.0]
    assert values[4.0] / values[1.0] == pytest.approx(4.0, rel=1e-3)


def test_ascent_raises_the_loss_from_its_random_start():
    g = torch.Generator().manual_seed(2)
    h, c = 0.5 + torch.rand(30, generator=g), torch.randn(30, generator=g)
    trace = sharpness.ascent(quadratic_loss(h, c), 0.1, restarts=3, steps=8)["trace"]
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))
    corner = 0.3 + 0.5 * (h * (0.1 * (c.abs() + 1e-3)) ** 2).sum().item()
    assert trace[0] < 0.9 * (corner - 0.3) + 0.3 and trace[-1] == pytest.approx(corner, rel=1e-5)


def test_alpha_search_on_a_network_brackets_the_eps_rise():
    ctx = make_ctx(mlp_config(widths=[8]), tiny_data(), trained_steps=60)
    rec = ctx.alpha(**FAST_ALPHA)
    lo, hi = rec["bracket"]
    assert 0 < lo < hi <= 2 and rec["eps"] == 0.05
    ev = context.perturbed_loss(ctx, sharpness.resolve(sharpness.AlphaParams(**FAST_ALPHA), 3))
    kw = {"restarts": 2, "steps": 4}
    assert sharpness.ascent(ev, lo, **kw)["worst"] - rec["reference"] <= rec["eps"]
    assert sharpness.ascent(ev, hi, **kw)["worst"] - rec["reference"] > rec["eps"]
    assert measure("sharpness_alpha", ctx, **FAST_ALPHA) == 1 / lo ** 2


# -- early exits: the same answer from fewer passes ---------------------------------


@pytest.mark.parametrize("criterion", ["loss", "error"])
def test_early_exits_leave_both_searches_answers_unchanged(criterion):
    """The exhaustive searches (every draw, start and step evaluated) are the truth."""
    ctx = make_ctx(mlp_config(widths=[8]), tiny_data(), trained_steps=60)
    for search, params, key in ((sharpness.sigma_search, sharpness.SigmaParams, "sigma"),
                                (sharpness.alpha_search, sharpness.AlphaParams, "alpha")):
        p = sharpness.resolve(params(depth=12, n_samples=48, criterion=criterion), 3)
        kw = {"draws": 6} if key == "sigma" else {"restarts": 3, "steps": 6}
        runs = {}
        for early in (False, True):
            ev = context.perturbed_loss(ctx, p)
            runs[early] = search(ev, eps=p.eps, criterion=criterion, depth=12, early_exit=early,
                                 **kw)
        assert runs[True][key] == runs[False][key] and 0 < runs[True][key] < 2
        assert runs[True]["bracket"] == runs[False]["bracket"]
        assert runs[True]["evaluations"] < runs[False]["evaluations"]
        full = {s: dev for s, dev in runs[False]["probes"]}
        for s, dev in runs[True]["probes"]:  # a settled probe records a bound on the full one
            assert (dev <= p.eps) == (full[s] <= p.eps)


def test_an_ascent_at_its_fixed_point_stops_with_the_same_worst_case():
    """In a box small enough that the gradient's sign never changes, every start reaches
    the box corner (within 2 / step_size steps) and stays: the rest is not evaluated."""
    g = torch.Generator().manual_seed(3)
    h, c = 0.5 + torch.rand(30, generator=g), torch.randn(30, generator=g) + 3.0
    full = sharpness.ascent(quadratic_loss(h, c), 0.05, restarts=3, steps=20, early_exit=False)
    fast = sharpness.ascent(quadratic_loss(h, c), 0.05, restarts=3, steps=20)
    corner = 0.3 + 0.5 * (h * (0.05 * (c.abs() + 1e-3)) ** 2).sum().item()
    assert fast["worst"] == full["worst"] == pytest.approx(corner, rel=1e-5)
    assert len(fast["trace"]) <= 10 < len(full["trace"]) == 21


def test_cross_entropy_is_the_only_loss_given_a_floor():
    data = tiny_data()
    ce = sharpness.PerturbedLoss(nn.Linear(5, 3), ["weight"], data.train_x, data.train_y)
    assert ce.loss_floor == 0.0
    other = sharpness.PerturbedLoss(nn.Linear(5, 3), ["weight"], data.train_x, data.train_y,
                                    loss_fn=lambda o, y: o.mean())
    assert other.loss_floor == -math.inf


# -- eps defaults -------------------------------------------------------------------


@pytest.mark.parametrize(("n_classes", "eps"), [(10, 0.05), (2, 0.05), (100, 0.1), (1000, 0.1)])
def test_eps_default_follows_the_number_of_classes(n_classes, eps):
    assert sharpness.resolve(sharpness.SigmaParams(), n_classes).eps == eps
    assert sharpness.resolve(sharpness.SigmaParams(eps=0.2), n_classes).eps == 0.2


def test_search_params_reject_inverted_bounds():
    with pytest.raises(ValueError):
        sharpness.SigmaParams(lower=1.0, upper=0.5)


# -- the PAC measures: shared sigma, exact volume term --------------------------------

LOG_VOLS = {"laplace": {"0.weight": -1.5, "2.weight": -0.25},
            "sampling": {"0.weight": -3.0, "2.weight": -0.125}}
ESTIMATES: list[tuple[str, dict]] = []


def _fake_estimator(estimator_name):
    class Fake(VolumeEstimator):
        name = estimator_name

        class Params(Params):
            scale: float = 1.0

        def estimate(self, model, data, *, loss_fn=None, device=None):
            ESTIMATES.append((estimator_name, self.params.model_dump()))
            layers = {n: {"log_vol": self.params.scale * v, "dim": 1, "vol_per_dim": math.exp(v)}
                      for n, v in LOG_VOLS[estimator_name].items()}
            return {"layers": layers,
                    "log_vol_sum": sum(v["log_vol"] for v in layers.values()),
                    "vol_per_dim_mean": 0.5}

    return Fake


class VolumePlugin:
    @genbench.hookimpl
    def register_volume_estimators(self, register):
        register(_fake_estimator("laplace"))
        register(_fake_estimator("sampling"))


def test_pac_s_measures_add_exactly_the_stored_neg_log_volume_and_share_sigma(monkeypatch):
    monkeypatch.setenv("GENBENCH_DISABLE_PLUGINS", "volume")  # the built-in estimators
    registry = load_registry(extra=[("fake_volume", VolumePlugin())])
    ctx = make_ctx(mlp_config(widths=[6]), tiny_data(), registry=registry, trained_steps=40,
                   settings={"volume": {"laplace": {"scale": 2.0}}})
    calls = []
    real = context.sigma_for
    monkeypatch.setattr(context, "sigma_for", lambda c, p: calls.append(p) or real(c, p))
    ESTIMATES.clear()
    pac = measure("pac_sharpness", ctx, **FAST_SIGMA)
    lap = measure("pac_s_laplace", ctx, **FAST_SIGMA)
    smp = measure("pac_s_sampling", ctx, **FAST_SIGMA)
    assert len(calls) == 1  # one sigma search, shared by the three measures
    assert lap == pac + (2.0 * 1.5 + 2.0 * 0.25)  # the suite's [volume.laplace] scale = 2
    parts = ctx.registry.get("measure", "pac_s_laplace").cls(
        SigmaParams(**FAST_SIGMA)).compute(ctx)["parts"]
    assert parts == {"sharpness_term": pac, "volume_term": 2.0 * 1.5 + 2.0 * 0.25}
    assert smp == pac + (3.0 + 0.125)
    assert ESTIMATES == [("laplace", {"scale": 2.0}), ("sampling", {"scale": 1.0})]
    sigma = ctx.sigma(**FAST_SIGMA)["sigma"]
    frob = measure("frobenius_distance", ctx)
    assert pac == frob / (2 * sigma ** 2) and 0 < sigma < 2
    measure("pac_sharpness", ctx, **{**FAST_SIGMA, "draws": 3})
    assert len(calls) == 2  # other params, another search


def test_every_measure_runs_on_cpu(monkeypatch):
    monkeypatch.setenv("GENBENCH_DISABLE_PLUGINS", "volume")
    registry = load_registry(extra=[("fake_volume", VolumePlugin())])
    ctx = make_ctx(mlp_config(widths=[6, 4], batch_norm=True), tiny_data(), registry=registry,
                   trained_steps=30)
    fast = {"pac_sharpness": FAST_SIGMA, "pac_s_laplace": FAST_SIGMA,
            "pac_s_sampling": FAST_SIGMA, "sharpness_alpha": FAST_ALPHA}
    for name in registry.names("measure"):
        value = measure(name, ctx, **fast.get(name, {}))
        assert math.isfinite(value) and value > 0, name


def test_searches_are_stored_once_and_reused_by_a_later_context(tmp_path, monkeypatch):
    from genbench.store import Store

    data = tiny_data()
    with Store(tmp_path / "store") as store:
        first = make_ctx(mlp_config(widths=[6]), data, trained_steps=40, store=store)
        sigma = first.sigma(**FAST_SIGMA, criterion="error")
        alpha = first.alpha(**FAST_ALPHA)
        assert sigma["criterion"] == "error" and sigma["n_samples"] == 48
        later = make_ctx(mlp_config(widths=[6]), data, trained_steps=40, store=store)
        monkeypatch.setattr(context, "sigma_for", lambda *a: pytest.fail("sigma recomputed"))
        monkeypatch.setattr(context, "alpha_for", lambda *a: pytest.fail("alpha recomputed"))
        assert later.sigma(**FAST_SIGMA, criterion="error") == sigma
        assert later.alpha(**FAST_ALPHA) == alpha
