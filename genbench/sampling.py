"""The sampling weight-volume estimator (science.md 1b): paper Algorithm 1.

Moved out of :mod:`genbench.volume` unchanged; the math of the ``sampling`` plugin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genbench import taps
from genbench.volume import batched_log_vol, layer_key, log_vol


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
