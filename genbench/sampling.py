"""The sampling weight-volume estimator (science.md 1b), the math of the ``sampling`` plugin.

Three ways to draw weights around W^F (docs/sampling.md): ``posterior_draws`` (the
default: independent draws from the Gauss-Newton posterior by perturbation and conjugate
gradients), ``langevin_chain`` (a preconditioned Langevin chain with the same target, which
mixes too slowly on real MLPs) and ``sample_posterior`` (the paper's Algorithm 1 as
written); then a full-layer log-volume from a matrix-normal fit to the draws
(``kronecker_log_vol``) or, for Algorithm 1, the paper's 4x4 subsets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genbench import taps
from genbench.volume import (batched_log_vol, is_cross_entropy, kronecker_factors, layer_key,
                             log_vol, output_hessian_sqrt)


# -- the sampling estimator (paper Algorithm 1) ----------------------------------------
@dataclass
class SampleChain:
    """What Algorithm 1 collected: per measured layer, the kept weights (n_kept, k)."""

    samples: dict[str, torch.Tensor]
    tried: int
    kept: int
    ref_loss: float
    losses: list[float] = field(default_factory=list)
    kept_flags: list[bool] = field(default_factory=list)
    diverged: bool = False


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
              batch_size: int = 4096) -> float:
    """L_S: the mean loss over (x, y) in eval mode, no noise."""
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        total += float(loss_fn(model(xb), y[i:i + batch_size])) * xb.shape[0]
    return total / x.shape[0]


def layer_vector(module: nn.Module, include_bias: bool) -> torch.Tensor:
    """A layer's weight as one float64 vector: rows of the (out, in[+1]) matrix."""
    w = module.weight.detach().reshape(module.weight.shape[0], -1).to(torch.float64, copy=True)
    if include_bias:
        b = (module.bias.detach().to(torch.float64) if module.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64))
        w = torch.cat([w, b[:, None]], 1)
    return w.reshape(-1).cpu()


def sample_posterior(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                     *, n_samples: int, sigma_u: float = 0.1, lr: float = 1e-4, epochs: int = 1,
                     batch_size: int = 64, eps: float = 0.05, include_bias: bool = False,
                     noise: bool = True) -> SampleChain:
    """Paper Algorithm 1. W' = W^F; n times: W' += N(0, sigma_u^2 I) on every
    parameter, then ``epochs`` epochs of plain SGD (lr, no momentum, minibatches of
    ``batch_size``); keep W' if |L_S(W') - L_S(W^F)| <= eps. W' is never reset.

    Modifies ``model`` (pass a copy). Fine-tuning runs in eval mode with the
    regularizers' forward noise active (dropout as in training, BatchNorm frozen);
    L_S is measured without noise. A chain whose loss turns non-finite stops.
    """
    layers = taps.weight_layers(model)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    model.eval()
    noisy = noise and any(t.handlers for t in taps.taps(model))
    ref = mean_loss(model, x, y, loss_fn)
    kept: dict[str, list[torch.Tensor]] = {layer_key(n): [] for n, _ in layers}
    chain = SampleChain({}, 0, 0, ref)
    n = x.shape[0]
    sgd = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
    for _ in range(n_samples):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p), alpha=sigma_u)
        with taps.noise_active(model, noisy), torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(n, device=x.device)
                for i in range(0, n, batch_size):
                    idx = order[i:i + batch_size]
                    sgd.zero_grad(set_to_none=True)
                    loss_fn(model(x[idx]), y[idx]).backward()
                    sgd.step()
        chain.tried += 1
        current = mean_loss(model, x, y, loss_fn)
        chain.losses.append(current)
        if not math.isfinite(current):
            chain.kept_flags.append(False)
            chain.diverged = True
            break
        keep = abs(current - ref) <= eps
        chain.kept_flags.append(keep)
        if keep:
            chain.kept += 1
            for name, module in layers:
                kept[layer_key(name)].append(layer_vector(module, include_bias))
    sgd.zero_grad(set_to_none=True)
    chain.samples = {k: (torch.stack(v) if v else torch.empty(0, 0)) for k, v in kept.items()}
    return chain


def wishart_log_vol_bias(d: int, dof: int) -> float:
    """E[log det R^] - log det R for the sample correlation of d Gaussian coordinates
    with ``dof`` = n - 1 degrees of freedom: sum_{i<d} psi((dof-i)/2) - d psi(dof/2)."""
    from scipy.special import digamma

    return float(sum(digamma((dof - i) / 2.0) for i in range(d)) - d * digamma(dof / 2.0))


def sampled_log_vol(samples: torch.Tensor, *, subset_size: int = 4, n_subsets: int = 256,
                    covariance: str = "subsets", debias: bool = True) -> dict[str, Any]:
    """log_vol of one layer from kept samples (n, k), scaled to k via the per-dimension figure.

    ``covariance="subsets"``: the mean over ``n_subsets`` random coordinate subsets
    of size d = min(subset_size, k) (needs n >= d + 2) of log_vol(sample covariance)/d, minus
    the Gaussian small-sample bias when ``debias``. ``"ledoit_wolf"``: the same
    average with Ledoit-Wolf-shrunk covariances (d may exceed n; biased towards 0).
    With d >= k the whole matrix is used once.
    """
    n, k = samples.shape
    x = samples.to(torch.float64)
    if covariance == "subsets":
        d = min(subset_size, k)
        if n < d + 2:
            raise ValueError(f"only {n} samples kept: covariances of {d} coordinates need at "
                             f"least {d + 2} (raise n_samples or eps, lower sigma_u)")
    elif covariance == "ledoit_wolf":
        d = min(subset_size, k)
        if n < 2:
            raise ValueError(f"only {n} samples kept: Ledoit-Wolf needs at least 2 "
                             "(raise n_samples or eps)")
    else:
        raise ValueError(f"covariance must be 'subsets' or 'ledoit_wolf', not {covariance!r}")
    if d >= k:
        idx = torch.arange(k)[None, :]
    else:
        idx = torch.multinomial(torch.ones(n_subsets, k), d, replacement=False)
    sub = x[:, idx]  # (n, m, d)
    if covariance == "subsets":
        centred = sub - sub.mean(0, keepdim=True)
        cov = torch.einsum("nmi,nmj->mij", centred, centred) / (n - 1)
        lv = batched_log_vol(cov)
        bias = wishart_log_vol_bias(d, n - 1) if debias else 0.0
    else:
        from sklearn.covariance import ledoit_wolf

        lv = torch.tensor([log_vol(torch.as_tensor(ledoit_wolf(sub[:, j].numpy())[0]))
                           for j in range(sub.shape[1])], dtype=torch.float64)
        bias = 0.0
    ok = torch.isfinite(lv)
    if not ok.any():
        raise ValueError("every coordinate subset had a singular covariance")
    per_dim = float((lv[ok] - bias).mean()) / d
    per_dim = min(per_dim, 0.0)
    return {"log_vol": per_dim * k, "per_dim": per_dim, "subset_size": d,
            "subsets": int(ok.sum())}


def sampled_block_det(samples: torch.Tensor, block: int = 4) -> float:
    """Paper-compatible figure for sampling: mean determinant of the correlation of
    consecutive ``block``-coordinate groups of the samples (trailing partial group dropped)."""
    n, k = samples.shape
    b = min(block, k)
    groups = samples[:, : (k // b) * b].to(torch.float64).reshape(n, k // b, b)
    centred = groups - groups.mean(0, keepdim=True)
    cov = torch.einsum("nmi,nmj->mij", centred, centred) / max(n - 1, 1)
    return float(torch.exp(batched_log_vol(cov)).nan_to_num(0.0).mean())


# -- mode="langevin": preconditioned Langevin on the Gauss-Newton posterior or the loss --------
@dataclass
class LayerChain:
    """One measured layer: its samples (n, rows, cols) and how to read them."""

    key: str
    samples: torch.Tensor
    ones_null: bool          # the rows' all-ones direction is a symmetry of the loss (softmax)
    ess: float = 0.0


@dataclass
class LangevinChain:
    """What the Langevin chain collected, with what it cost."""

    layers: dict[str, LayerChain]
    temperature: float
    step: float
    burn_in: int
    thin: int
    ref_loss: float
    losses: list[float]
    gradient_evals: int      # full-batch gradients: one each is one epoch of the data
    diverged: bool = False


class _Layer:
    """A measured weight layer as the chain sees it: its matrix [W (b)] and its
    preconditioner (A (x) G + delta I)^{-1}, applied in the factors' eigenbases."""

    def __init__(self, name: str, module: nn.Module, include_bias: bool, a: torch.Tensor | None,
                 g: torch.Tensor | None, damping: float, ones_null: bool):
        self.key, self.prefix = layer_key(name), f"{name}." if name else ""
        self.module, self.ones_null = module, ones_null
        self.bias = include_bias and module.bias is not None
        w = self.matrix().to(torch.float64)
        rows, cols = w.shape
        if a is None:  # no preconditioner: identity factors
            a, g = torch.eye(cols, dtype=torch.float64), torch.eye(rows, dtype=torch.float64)
        la, self.ua = torch.linalg.eigh(a.to(torch.float64))
        lg, self.ug = torch.linalg.eigh(g.to(torch.float64))
        # The prior precision: damping times the layer's mean curvature tr(A (x) G) / k.
        self.delta = damping * float(torch.diagonal(a).mean() * torch.diagonal(g).mean())
        # M's damping is the prior's: exact where only the prior holds, and bounded where
        # the factors underestimate the curvature (stability needs step * mu < 2).
        self.scale = 1.0 / (lg.clamp_min(0)[:, None] * la.clamp_min(0)[None, :] + self.delta)
        self.anchor = w.clone()
        self.tilt = torch.zeros_like(w)  # grad L_S(W^F), removed so that W^F is stationary

    def params(self) -> list[torch.Tensor]:
        return [self.module.weight] + ([self.module.bias] if self.bias else [])

    def matrix(self) -> torch.Tensor:
        w = self.module.weight.detach().reshape(self.module.weight.shape[0], -1)
        return torch.cat([w, self.module.bias.detach()[:, None]], 1) if self.bias else w

    def precondition(self, x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
        """M^power x for a (rows, cols) matrix x, or a batch (n, rows, cols) of them."""
        inner = self.ug.T @ x @ self.ua
        return self.ug @ (inner * self.scale ** power) @ self.ua.T

    def move(self, delta: torch.Tensor) -> None:
        with torch.no_grad():
            cols = self.module.weight[0].numel()
            w = self.module.weight
            w.add_(delta[:, :cols].reshape(w.shape).to(w.dtype))
            if self.bias:
                self.module.bias.add_(delta[:, cols].to(w.dtype))


def _full_batch_grad(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor, loss_fn: Callable, batch_size: int
                     ) -> tuple[float, list[torch.Tensor]]:
    """L_S and its exact gradient (summed over chunks of ``batch_size``)."""
    n = x.shape[0]
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            loss = loss_fn(model(xb), yb) * (xb.shape[0] / n)
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc.add_(g)
            total += float(loss.detach())
    return total, grads


def _ggn_product(model: nn.Module, layers: list[_Layer], x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable, chunk: int = 16, graph: _OutputGraph | None = None
                 ) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """vs -> G vs for a batch of n directions (each layer's (n, rows, cols)), G the exact
    Gauss-Newton matrix of L_S at W^F over the measured layers jointly (cross-layer
    blocks included): J^T (d2 L / dz2) J v, with J v by the double-backward trick and J^T
    by a backward pass, both on one retained graph (``graph``, built here when not given),
    ``chunk`` directions per pass."""
    graph = graph or _OutputGraph(model, layers, x, y, loss_fn)

    def product(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        parts = []
        for i in range(0, vs[0].shape[0], chunk):
            v = graph.to_params([m[i:i + chunk] for m in vs])
            jv = torch.autograd.grad(graph.jt_u, graph.u, v, retain_graph=True,
                                     is_grads_batched=True)[0]
            hjv = torch.einsum("sck,bsk->bsc", graph.root,
                               torch.einsum("sck,bsc->bsk", graph.root, jv)) / len(x)
            parts.append(graph.transpose(hjv))
        return [torch.cat(p) for p in zip(*parts)]

    return product


class _OutputGraph:
    """The model's outputs z on the training set with a retained graph, and the root S
    of d2 L / dz2 = sum_s S_s S_s^T / n (softmax: closed form; other losses: double
    backward): what J, J^T and the Gauss-Newton product are computed from."""

    def __init__(self, model, layers, x, y, loss_fn):
        self.layers = layers
        self.params = [p for lay in layers for p in lay.params()]
        for p in self.params:
            p.requires_grad_(True)
        with torch.enable_grad():
            self.z = model(x)
            self.u = torch.zeros_like(self.z, requires_grad=True)
            self.jt_u = torch.autograd.grad(self.z, self.params, self.u, create_graph=True)
        zd = self.z.detach()
        self.root = output_hessian_sqrt(zd, y, loss_fn, is_cross_entropy(loss_fn, zd, y)
                                        ).to(zd.dtype)

    def to_params(self, ms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer (n, rows, cols[+1]) float64 -> per parameter (n, *shape)."""
        v = []
        for lay, m in zip(self.layers, ms):
            w = lay.module.weight
            cols = w[0].numel()
            v.append(m[:, :, :cols].reshape(m.shape[0], *w.shape).to(w.dtype))
            if lay.bias:
                v.append(m[:, :, cols].to(w.dtype))
        return v

    def transpose(self, out: torch.Tensor) -> list[torch.Tensor]:
        """J^T out for a batch (n, samples, classes): per layer (n, rows, cols[+1]) float64."""
        g = iter(torch.autograd.grad(self.z, self.params, out, retain_graph=True,
                                     is_grads_batched=True))
        res = []
        for lay in self.layers:
            m = next(g)
            m = m.reshape(m.shape[0], m.shape[1], -1).to(torch.float64)
            res.append(torch.cat([m, next(g).to(torch.float64)[:, :, None]], 2)
                       if lay.bias else m)
        return res


POWER_ITERATIONS = 15  # Gauss-Newton products spent on mu_max


def _single(product, vs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batched product on one direction."""
    return [g[0] for g in product([v[None] for v in vs])]


def _stiffest(layers: list[_Layer], product, x, y, loss_fn, model, params, target: str,
              iterations: int = POWER_ITERATIONS) -> float:
    """mu_max of M (G + delta) by power iteration (G: the Gauss-Newton product; for the
    loss target the same G at W^F, its curvature in the quadratic regime)."""
    if product is None:
        product = _ggn_product(model, layers, x, y, loss_fn)
    v = [torch.randn_like(layer.anchor) for layer in layers]
    mu = 1.0
    for _ in range(iterations):
        a = [layer.precondition(u, 0.5) for layer, u in zip(layers, v)]
        k = [g + layer.delta * u for layer, g, u in zip(layers, _single(product, a), a)]
        w = [layer.precondition(u, 0.5) for layer, u in zip(layers, k)]
        mu = math.sqrt(sum(float((u ** 2).sum()) for u in w))
        v = [u / mu for u in w]
    return mu


def langevin_chain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, *,
                   n_samples: int = 100, burn_in: int = 50, thin: int = 2, step: float = 0.3,
                   target: str = "gauss_newton", loss_rise: float = 0.01, damping: float = 0.1,
                   precondition: bool = True,
                   include_bias: bool = False, batch_size: int = 8192) -> LangevinChain:
    """Preconditioned (unadjusted) Langevin dynamics around W^F over the measured weight
    matrices jointly (biases and other parameters held at W^F unless ``include_bias``).

    Target: p(W) ~ exp(-[E(W) + sum_l delta_l / 2 ||W_l - W^F_l||^2] / T), with
    ``target="gauss_newton"``: E = 1/2 dW^T G dW, G the exact Gauss-Newton matrix of L_S
    at W^F (a Gaussian, N(W^F, T (G + delta)^{-1}), for any model); ``"loss"``:
    E = L_S(W) - grad L_S(W^F) . dW, the training loss tilted so that W^F is stationary
    (N(W^F, T (H + delta)^{-1}) where it is quadratic). Gradients are full-batch and
    noise-free (eval mode, no dropout): the only noise is the injected one.
    Update: dW += -h M grad E + sqrt(2 h T) M^{1/2} xi, h = step / mu_max, with M^{-1} = E[A] (x) E[G] +
    delta I per layer (the model's own Kronecker factors, fixed: any fixed M leaves the
    target unchanged and sets only how fast the chain mixes). Its stationary covariance is
    T (K - h/2 K M K)^{-1} for K = G + delta: a factor 1/(1 - h mu/2) per eigenvalue mu of
    M K (at most 1/(1 - step/2)), uniform (so without effect on log_vol) where M K ~ I.
    T = 2 loss_rise / k: at equilibrium E sits ``loss_rise`` above its minimum.
    Modifies ``model`` (pass a copy).
    """
    if target not in ("gauss_newton", "loss"):
        raise ValueError(f"target must be 'gauss_newton' or 'loss', not {target!r}")
    model.eval()
    weight_layers = taps.weight_layers(model)
    with torch.no_grad():
        ce = is_cross_entropy(loss_fn, model(x[:8]), y[:8])
    factors = (kronecker_factors(model, x, y, loss_fn, fisher="mc" if ce else "exact",
                                 include_bias=include_bias, noise=False, batch_size=batch_size)
               if precondition else {})
    layers = []
    for i, (name, module) in enumerate(weight_layers):
        f = factors.get(name)
        layers.append(_Layer(name, module, include_bias, f.A if f else None,
                             f.G if f else None, damping,
                             ones_null=ce and i == len(weight_layers) - 1))
    params = [p for layer in layers for p in layer.params()]
    for p in model.parameters():
        p.requires_grad_(False)
    k = sum(layer.anchor.numel() for layer in layers)
    temperature = 2.0 * loss_rise / k
    kept: dict[str, list[torch.Tensor]] = {layer.key: [] for layer in layers}
    chain = LangevinChain({}, temperature, step, burn_in, thin, 0.0, [], 0)
    # Start from the preconditioner's Gaussian N(W^F, T M): exact wherever M is (e.g. in
    # the directions only the prior holds), so burn-in only fixes where M errs.
    disp = [math.sqrt(temperature) * layer.precondition(torch.randn_like(layer.anchor), 0.5)
            for layer in layers]
    product = _ggn_product(model, layers, x, y, loss_fn) if target == "gauss_newton" else None
    if product is not None:
        chain.ref_loss = mean_loss(model, x, y, loss_fn, batch_size)
    else:
        for layer, d in zip(layers, disp):
            layer.move(d)
        for p in params:
            p.requires_grad_(True)
    chain.step = step / _stiffest(layers, product, x, y, loss_fn, model, params, target)
    noise_sd = math.sqrt(2.0 * chain.step * temperature)
    total = burn_in + n_samples * thin
    for t in range(total + 1):
        if product is not None:
            forces = _single(product, disp)
            rise = 0.5 * sum(float((d * f).sum()) for d, f in zip(disp, forces))
            energy = chain.ref_loss + rise
        else:
            energy, grads = _full_batch_grad(model, params, x, y, loss_fn, batch_size)
            forces, it = [], iter(grads)
            for layer in layers:
                g = next(it).reshape(layer.anchor.shape[0], -1).to(torch.float64)
                forces.append(torch.cat([g, next(it).to(torch.float64)[:, None]], 1)
                              if layer.bias else g)
            if t == 0:
                chain.ref_loss, tilt = energy, [f.clone() for f in forces]
            forces = [f - f0 for f, f0 in zip(forces, tilt)]
        chain.gradient_evals += 1
        chain.losses.append(energy)
        if not math.isfinite(energy) or energy > chain.ref_loss + 100 * loss_rise + 1.0:
            chain.diverged = True
            break
        if t > burn_in and (t - burn_in) % thin == 0:
            for layer, d in zip(layers, disp):
                kept[layer.key].append(d.cpu().clone())
        if t == total:
            break
        for i, layer in enumerate(layers):
            drift = layer.precondition(forces[i] + layer.delta * disp[i])
            kick = layer.precondition(torch.randn_like(disp[i]), 0.5)
            move = -chain.step * drift + noise_sd * kick
            disp[i] = disp[i] + move
            if product is None:
                layer.move(move)
    if product is None:
        for layer, d in zip(layers, disp):
            layer.move(-d)  # back to W^F
    for p in params:
        p.requires_grad_(False)
    chain.layers = {layer.key: LayerChain(layer.key, torch.stack(kept[layer.key])
                                          if kept[layer.key] else torch.empty(0),
                                          layer.ones_null) for layer in layers}
    for layer, lc in zip(layers, chain.layers.values()):
        if lc.samples.shape[0] >= 4:
            white = torch.stack([layer.precondition(s, -0.5) for s in lc.samples])
            lc.ess = layer_ess(white)
    return chain


# -- the default: independent draws by perturbation and conjugate gradients ------------------
@dataclass
class PosteriorDraws:
    """Independent draws from N(W^F, (G + delta)^-1), and what the solves cost."""

    layers: dict[str, LayerChain]
    iterations: int          # CG iterations (each one batched Gauss-Newton product)
    residual: float          # the worst draw's relative residual, preconditioned norm
    passes: int              # passes over the training set on one direction, in all


def posterior_draws(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, *,
                    n_samples: int = 32, damping: float = 0.1, tol: float = 1e-2,
                    max_iter: int = 1000, include_bias: bool = False, chunk: int = 32,
                    batch_size: int = 8192) -> PosteriorDraws:
    """Exact, independent draws from the Gauss-Newton posterior N(W^F, K^-1), K = G + delta,
    over the measured weight matrices jointly (perturbation-optimization: Papandreou &
    Yuille 2010, Orieux et al. 2012). With G = B^T B, B = S J / sqrt(n): r = B^T e1 +
    sqrt(delta) e2, e ~ N(0, I), has Cov(r) = K, so w = K^-1 r has Cov(w) = K^-1.
    Each K^-1 r is solved by conjugate gradients, preconditioned by the model's own
    (E[A] (x) E[G] + delta I)^-1 per layer, all draws in lockstep, until every draw's
    relative residual (preconditioned norm) is below ``tol``. A draw is exact up to that
    residual: no chain, no burn-in, no autocorrelation (ESS = n). Modifies ``model``'s
    requires_grad flags only.
    """
    model.eval()
    weight_layers = taps.weight_layers(model)
    with torch.no_grad():
        ce = is_cross_entropy(loss_fn, model(x[:8]), y[:8])
    # Exact factors (one backward pass per class) where the classes are few: a better
    # preconditioner than a Monte-Carlo Fisher, and a prior delta free of sampling noise.
    fisher = "mc" if ce and y.max() >= 100 else "exact"
    factors = kronecker_factors(model, x, y, loss_fn, fisher=fisher, include_bias=include_bias,
                                noise=False, batch_size=batch_size)
    layers = [_Layer(name, module, include_bias, factors[name].A, factors[name].G, damping,
                     ones_null=ce and i == len(weight_layers) - 1)
              for i, (name, module) in enumerate(weight_layers)]
    for p in model.parameters():
        p.requires_grad_(False)
    graph = _OutputGraph(model, layers, x, y, loss_fn)
    product = _ggn_product(model, layers, x, y, loss_fn, chunk=chunk, graph=graph)
    noise = torch.randn(n_samples, *graph.z.shape[:1], graph.root.shape[2],
                        dtype=graph.z.dtype, device=graph.z.device)
    r = [bt + math.sqrt(lay.delta) * torch.randn_like(bt) for lay, bt in zip(
        layers, graph.transpose(torch.einsum("sck,bsk->bsc", graph.root, noise)
                                / math.sqrt(len(x))))]
    w, iterations, residual = _solve(product, layers, r, tol, max_iter)
    for p in graph.params:
        p.requires_grad_(False)
    # Passes: the factors (one per class when exact, else one), the perturbations (one
    # backward per draw) and the solves (one Gauss-Newton product per draw per iteration).
    factor_passes = int(y.max()) + 2 if fisher == "exact" and ce else 2
    draws = PosteriorDraws({lay.key: LayerChain(lay.key, d.cpu(), lay.ones_null, float(n_samples))
                            for lay, d in zip(layers, w)}, iterations, residual,
                           factor_passes + n_samples * (iterations + 1))
    if residual > tol:
        raise ValueError(f"conjugate gradients reached a relative residual of {residual:.2g} "
                         f"after {max_iter} iterations, not {tol:g}: raise max_iter or damping")
    return draws


def _solve(product, layers: list[_Layer], b: list[torch.Tensor], tol: float, max_iter: int
           ) -> tuple[list[torch.Tensor], int, float]:
    """K w = b for a batch of right-hand sides by preconditioned conjugate gradients."""
    def dot(u, v):
        return sum((p * q).sum((1, 2)) for p, q in zip(u, v))

    def shape(c):
        return c[:, None, None]

    w = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    z = [lay.precondition(t) for lay, t in zip(layers, r)]
    d = [t.clone() for t in z]
    rz = dot(r, z)
    norm = rz.sqrt()
    residual, it = 1.0, 0
    for it in range(1, max_iter + 1):
        kd = [g + lay.delta * t for g, lay, t in zip(product(d), layers, d)]
        alpha = rz / dot(d, kd)
        w = [a + shape(alpha) * t for a, t in zip(w, d)]
        r = [a - shape(alpha) * t for a, t in zip(r, kd)]
        z = [lay.precondition(t) for lay, t in zip(layers, r)]
        rz_new = dot(r, z)
        residual = float((rz_new.clamp_min(0).sqrt() / norm).max())
        if residual < tol:
            break
        d = [a + shape(rz_new / rz) * t for a, t in zip(z, d)]
        rz = rz_new
    return w, it, residual


# -- effective sample size ---------------------------------------------------------------------
def effective_sample_size(series: torch.Tensor) -> torch.Tensor:
    """ESS of each column of ``series`` (n, m): n / (1 + 2 sum rho_t), Geyer's initial
    monotone positive sequence of autocorrelation pairs (Geyer 1992)."""
    x = series.to(torch.float64)
    n = x.shape[0]
    x = x - x.mean(0)
    f = torch.fft.rfft(x, n=2 * n, dim=0)
    acov = torch.fft.irfft(f * f.conj(), dim=0)[:n] / n
    rho = acov / acov[0].clamp_min(1e-300)
    out = torch.empty(x.shape[1], dtype=torch.float64)
    for j in range(x.shape[1]):
        pairs = rho[: 2 * (n // 2), j].reshape(-1, 2).sum(1)  # Gamma_k = rho_2k + rho_2k+1
        positive = torch.nonzero(pairs <= 0)
        stop = int(positive[0]) if len(positive) else len(pairs)
        gam = torch.cummin(pairs[:stop], 0).values if stop else pairs[:0]
        tau = -1.0 + 2.0 * float(gam.sum()) if stop else 1.0
        out[j] = n / max(tau, 1e-12)
    return out.clamp(max=float(n))


def layer_ess(samples: torch.Tensor, projections: int = 4) -> float:
    """A layer's ESS: the smallest over its squared norm and a few random linear
    projections of its (whitened) samples."""
    flat = samples.reshape(samples.shape[0], -1)
    dirs = torch.randn(flat.shape[1], projections, dtype=flat.dtype)
    stats = torch.cat([(flat ** 2).sum(1, keepdim=True), flat @ dirs], 1)
    return float(effective_sample_size(stats).min())


# -- the full-layer log-volume from a matrix-normal fit ---------------------------------------
def matrix_normal_fit(samples: torch.Tensor, iterations: int = 100, tol: float = 1e-8
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip-flop MLE (Dutilleul 1999) of U (rows) and V (cols) with Cov(vec W) = U (x) V,
    from n centred samples (n, p, q); exists once n >= p/q + 1 and q/p + 1."""
    n, p, q = samples.shape
    x = samples.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    v = torch.eye(q, dtype=torch.float64)
    prev = math.inf
    for _ in range(iterations):
        lv = torch.linalg.cholesky(v)
        y = torch.linalg.solve_triangular(lv, x.transpose(1, 2), upper=False)  # (n, q, p)
        u = torch.einsum("nqi,nqj->ij", y, y) / ((n - 1) * q)
        lu = torch.linalg.cholesky(u)
        z = torch.linalg.solve_triangular(lu, x, upper=False)  # (n, p, q)
        v = torch.einsum("npi,npj->ij", z, z) / ((n - 1) * p)
        # U (x) V is defined up to (cU) (x) (V/c): fix the scale so convergence is checkable.
        s = float(torch.diagonal(v).mean())
        u, v = u * s, v / s
        cur = float(torch.logdet(u)) * q + float(torch.logdet(v)) * p
        if abs(cur - prev) <= tol * max(1.0, abs(cur)):
            break
        prev = cur
    return 0.5 * (u + u.T), 0.5 * (v + v.T)


def correlation_log_vol_bias(d: int, dof: float) -> float:
    """E[log det R^] - log det R of a d x d sample correlation with ``dof`` degrees of
    freedom (Gaussian; exact for integer dof, used as is for effective ones)."""
    if d < 2:
        return 0.0
    if dof <= d + 1:
        raise ValueError(f"{dof:.0f} effective degrees of freedom cannot debias a {d} x {d} "
                         "correlation (raise n_samples or thin)")
    return wishart_log_vol_bias(d, dof)


def profiled_log_vol(u: torch.Tensor) -> float:
    """log_vol over the complement of the all-ones direction of a (p-1) x (p-1) covariance
    given in an orthonormal basis Q of 1^perp: the variance t along 1/sqrt(p) that
    maximizes log_vol(Q u Q^T + t 1 1^T / p), the same gauge as Laplace's profile."""
    p = u.shape[0] + 1
    q = ones_complement(p)
    reg = q @ u @ q.T
    a = torch.diagonal(reg).clamp_min(1e-300)
    lo, hi = math.log(float(a.min())) - 40.0, math.log(float(a.max())) + 40.0
    for _ in range(200):  # sum_i b / (a_i + b) = 1 at the optimum, b = t / p
        mid = 0.5 * (lo + hi)
        if float((math.exp(mid) / (a + math.exp(mid))).sum()) < 1.0:
            lo = mid
        else:
            hi = mid
    b = math.exp(0.5 * (lo + hi))
    return min(float(torch.logdet(u)) + math.log(p * b) - float(torch.log(a + b).sum()), 0.0)


def ones_complement(p: int) -> torch.Tensor:
    """An orthonormal basis (p, p-1) of the complement of the all-ones vector."""
    u = torch.full((p, 1), 1.0 / math.sqrt(p), dtype=torch.float64)
    return torch.linalg.qr(torch.cat([u, torch.eye(p, dtype=torch.float64)], 1))[0][:, 1:p]


def kronecker_log_vol(samples: torch.Tensor, *, ones_null: bool = False,
                      debias: bool = True) -> dict[str, Any]:
    """A layer's log-volume from its samples (n, rows, cols) through a matrix-normal fit:
    log_vol(U (x) V) = cols log_vol(U) + rows log_vol(V).

    ``ones_null``: the rows' all-ones direction is a symmetry of the loss (softmax output
    layer); the fit runs on the complement (rows - 1 directions) and U's term is profiled
    there. ``debias`` removes the Gaussian small-sample bias of each factor's sample
    correlation, with (n - 1) times the other factor's size as degrees of freedom.
    """
    n, rows, cols = samples.shape
    x = samples.to(torch.float64)
    if ones_null:
        x = torch.einsum("pr,npq->nrq", ones_complement(rows), x)
    p = x.shape[1]
    if n < max(p / cols, cols / p) + 2:
        raise ValueError(f"{n} samples cannot fit a {p} x {cols} matrix-normal covariance "
                         "(raise n_samples)")
    u, v = matrix_normal_fit(x)
    lv_u = profiled_log_vol(u) if ones_null else log_vol(u)
    lv_v = log_vol(v)
    # Degrees of freedom as if the n samples were independent: with autocorrelated ones
    # (ESS < n) the correction is too small and the result is biased low (docs/sampling.md).
    bias_u = correlation_log_vol_bias(p, (n - 1) * cols) if debias else 0.0
    bias_v = correlation_log_vol_bias(cols, (n - 1) * p) if debias else 0.0
    lv_u, lv_v = min(lv_u - bias_u, 0.0), min(lv_v - bias_v, 0.0)
    return {"log_vol": cols * lv_u + p * lv_v, "log_vol_rows": lv_u, "log_vol_cols": lv_v,
            "bias_rows": bias_u, "bias_cols": bias_v, "dim": p * cols}
