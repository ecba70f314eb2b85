"""Built-in complexity measures (science.md section 2). Bigger = predicts worse generalization.

Every measure reads weight matrices from the context: Linear and Conv weights,
biases excluded, conv kernels reshaped to (C_out, C_in*kh*kw), in float64 (the
path norm, which squares every parameter, is the one exception). The sharpness
searches live in :mod:`genbench.sharpness`; docs/measures.md has every choice.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

import genbench
from genbench.components import Measure, Params
from genbench.lazy import lazy_module
from genbench.search_params import AlphaParams, SigmaParams

# Imported when a measure first computes: the registry loads this module without torch.
torch, nn = lazy_module("torch"), lazy_module("torch.nn")
_taps = lazy_module("genbench.taps")


def frobenius_distance(ctx) -> float:
    """sum_l ||W^F_l - W^0_l||_F^2 (measure 1; the numerator of the PAC measures)."""
    final, init = ctx.weights(), ctx.weights(initial=True)
    return float(sum(((final[n] - init[n]) ** 2).sum() for n in final))


class FrobeniusDistance(Measure):
    """Distance from initialization: sum_l ||W^F_l - W^0_l||_F^2.

    Bigger = predicts worse generalization. Same as the paper's definition
    (biases excluded, conv kernels as (C_out, C_in*kh*kw) matrices).
    """

    name = "frobenius_distance"
    version = "1"

    def compute(self, ctx):
        return frobenius_distance(ctx)


class ParameterNorm(Measure):
    """Squared parameter norm: sum_l ||W^F_l||_F^2.

    Bigger = predicts worse generalization. Same as the paper's definition
    (weight matrices only, biases excluded).
    """

    name = "parameter_norm"
    version = "1"

    def compute(self, ctx):
        return float(sum((w ** 2).sum() for w in ctx.weights().values()))


class SpectralNorm(Measure):
    """Spectral distance from initialization: sum_l ||W^F_l - W^0_l||_2^2 (top singular value^2).

    Bigger = predicts worse generalization. A conv kernel's norm is that of its
    (C_out, C_in*kh*kw) reshape (science.md), not the operator norm of the
    convolution itself.
    """

    name = "spectral_norm"
    version = "1"

    def compute(self, ctx):
        final, init = ctx.weights(), ctx.weights(initial=True)
        return float(sum(torch.linalg.matrix_norm(final[n] - init[n], ord=2) ** 2 for n in final))


@functools.cache
def affine_class() -> type:
    """The module x * scale + shift along dim 1 (an eval-mode BatchNorm written as the
    affine map it is); made on first use, since subclassing nn.Module imports torch."""

    class _Affine(nn.Module):
        def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
            super().__init__()
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            view = (1, -1) + (1,) * (x.dim() - 2)
            return x * self.scale.view(view) + self.shift.view(view)

    return _Affine


def squared_network(model: nn.Module, bias: bool = True, identity: bool = True) -> nn.Module:
    """Turn ``model`` (a copy: modified in place) into f_{W o W}: every parameter squared.

    - BatchNorm (eval mode) is first written as its affine map, scale
      gamma / sqrt(running_var + eps) and shift beta - running_mean * scale, and
      those two are squared (a BatchNorm is one more diagonal layer on each path).
    - ``bias=False`` zeroes every bias (and BatchNorm shift) instead of squaring it.
    - ``identity=True`` replaces each hidden activation (the taps') by the identity;
      on the non-negative signals of the squared network this is exactly ReLU.
    """
    _Affine = affine_class()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_var is None:
                raise ValueError(f"path norm: BatchNorm '{name}' keeps no running statistics, "
                                 "so it has no eval-mode affine map")
            scale = torch.rsqrt(module.running_var + module.eps)
            if module.weight is not None:
                scale = scale * module.weight.detach()
            shift = -module.running_mean * scale
            if module.bias is not None:
                shift = shift + module.bias.detach()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    _Affine(scale, shift))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] == "bias" and not bias:
                p.zero_()
            else:
                p.copy_(p * p)
        for name, buf in model.named_buffers():
            if isinstance(model.get_submodule(name.rpartition(".")[0]), _Affine):
                is_shift = name.endswith("shift")
                buf.copy_(torch.zeros_like(buf) if is_shift and not bias else buf * buf)
    if identity:
        for tap in _taps.taps(model):
            tap.activation = nn.Identity()
    return model.eval()


class PathNorm(Measure):
    """Path norm (Neyshabur et al. 2015): sqrt(sum of the outputs of f_{W o W}(1)).

    Square every parameter, feed one all-ones input in eval mode (no dropout),
    sum the outputs, take the square root: for a ReLU MLP without biases this is
    sqrt(1^T |W_L|^2 ... |W_1|^2 1), the l2 path norm. Biases are squared too
    (paths that start at a bias), unless ``bias=false``. BatchNorm counts as the
    diagonal affine layer it is in eval mode (its scale and shift squared).
    Bigger = predicts worse generalization.

    Differs from the paper's code: it returned the training accuracy of the squared
    network (a bug); this implements the definition. With ``activation="identity"``
    (default) hidden activations become the identity, which is the path norm for
    any activation and equals the literal recipe for ReLU; ``"model"`` keeps the
    model's own activations (the literal recipe, e.g. tanh of the squared signal).
    """

    name = "path_norm"
    version = "1"

    class Params(Params):
        bias: bool = Field(True, description="square biases (True) or drop them (False)")
        activation: Literal["identity", "model"] = Field(
            "identity", description="hidden activations in the squared network")

    def compute(self, ctx):
        model = squared_network(ctx.build().to(torch.float64), bias=self.params.bias,
                                identity=self.params.activation == "identity")
        ones = torch.ones((1, *ctx.data.input_shape), dtype=torch.float64, device=ctx.device)
        with torch.no_grad():
            total = model(ones).sum()
        return float(total.clamp_min(0).sqrt())


class SharpnessAlpha(Measure):
    """Worst-case sharpness (Jiang et al. 2019): 1 / alpha'^2.

    alpha' is the largest magnitude such that projected sign-gradient *ascent* on
    the training loss inside the box |w - w_F| <= alpha' (|w_F| + 1e-3), from
    ``restarts`` random starts, raises the loss (``criterion="loss"``, default) or
    the error by at most eps; binary search on alpha' in [0, 2]. A sharper minimum
    has a smaller alpha' and so a bigger value: bigger = predicts worse
    generalization. eps defaults from the dataset (0.05 below 100 classes, 0.1
    from 100 classes). See :mod:`genbench.sharpness`.

    Differs from the paper's code (Jiang et al. use the accuracy drop and perturb
    every parameter): we bound the cross-entropy rise on a fixed subset of
    ``n_samples`` training samples and perturb the measured weight matrices
    (``perturb="all"`` and ``criterion="error"`` give their choices).
    """

    name = "sharpness_alpha"
    version = "1"
    needs = ("alpha",)
    Params = AlphaParams

    def compute(self, ctx):
        alpha = ctx.alpha(**self.params.model_dump())["alpha"]
        if alpha <= 0:
            raise ValueError("alpha' search: no alpha' > lower keeps the loss rise within eps")
        return 1.0 / alpha ** 2


def pac_sharpness(ctx, params: SigmaParams) -> float:
    """sum_l ||W^F_l - W^0_l||_F^2 / (2 sigma^2) with sigma from the shared search."""
    sigma = ctx.sigma(**params.model_dump())["sigma"]
    if sigma <= 0:
        raise ValueError("sigma search: no sigma > lower keeps the loss rise within eps")
    return frobenius_distance(ctx) / (2.0 * sigma ** 2)


def neg_log_volume(volume: dict) -> float:
    """sum_l -log_vol_l = sum_l ln 1/vol(w_l) of a volume estimate (>= 0)."""
    return float(sum(-layer["log_vol"] for layer in volume["layers"].values()))


class PacSharpness(Measure):
    """PAC-Bayes sharpness: sum_l ||W^F_l - W^0_l||_F^2 / (2 sigma^2).

    sigma is the largest standard deviation with max_{sigma' <= sigma}
    |E L_S(W + U') - L_S(W)| <= eps, U' ~ N(0, sigma'^2 I), by binary search with
    Monte-Carlo draws (bounds [0, 2], depth 15, 10 draws; see
    :func:`genbench.sharpness.sigma_search`). One search per model, shared with the
    PAC-S measures. Bigger = predicts worse generalization.

    Differs from public code: sigma is the standard deviation of the noise (one
    implementation passed sigma^2 as the std); the loss is estimated on a fixed
    subset of ``n_samples`` training samples; only the measured weight matrices
    are perturbed by default (the ones the KL term sums over).
    """

    name = "pac_sharpness"
    version = "1"
    needs = ("sigma",)
    Params = SigmaParams

    def compute(self, ctx):
        return pac_sharpness(ctx, self.params)


class PacSLaplace(Measure):
    """PAC-S(Laplace): sum_l [ ||W^F_l - W^0_l||_F^2 / (2 sigma^2) + ln 1/vol_Laplace(w_l) ].

    Exactly ``pac_sharpness`` (same sigma params, same shared search) plus
    sum_l -log_vol_l of the suite's ``laplace`` volume estimate: the formula of
    science.md section 2 (paper Lemma 3.1 gives the KL with a correlated Gaussian
    posterior as 1/2 sum_l (||W^F_l - W^0_l||^2 / sigma^2 + ln 1/vol), so this is
    KL + 1/2 sum_l ln 1/vol, not a multiple of the KL). Bigger =
    predicts worse generalization. The volume is the faithful full-determinant
    estimate unless the suite's ``[volume.laplace]`` params choose otherwise.
    Returns the value with its two terms as parts (``sharpness_term``,
    ``volume_term``), so a reader sees which one drives a ranking.
    """

    name = "pac_s_laplace"
    version = "2"  # 2: returns its two terms as parts
    needs = ("sigma", "volume:laplace")
    Params = SigmaParams
    estimator = "laplace"

    def compute(self, ctx):
        sharp = pac_sharpness(ctx, self.params)
        vol = neg_log_volume(ctx.volume(self.estimator))
        return {"value": sharp + vol, "parts": {"sharpness_term": sharp, "volume_term": vol}}


class PacSSampling(PacSLaplace):
    """PAC-S(Sampling): as PAC-S(Laplace) with the volume of the ``sampling`` estimator.

    sum_l [ ||W^F_l - W^0_l||_F^2 / (2 sigma^2) + ln 1/vol_Sampling(w_l) ]. Bigger =
    predicts worse generalization.
    """

    name = "pac_s_sampling"
    version = "2"
    needs = ("sigma", "volume:sampling")
    estimator = "sampling"


@genbench.hookimpl
def register_measures(register):
    for cls in (FrobeniusDistance, ParameterNorm, SpectralNorm, PathNorm, SharpnessAlpha,
                PacSharpness, PacSLaplace, PacSSampling):
        register(cls)
