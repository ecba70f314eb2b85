"""Weight volume: the determinant of a layer's posterior weight *correlation* matrix.

The math behind the ``laplace`` and ``sampling`` volume-estimator plugins
(science.md section 1), kept here so it can be tested against exact curvature
and reused (e.g. by regularizers that need the Kronecker factors).

Conventions (see docs/volume.md for the reasoning):

- ``log_vol(M) = logdet(M) - sum_i log M_ii`` (<= 0, float64, Cholesky/eigh).
- A layer's weight is the matrix (out, in) (conv kernels (C_out, C_in*k...));
  its Laplace covariance is ``E[A]^{-1} (x) E[G]^{-1}`` with E[A] the uncentred
  second moment of the layer's inputs (conv: unfolded patches) and E[G] the
  expected Gauss-Newton matrix of the loss w.r.t. the layer's outputs.
- Conv layers use the "expand" convention of Kronecker-factored convolution
  (Grosse & Martens 2016): every output location is one more input/gradient
  pair; A = E_s[sum_t a_t a_t^T], G = E_s[(1/T) sum_t g_t g_t^T].
- Damping is ``damping * mean(live diagonal)`` per factor. Coordinates whose
  diagonal is exactly zero (dead units, constant-zero inputs) are structural
  zeros: their weights do not touch the loss, so the damped posterior makes them
  independent of everything; they are dropped from the factor and from the
  other factor's multiplicity (they contribute exactly nothing).
- The last layer under softmax cross-entropy has the all-ones vector in the null
  space of E[G] (adding a constant to every logit changes nothing), so the layer's
  precision E[A] (x) E[G] annihilates every direction 1_C (x) v. The posterior lives
  on their (C-1)*N-dimensional complement; its log-volume there is the best gauge
  (the largest correlation log-det, in weight coordinates, of any covariance along
  the null directions added to it: docs/volume.md, "The softmax null directions"),
  which is (C-1) * log_vol(E[A]^-1) + N * (E[G]'s profiled log-volume). Finite,
  basis-free, and it converges as damping -> 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import taps

ZERO_DIAG = 1e-13  # a factor coordinate with diagonal <= this * max diagonal is a structural zero


# -- log-volume of a matrix ----------------------------------------------------------
def log_vol(matrix: torch.Tensor) -> float:
    """``logdet(M) - sum log M_ii`` of a symmetric positive-definite matrix (float64).

    The log-determinant of M's correlation matrix: <= 0 (Hadamard), 0 iff M is
    diagonal, invariant to scaling and diagonal rescaling of M.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    diag = torch.diagonal(m)
    if (diag <= 0).any():
        raise ValueError("log_vol needs a positive diagonal")
    # Work on the correlation matrix: well scaled whatever the units of M.
    inv_sd = diag.rsqrt()
    corr = m * inv_sd[:, None] * inv_sd[None, :]
    chol, info = torch.linalg.cholesky_ex(corr)
    if int(info) == 0:
        return min(2.0 * float(torch.log(torch.diagonal(chol)).sum()), 0.0)
    evals = torch.linalg.eigvalsh(corr)
    if (evals <= 0).any():
        raise ValueError("log_vol needs a positive-definite matrix")
    return min(float(torch.log(evals).sum()), 0.0)


def batched_log_vol(mats: torch.Tensor) -> torch.Tensor:
    """:func:`log_vol` of a stack (..., d, d) of SPD matrices; NaN where one is singular."""
    diag = torch.diagonal(mats, dim1=-2, dim2=-1)
    inv_sd = diag.clamp_min(1e-300).rsqrt()
    corr = mats * inv_sd[..., :, None] * inv_sd[..., None, :]
    chol, info = torch.linalg.cholesky_ex(corr)
    out = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    bad = (info != 0) | (diag <= 0).any(-1)
    return torch.where(bad, torch.full_like(out, math.nan), out.clamp_max(0.0))


@dataclass
class InverseVolume:
    """The log-volume of a damped factor's inverse, over its live coordinates."""

    log_vol: float
    live: int                     # coordinates kept (structural zeros dropped)
    size: int                     # all coordinates
    damping: float                # absolute damping added (damping * live mean diagonal)
    null_profiled: bool = False   # the all-ones null direction was gauged out (one dim fewer)
    covariance: torch.Tensor | None = None  # the damped inverse over live coordinates
    live_mask: torch.Tensor | None = None


def live_coordinates(factor: torch.Tensor) -> torch.Tensor:
    """Mask of the coordinates that are not structural zeros (diagonal > ZERO_DIAG * max)."""
    diag = torch.diagonal(factor)
    top = float(diag.max()) if diag.numel() else 0.0
    if top <= 0:
        return torch.zeros_like(diag, dtype=torch.bool)
    return diag > ZERO_DIAG * top


def inverse_factor_volume(factor: torch.Tensor, damping: float, ones_null: bool = False,
                          null_space: str = "profile", keep_covariance: bool = False
                          ) -> InverseVolume:
    """log_vol((F + damping * s * I)^{-1}) over F's live coordinates, s = their mean diagonal.

    ``ones_null``: F has the all-ones vector in its null space (softmax cross-entropy
    at the last layer). With ``null_space="profile"`` that direction's variance is
    set to the value maximizing the log-volume (instead of 1/damping, which would
    make the result an artifact of the damping): the factor's part of the best gauge
    (see :func:`laplace_volume`); ``"damp"`` keeps the plain damped inverse, for comparison.
    """
    if damping <= 0:
        raise ValueError("damping must be > 0 (a rank-deficient factor has no inverse)")
    f = torch.as_tensor(factor, dtype=torch.float64).cpu()
    f = 0.5 * (f + f.T)
    size = f.shape[0]
    mask = live_coordinates(f)
    live = int(mask.sum())
    if live == 0:
        return InverseVolume(0.0, 0, size, 0.0, live_mask=mask,
                             covariance=torch.zeros(0, 0, dtype=torch.float64))
    f = f[mask][:, mask]
    scale = float(torch.diagonal(f).mean())
    delta = damping * scale
    eye = torch.eye(live, dtype=torch.float64)
    profile = ones_null and null_space == "profile" and live >= 2
    if not profile:
        evals, evecs = torch.linalg.eigh(f + delta * eye)
        evals = evals.clamp_min(delta)  # F is PSD: round-off below delta is noise
        diag_inv = (evecs ** 2 / evals).sum(1)
        lv = float(-torch.log(evals).sum() - torch.log(diag_inv).sum())
        cov = (evecs / evals) @ evecs.T if keep_covariance else None
        return InverseVolume(min(lv, 0.0), live, size, delta, False, cov, mask)
    # The regular part of the inverse lives in the complement of u: invert F there,
    # in an orthonormal basis Q of that complement (no 1/delta term to cancel).
    u = torch.full((live,), 1.0 / math.sqrt(live), dtype=torch.float64)
    q = torch.linalg.qr(torch.cat([u[:, None], eye], 1))[0][:, 1:live]
    inner = q.T @ f @ q
    evals, evecs = torch.linalg.eigh(0.5 * (inner + inner.T) + delta * torch.eye(live - 1,
                                                                                dtype=torch.float64))
    evals = evals.clamp_min(delta)
    basis = q @ evecs
    reg = (basis / evals) @ basis.T  # -> the pseudo-inverse of F as damping -> 0
    log_pdet = float(-torch.log(evals).sum())
    a = torch.diagonal(reg).clamp_min(1e-300)
    b = _profile_root(a)  # the null direction's variance is t = live * b
    lv = log_pdet + math.log(live * b) - float(torch.log(a + b).sum())
    cov = reg + live * b * torch.outer(u, u) if keep_covariance else None
    return InverseVolume(min(lv, 0.0), live, size, delta, True, cov, mask)


def _profile_root(a: torch.Tensor) -> float:
    """The b > 0 with sum_i b / (a_i + b) = 1: where log b - sum log(a_i + b) peaks."""
    lo, hi = math.log(float(a.min())) - 40.0, math.log(float(a.max())) + 40.0
    for _ in range(200):  # bisection in log b: the left side is increasing in b
        mid = 0.5 * (lo + hi)
        b = math.exp(mid)
        if float((b / (a + b)).sum()) < 1.0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-14:
            break
    return math.exp(0.5 * (lo + hi))


def block_mean_det(cov: torch.Tensor, block: int) -> float:
    """Block figure: the mean determinant of consecutive ``block`` x ``block`` diagonal
    blocks of ``cov``'s correlation matrix (a trailing partial block is dropped unless it
    is the only one). A diagnostic, not the authors' procedure (docs/volume.md)."""
    n = cov.shape[0]
    if n == 0:
        return 1.0
    b = min(block, n)
    count = n // b
    blocks = torch.stack([cov[i * b:(i + 1) * b, i * b:(i + 1) * b] for i in range(count)])
    return float(torch.exp(batched_log_vol(blocks)).nan_to_num(0.0).mean())


# -- Kronecker factors -------------------------------------------------------------------
@dataclass
class LayerFactors:
    """E[A] (inputs, dimension in[+1]) and E[G] (outputs) of one weight layer."""

    name: str
    kind: str
    A: torch.Tensor
    G: torch.Tensor
    ones_null: bool = False  # E[G] has the all-ones vector in its null space (softmax last layer)
    samples: int = 0


def _unfold_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The layer's input as rows of a matrix (one row per output location) and the
    number of locations per sample."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        return rows, rows.shape[0] // x.shape[0]
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise NotImplementedError(f"grouped convolution ({module}) is not supported")
        if module.padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={module.padding_mode!r} is not supported")
        if isinstance(module.padding, str):
            raise NotImplementedError("string padding ('same'/'valid') is not supported")
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(2)
            k, d, p, s = (1, *module.kernel_size), (1, *module.dilation), (0, *module.padding), \
                (1, *module.stride)
        else:
            k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
        patches = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (B, C_in*k, T)
        locations = patches.shape[-1]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), locations
    raise TypeError(f"unsupported weight layer {type(module).__name__}")


def _output_rows(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Gradients w.r.t. a layer's output as rows (one per output location)."""
    if isinstance(module, nn.Linear):
        return g.reshape(-1, g.shape[-1])
    return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2).reshape(-1, g.shape[1])


def is_cross_entropy(loss_fn: Callable | None, logits: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``loss_fn`` is (mean) softmax cross-entropy, checked on a few samples."""
    if loss_fn is None or loss_fn is F.cross_entropy:
        return True
    if y.dtype not in (torch.int64, torch.int32) or logits.dim() != 2:
        return False
    z, t = logits[:4].detach(), y[:4]
    try:
        mine = torch.stack([torch.as_tensor(loss_fn(z[i:i + 1], t[i:i + 1])).reshape(())
                            for i in range(len(t))])
    except Exception:  # noqa: BLE001 - a loss we cannot call this way is not CE
        return False
    ref = F.cross_entropy(z, t, reduction="none")
    return bool(torch.allclose(mine.to(ref.dtype), ref, rtol=1e-5, atol=1e-6))


def output_hessian_sqrt(logits: torch.Tensor, y: torch.Tensor, loss_fn: Callable | None,
                        cross_entropy: bool) -> torch.Tensor:
    """S (B, C, K) with S_s S_s^T = d2 loss_s / d z_s^2 per sample, in float64.

    Cross-entropy: the columns sqrt(p_c) (e_c - p) of diag(p) - p p^T (K = C).
    Any other mean of per-sample losses: the Hessian by double backward, square-rooted
    by eigh.
    """
    z = logits.detach().to(torch.float64)
    if cross_entropy:
        p = torch.softmax(z, dim=1)
        eye = torch.eye(z.shape[1], dtype=torch.float64, device=z.device)
        return (eye[None, :, :] - p[:, :, None]) * p.sqrt()[:, None, :]
    target = y.to(torch.float64) if y.is_floating_point() else y
    with torch.enable_grad():
        zz = z.clone().requires_grad_(True)
        # A mean of per-sample losses: B * grad gives each sample's gradient, and the
        # gradient of its c-th column gives row c of every sample's Hessian at once.
        grad = torch.autograd.grad(loss_fn(zz, target) * z.shape[0], zz, create_graph=True)[0]
        rows = [torch.autograd.grad(grad[:, c].sum(), zz, retain_graph=True, allow_unused=True)[0]
                for c in range(z.shape[1])]
    h = torch.stack([r if r is not None else torch.zeros_like(z) for r in rows], 1)
    h = 0.5 * (h + h.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(h)
    return evecs * evals.clamp_min(0.0).sqrt()[:, None, :]


def sampled_label_sqrt(logits: torch.Tensor, draws: int) -> torch.Tensor:
    """Monte-Carlo square root: columns (p - e_y)/sqrt(draws), y ~ softmax(logits) (KFAC)."""
    z = logits.detach().to(torch.float64)
    p = torch.softmax(z, dim=1)
    ys = torch.multinomial(p, draws, replacement=True)  # (B, draws)
    onehot = F.one_hot(ys, z.shape[1]).to(torch.float64).transpose(1, 2)  # (B, C, draws)
    cols = (p[:, :, None] - onehot) / math.sqrt(draws)
    if draws <= z.shape[1]:
        return cols
    # More draws than classes: the same sum of outer products, square-rooted into C
    # columns, so the cost stays at most one backward pass per class.
    m = cols @ cols.transpose(1, 2)
    evals, evecs = torch.linalg.eigh(m)
    return evecs * evals.clamp_min(0.0).sqrt()[:, None, :]


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """rows^T rows in float64. On the CPU in float64 with torch on one thread: BLAS dsyrk,
    a symmetric rank-k update that computes one triangle (half a GEMM's work; same sums up
    to rounding, ~1e-14 relative); otherwise torch's matmul, on all of torch's threads
    (SciPy's BLAS threads spin after each call and stall torch's pool: on the default
    suite's depth-3 width-256 models with 2 threads, exact Laplace took 6.1 s with both
    pools on 2 threads, 2.0 s with dsyrk on one and 1.7 s with torch's matmul)."""
    if (rows.dtype != torch.float64 or rows.device.type != "cpu" or not rows.shape[0]
            or torch.get_num_threads() > 1):
        return (rows.T @ rows).to(torch.float64)
    from scipy.linalg import blas

    # A C-ordered (N, d) array's transpose is a Fortran (d, N) one: dsyrk reads it as is.
    upper = torch.from_numpy(blas.dsyrk(1.0, rows.contiguous().numpy().T, trans=0)).triu()
    return upper + upper.triu(1).T


@functools.cache
def _blas_controller():
    import scipy.linalg.blas  # noqa: F401 - loaded first, so the controller sees its BLAS
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finding the loaded BLAS libraries takes ~0.1 s: once


def _blas_threads():
    """SciPy's BLAS (behind :func:`_gram`) on one thread: its default, every core, stalls
    torch's thread pool."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _softmax_hessian_sum(logits: torch.Tensor) -> torch.Tensor:
    """sum_s diag(p_s) - p_s p_s^T in float64: the softmax cross-entropy Hessians of a
    batch, summed in closed form (the output layer's E[G], without square roots)."""
    p = torch.softmax(logits.detach().to(torch.float64), dim=1)
    return torch.diag(p.sum(0)) - p.T @ p


def kronecker_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable | None = None, *, fisher: str = "exact",
                      mc_samples: int = 1, include_bias: bool = False, batch_size: int = 512,
                      noise: bool = True, noise_passes: int = 1,
                      accumulate: torch.dtype = torch.float64) -> dict[str, LayerFactors]:
    """E[A] and E[G] of every weight layer (Linear, Conv1d, Conv2d), in float64.

    ``fisher="exact"``: E[G] is the Gauss-Newton matrix propagated exactly, one
    backward pass per column of a square root of the output Hessian (KFLR style);
    ``"mc"``: labels sampled ``mc_samples`` times per input from the model's own
    softmax (KFAC's Monte-Carlo Fisher; softmax cross-entropy only).
    The model runs in eval mode (BatchNorm uses its running statistics); when
    ``noise`` is set, the regularizers' forward noise (dropout) is active, so the
    factors are E_{s,eta}[.] of the network as it was trained; ``noise_passes``
    passes over the data draw fresh noise each time. ``accumulate`` is the dtype of
    each batch's Gram matrices (summed across batches in float64): float32 halves
    the cost on a float32 model, whose gradients are float32 anyway.
    """
    if fisher not in ("exact", "mc"):
        raise ValueError(f"fisher must be 'exact' or 'mc', not {fisher!r}")
    layers = taps.weight_layers(model)
    if not layers:
        raise ValueError("the model has no Linear/Conv layer to measure")
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in captured:
                raise RuntimeError(f"layer {name} ran twice in one forward pass (shared "
                                   "weights are not supported)")
            captured[name] = (inputs[0], output)
        return record

    noisy = noise and any(t.handlers for t in taps.taps(model))
    passes = max(1, noise_passes) if noisy else 1
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    A: dict[str, torch.Tensor] = {}
    G: dict[str, torch.Tensor] = {}
    direct: set[str] = set()
    cross_entropy: bool | None = None
    n_total = 0
    try:
        for p in params:
            p.requires_grad_(True)
        model.eval()
        with taps.noise_active(model, noisy), torch.enable_grad(), _blas_threads():
            for _ in range(passes):
                for i in range(0, x.shape[0], batch_size):
                    captured.clear()
                    xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                    logits = model(xb)
                    if cross_entropy is None:
                        cross_entropy = is_cross_entropy(loss_fn, logits, yb)
                        if fisher == "mc" and not cross_entropy:
                            raise ValueError("fisher='mc' samples labels from a softmax: it needs "
                                             "the cross-entropy loss")
                    sqrt = (sampled_label_sqrt(logits, mc_samples) if fisher == "mc"
                            else output_hessian_sqrt(logits, yb, loss_fn, cross_entropy))
                    locations: dict[str, int] = {}
                    back: list[tuple[str, nn.Module]] = []
                    for name, module in layers:
                        if name not in captured:
                            raise ValueError(f"layer {name} is not used by the forward pass")
                        inp, out = captured[name]
                        rows, locations[name] = _unfold_input(module, inp.detach())
                        rows = rows.to(accumulate)
                        if include_bias:
                            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)
                        A[name] = A.get(name, 0) + _gram(rows)
                        if out is logits and isinstance(module, nn.Linear) and logits.dim() == 2:
                            # The output layer: its G is the output Hessian itself, in float64.
                            direct.add(name)
                            G[name] = G.get(name, 0) + (
                                _softmax_hessian_sum(logits) if fisher == "exact" and cross_entropy
                                else torch.einsum("bck,bdk->cd", sqrt, sqrt))
                        else:
                            back.append((name, module))
                    if back:
                        outs = [captured[n][1] for n, _ in back]
                        cols = sqrt.to(logits.dtype)
                        k_cols = cols.shape[2]
                        # Each layer's rows for all columns go straight into one buffer
                        # of the Gram's dtype (no list, no concatenation, one conversion).
                        bufs: list[torch.Tensor | None] = [None] * len(back)
                        for k in range(k_cols):
                            grads = torch.autograd.grad(logits, outs, cols[:, :, k],
                                                        retain_graph=k < k_cols - 1,
                                                        allow_unused=True)
                            for j, ((name, module), g) in enumerate(zip(back, grads)):
                                if g is None:
                                    continue
                                rows = _output_rows(module, g)
                                if bufs[j] is None:
                                    bufs[j] = rows.new_empty((k_cols * rows.shape[0], rows.shape[1]),
                                                             dtype=accumulate)
                                bufs[j][k * rows.shape[0]:(k + 1) * rows.shape[0]].copy_(rows)
                        for (name, module), buf in zip(back, bufs):
                            size = captured[name][1].shape[1]
                            rows = buf if buf is not None else torch.zeros(0, size, dtype=accumulate)
                            G[name] = G.get(name, 0) + _gram(rows) / locations[name]
                    n_total += xb.shape[0]
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    out: dict[str, LayerFactors] = {}
    for name, module in layers:
        a, g = A[name] / n_total, G[name] / n_total
        # The factors are small: the linear algebra runs on the CPU, in float64.
        a, g = (0.5 * (a + a.T)).cpu(), (0.5 * (g + g.T)).cpu()
        out[name] = LayerFactors(name, type(module).__name__, a, g,
                                 ones_null=bool(cross_entropy) and _has_ones_null(g, name in direct),
                                 samples=n_total)
    return out


def _has_ones_null(g: torch.Tensor, output_layer: bool) -> bool:
    """Whether E[G] annihilates the all-ones vector: always for the output layer under
    softmax cross-entropy; checked numerically (float32 round-off) for any other layer."""
    if output_layer:
        return True
    n = g.shape[0]
    scale = float(torch.linalg.matrix_norm(g))
    if n < 2 or scale == 0:
        return False
    return float((g @ torch.ones(n, dtype=g.dtype)).norm()) <= 1e-5 * scale * math.sqrt(n)


# -- the Laplace volume -----------------------------------------------------------------
def layer_key(name: str) -> str:
    """The key of a layer in volume results: its weight's state-dict name."""
    return f"{name}.weight" if name else "weight"


def summarize(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-model figures: sum of log-volumes and mean per-dimension volume."""
    return {"layers": layers,
            "log_vol_sum": float(sum(v["log_vol"] for v in layers.values())),
            "vol_per_dim_mean": float(sum(v["vol_per_dim"] for v in layers.values())
                                      / max(len(layers), 1))}


def laplace_volume(factors: dict[str, LayerFactors], damping: float = 1e-3,
                   null_space: str = "profile", blocks: int | None = None) -> dict[str, Any]:
    """Per-layer Kronecker log-volumes from the factors (science.md 1a).

    log_vol_l = n_G * log_vol(E[A]^{-1}) + n_A * log_vol(E[G]^{-1}), with n_A, n_G
    the live (not structurally zero) coordinates of each factor; ``dim`` is the
    layer's weight count. Where E[G] annihilates the ones vector (the softmax layer)
    the posterior lives on the complement of the directions 1 (x) v: E[A]'s term
    enters n_G - 1 times and ``dim`` is (out - 1) * in, the dimension of that subspace.
    """
    if null_space not in ("profile", "damp"):
        raise ValueError(f"null_space must be 'profile' or 'damp', not {null_space!r}")
    layers: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    paper: dict[str, float] = {}
    for name, f in factors.items():
        inv_a = inverse_factor_volume(f.A, damping, keep_covariance=blocks is not None)
        inv_g = inverse_factor_volume(f.G, damping, ones_null=f.ones_null, null_space=null_space,
                                      keep_covariance=blocks is not None)
        gauge = int(inv_g.null_profiled)  # one gauge direction of E[G] per input
        lv = (inv_g.live - gauge) * inv_a.log_vol + inv_a.live * inv_g.log_vol
        dim = f.A.shape[0] * (f.G.shape[0] - gauge)
        key = layer_key(name)
        layers[key] = {"log_vol": float(lv), "dim": int(dim), "vol_per_dim": math.exp(lv / dim)}
        details[key] = {"log_vol_A_inv": inv_a.log_vol, "log_vol_G_inv": inv_g.log_vol,
                        "live_in": inv_a.live, "live_out": inv_g.live,
                        "damping_A": inv_a.damping, "damping_G": inv_g.damping,
                        "null_profiled": inv_g.null_profiled}
        if blocks is not None:
            paper[key] = (block_mean_det(inv_a.covariance, blocks)
                          * block_mean_det(inv_g.covariance, blocks))
    out = summarize(layers)
    out["layer_details"] = details
    if blocks is not None:
        out["block_figure"] = {"block": blocks, "layers": paper,
                               "mean": float(sum(paper.values()) / max(len(paper), 1))}
    return out


