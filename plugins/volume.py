"""Built-in weight-volume estimators (science.md section 1): ``laplace`` and ``sampling``.

The math lives in :mod:`genbench.volume`; these classes hold the parameters and
their documented defaults (docs/volume.md explains each choice).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import Field, model_validator

import genbench
from genbench.components import Params, VolumeEstimator
from genbench.lazy import lazy_module

# Imported on first use: loading the registry must not import torch (docs/performance.md).
torch, F = lazy_module("torch"), lazy_module("torch.nn.functional")
sampling, taps, volume = (lazy_module(f"genbench.{m}") for m in ("sampling", "taps", "volume"))


def _training_set(data, max_samples: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.train_x, data.train_y
    if max_samples is not None and max_samples < x.shape[0]:
        # A fixed, seed-independent subset: the first max_samples (datasets are shuffled).
        x, y = x[:max_samples], y[:max_samples]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


class Laplace(VolumeEstimator):
    """Kronecker-factored Laplace volume: E[A]^-1 (x) E[G]^-1 per layer, dropout-aware, float64."""

    name = "laplace"
    version = "2"

    class Params(Params):
        damping: float = Field(1e-3, gt=0, description="added to each factor's diagonal, "
                               "times the factor's mean (live) diagonal")
        fisher: Literal["auto", "exact", "mc"] = Field(
            "auto", description="E[G]: 'exact' Gauss-Newton (one backward pass per class), "
            "'mc' Monte-Carlo Fisher with labels sampled from the model; 'auto' = exact "
            "for <= 100 classes")
        mc_samples: int = Field(1, ge=1, description="labels drawn per input when fisher='mc'")
        include_bias: bool = Field(False, description="measure [W b] instead of W")
        null_space: Literal["profile", "damp"] = Field(
            "profile", description="the softmax layer's all-ones null direction: 'profile' "
            "it out (finite as damping -> 0) or 'damp' it like any direction (an artifact)")
        noise: bool = Field(True, description="accumulate the factors with the regularizers' "
                            "forward noise (dropout) active, as the paper requires (a model "
                            "with noise also gets the noise-off estimate, under 'noise_off')")
        noise_passes: int = Field(1, ge=1, description="passes over the data with fresh noise")
        gram_dtype: Literal["float64", "float32"] = Field(
            "float64", description="dtype of each batch's Gram matrices (sums and all the "
            "linear algebra stay float64); float32 about halves the cost")
        batch_size: int = Field(1024, ge=1)
        max_samples: int | None = Field(None, ge=1, description="use the first N training samples")
        blocks: int | None = Field(None, ge=1, description="also report the block figure: "
                                   "mean det of blocks x blocks diagonal blocks of each factor's "
                                   "correlation (a diagnostic, not the paper's procedure)")

    def estimate(self, model, data, *, loss_fn=None, device=None):
        """The estimate; for a model with a noise regularizer bound (dropout, reverse noise)
        and ``noise`` on, also the same estimate with the noise off under ``"noise_off"``,
        so the trained weights' share of a volume change can be told from the noise's."""
        p = self.params
        t0 = time.perf_counter()
        x, y = _training_set(data, p.max_samples, device)
        fisher = p.fisher if p.fisher != "auto" else ("exact" if data.n_classes <= 100 else "mc")

        def estimate_with(noise: bool, blocks: int | None) -> dict:
            factors = volume.kronecker_factors(
                model, x, y, loss_fn if loss_fn is not None else F.cross_entropy, fisher=fisher,
                mc_samples=p.mc_samples, include_bias=p.include_bias, batch_size=p.batch_size,
                noise=noise, noise_passes=p.noise_passes,
                accumulate=torch.float32 if p.gram_dtype == "float32" else torch.float64)
            return volume.laplace_volume(factors, damping=p.damping, null_space=p.null_space,
                                         blocks=blocks)

        out = estimate_with(p.noise, p.blocks)
        if p.noise and any(t.handlers for t in taps.taps(model)):
            off = estimate_with(False, None)
            out["noise_off"] = {k: off[k] for k in ("log_vol_sum", "vol_per_dim_mean", "layers")}
        out.update({"damping": p.damping, "fisher": fisher, "samples": int(x.shape[0]),
                    "seconds": time.perf_counter() - t0})
        return out


# The params that mean something in one mode only (refused in the others).
MODE_ONLY = {
    "exact": ("tol", "max_iter"),
    "langevin": ("burn_in", "thin", "step", "target", "loss_rise", "precondition"),
    "paper": ("sigma_u", "lr", "epochs", "eps", "subset_size", "n_subsets", "covariance",
              "noise", "blocks", "batch_size"),
}


class Sampling(VolumeEstimator):
    """Sampling volume: independent draws from the model's Gauss-Newton posterior and a
    full-layer log-determinant from a matrix-normal fit (docs/sampling.md);
    ``mode="langevin"`` draws them with a Langevin chain, ``mode="paper"`` runs the
    paper's Algorithm 1 literally."""

    name = "sampling"
    version = "3"

    class Params(Params):
        mode: Literal["exact", "langevin", "paper"] = Field(
            "exact", description="'exact': independent draws from N(W^F, (G + damping)^-1) by "
            "perturbation and conjugate gradients; 'langevin': a preconditioned Langevin chain "
            "with the same target (mixes slowly: docs/sampling.md); 'paper': Algorithm 1 as "
            "the paper writes it, 4x4 subsets")
        n_samples: int = Field(32, ge=1, description="exact: independent draws; langevin: "
                               "samples kept after burn-in (one every `thin` steps); paper: "
                               "iterations n of Algorithm 1")
        damping: float = Field(0.1, gt=0, description="Gaussian prior around W^F, precision "
                               "damping * the layer's mean curvature tr(E[A]) tr(E[G]) / k; "
                               "the posterior is N(W^F, (G + prior)^-1)")
        tol: float = Field(1e-2, gt=0, lt=1, description="exact: relative residual (in the "
                           "preconditioned norm) each draw's solve must reach")
        max_iter: int = Field(1000, ge=1, description="exact: conjugate-gradient iterations "
                              "allowed (an estimate that does not converge fails)")
        burn_in: int = Field(20, ge=0, description="langevin steps discarded first (the "
                             "chain starts from the preconditioner's Gaussian, not from W^F)")
        thin: int = Field(4, ge=1, description="langevin steps between kept samples")
        target: Literal["gauss_newton", "loss"] = Field(
            "gauss_newton", description="langevin: 'gauss_newton' N(W^F, T (G + damping)^-1) "
            "with the exact Gauss-Newton G of all layers jointly; 'loss' the training loss "
            "itself, tilted so W^F is stationary (diverges on unconverged nets)")
        step: float = Field(0.3, gt=0, lt=2, description="langevin step as a fraction of "
                            "the stability limit: h = step / mu_max, mu_max the largest "
                            "eigenvalue of the preconditioned curvature (power iteration)")
        loss_rise: float = Field(0.01, gt=0, description="langevin: the temperature T = 2 "
                                 "loss_rise / k, the mean rise of the loss at equilibrium")
        precondition: bool = Field(True, description="langevin: precondition with the model's "
                                   "own (E[A] (x) E[G] + damping)^-1 (changes mixing, not the "
                                   "target)")
        debias: bool = Field(True, description="remove the small-sample bias of log det of a "
                             "sample correlation (per Kronecker factor; paper: per subset)")
        include_bias: bool = Field(False, description="measure [W b] instead of W")
        max_samples: int | None = Field(None, ge=1, description="use the first N training samples")
        batch_size: int = Field(256, ge=1, description="paper: fine-tuning minibatch size (not "
                                "given by the paper; 256 is one of its training sizes)")
        sigma_u: float = Field(0.1, gt=0, description="paper: std of the perturbation U (0.1)")
        lr: float = Field(1e-4, gt=0, description="paper: plain SGD learning rate (1e-4)")
        epochs: int = Field(1, ge=1, description="paper: fine-tuning epochs per iteration (1)")
        eps: float = Field(0.05, gt=0, description="paper: keep W' if |L_S(W') - L_S(W^F)| <= "
                           "eps (0.05 CIFAR-10/SVHN-like, 0.1 CIFAR-100/ImageNet-32-like)")
        subset_size: int = Field(4, ge=1, description="paper: coordinates per random subset")
        n_subsets: int = Field(256, ge=1, description="paper: random coordinate subsets per layer")
        covariance: Literal["subsets", "ledoit_wolf"] = Field(
            "subsets", description="paper: sample covariance on subsets (debiased) or "
            "Ledoit-Wolf shrinkage on subsets")
        noise: bool = Field(True, description="paper: fine-tune with the regularizers' noise")
        blocks: int | None = Field(None, ge=1, description="paper: also report the mean det of "
                                   "consecutive blocks-coordinate groups (the authors' code: 4)")

        @model_validator(mode="after")
        def _mode_fields_need_their_mode(self):
            stray = [f for mode, fields in MODE_ONLY.items() if mode != self.mode
                     for f in fields if f in self.model_fields_set]
            if stray:
                owners = sorted({m for m, fs in MODE_ONLY.items() for f in stray if f in fs})
                raise ValueError(f"{', '.join(stray)} apply to mode={' or '.join(map(repr, owners))} "
                                 f"only, not mode={self.mode!r}: drop them or change mode")
            return self

    def estimate(self, model, data, *, loss_fn=None, device=None):
        p = self.params
        t0 = time.perf_counter()
        x, y = _training_set(data, p.max_samples, device)
        loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        run = {"exact": self._exact, "langevin": self._langevin, "paper": self._paper}[p.mode]
        out = run(model, x, y, loss_fn)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _fit(self, draws: dict[str, sampling.LayerChain]) -> dict:
        """The estimate from the draws: per layer their matrix-normal log-volume, the
        model's sums, and under ``layer_details`` how each layer was read."""
        layers, details = {}, {}
        for key, lc in draws.items():
            est = sampling.kronecker_log_vol(lc.samples, ones_null=lc.ones_null,
                                             debias=self.params.debias)
            dim = int(lc.samples[0].numel())
            layers[key] = {"log_vol": est["log_vol"], "dim": dim,
                           "vol_per_dim": math.exp(est["log_vol"] / dim)}
            details[key] = {"ess": lc.ess, "log_vol_rows": est["log_vol_rows"],
                            "log_vol_cols": est["log_vol_cols"], "bias_rows": est["bias_rows"],
                            "bias_cols": est["bias_cols"], "ones_null": lc.ones_null}
        return {**volume.summarize(layers), "layer_details": details}

    def _exact(self, model, x, y, loss_fn):
        p = self.params
        draws = sampling.posterior_draws(model, x, y, loss_fn, n_samples=p.n_samples,
                                         damping=p.damping, tol=p.tol, max_iter=p.max_iter,
                                         include_bias=p.include_bias)
        out = self._fit(draws.layers)
        out.update({"mode": "exact", "kept": p.n_samples, "tried": p.n_samples,
                    "ess_min": float(p.n_samples), "iterations": draws.iterations,
                    "residual": draws.residual, "epochs": draws.passes})
        return out

    def _langevin(self, model, x, y, loss_fn):
        p = self.params
        chain = sampling.langevin_chain(
            model, x, y, loss_fn, n_samples=p.n_samples, burn_in=p.burn_in, thin=p.thin,
            step=p.step, target=p.target, loss_rise=p.loss_rise, damping=p.damping,
            precondition=p.precondition,
            include_bias=p.include_bias)
        if chain.diverged:
            raise ValueError(f"the Langevin chain left the basin after {len(chain.losses)} steps "
                             f"(loss {chain.losses[-1]:.3g} from {chain.ref_loss:.3g}): lower step "
                             "or loss_rise")
        out = self._fit(chain.layers)
        kept = p.n_samples
        out.update({"mode": "langevin", "target": p.target, "kept": kept, "tried": p.burn_in + kept * p.thin,
                    "ess_min": min(d["ess"] for d in out["layer_details"].values()),
                    "temperature": chain.temperature, "step_h": chain.step,
                    "ref_loss": chain.ref_loss,
                    "loss_mean": sum(chain.losses[p.burn_in:]) / max(len(chain.losses[p.burn_in:]), 1),
                    "epochs": chain.gradient_evals + sampling.POWER_ITERATIONS
                    + (1 if p.precondition else 0)})
        return out

    def _paper(self, model, x, y, loss_fn):
        p = self.params
        chain = sampling.sample_posterior(
            model, x, y, loss_fn, n_samples=p.n_samples, sigma_u=p.sigma_u, lr=p.lr,
            epochs=p.epochs, batch_size=p.batch_size, eps=p.eps, include_bias=p.include_bias,
            noise=p.noise)
        smallest = min(m.weight.numel() + (m.weight.shape[0] if p.include_bias else 0)
                       for _, m in taps.weight_layers(model))
        need = min(p.subset_size, smallest) + 2 if p.covariance == "subsets" else 2
        if chain.kept < need:
            raise ValueError(f"sampling kept {chain.kept} of {chain.tried} samples (needs {need}): "
                             "raise n_samples or eps, or lower sigma_u")
        layers, details, paper = {}, {}, {}
        for key, s in chain.samples.items():
            est = sampling.sampled_log_vol(s, subset_size=p.subset_size, n_subsets=p.n_subsets,
                                           covariance=p.covariance, debias=p.debias)
            k = int(s.shape[1])
            layers[key] = {"log_vol": est["log_vol"], "dim": k,
                           "vol_per_dim": math.exp(est["per_dim"])}
            details[key] = {"subset_size": est["subset_size"], "subsets": est["subsets"]}
            if p.blocks is not None:
                paper[key] = sampling.sampled_block_det(s, p.blocks)
        out = volume.summarize(layers)
        out.update({"mode": "paper", "kept": chain.kept, "tried": chain.tried,
                    "ref_loss": chain.ref_loss, "diverged": chain.diverged,
                    "epochs": chain.tried * p.epochs, "layer_details": details})
        if p.blocks is not None:
            out["paper_blocks"] = {"block": p.blocks, "layers": paper,
                                   "mean": float(sum(paper.values()) / max(len(paper), 1))}
        return out


@genbench.hookimpl
def register_volume_estimators(register):
    register(Laplace)
    register(Sampling)
