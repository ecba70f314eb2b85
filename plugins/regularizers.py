"""Built-in regularizers, all acting through the model's taps (science.md section 4).

- ``dropout``: node dropout on the activations (forward).
- ``activation_reverse_noise``: Gaussian noise N(mu, r(Sigma_a)), Sigma_a = E[A]^{-1},
  added to the activations (forward; Algorithm 2, lambda_1).
- ``node_loss_reverse_noise``: N(mu, r(Sigma_h)), Sigma_h = E[G]^{-1}, added to the
  gradient w.r.t. the pre-activations (backward; Algorithm 2, lambda_2).
- ``weight_noise``: Gaussian noise on the weights after every optimizer step (the
  paper's stochastic contraction noise).
- controls: ``weight_decay`` (optimizer override) and ``batch_norm`` (model override).

Design choices the paper leaves open are written down in ``docs/regularizers.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

import genbench
from genbench.components import Params, Regularizer, TapHandler
from genbench.lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from genbench.taps import Tap

# Imported when a handler first runs: the registry loads this module without torch.
torch = lazy_module("torch")
_taps = lazy_module("genbench.taps")


# -- dropout ---------------------------------------------------------------------
class DropoutHandler(TapHandler):
    def __init__(self, rates: list[float] | float):
        self.rates = rates

    def rate(self, tap: Tap) -> float:
        """Explicit per-layer ``rates`` are used as given; a single ``rate`` is scaled by the
        tap's ``dropout_scale`` (set by model families that reproduce the paper's
        placements: 1 where the paper puts Dropout(0.3), 1/3 where Dropout(0.1), 0 where none)."""
        if isinstance(self.rates, list):
            return self.rates[tap.index] if tap.index < len(self.rates) else self.rates[-1]
        return self.rates * getattr(tap, "dropout_scale", 1.0)

    def activation(self, tap: Tap, a: torch.Tensor) -> torch.Tensor:
        q = self.rate(tap)
        if q <= 0:
            return a
        # eta_i = 0 w.p. q, 1/(1-q) otherwise (science.md section 4): E[eta] = 1.
        keep = torch.empty_like(a).bernoulli_(1.0 - q)
        return a * keep / (1.0 - q)


class Dropout(Regularizer):
    """Node dropout after every hidden activation: eta = 0 w.p. rate, else 1/(1-rate)."""

    name = "dropout"
    version = "1"

    class Params(Params):
        rate: float = Field(0.0, ge=0, lt=1, description="drop probability for every hidden layer "
                            "(scaled per layer by the model family's placement, e.g. VGG's Tables 5-7)")
        rates: list[float] | None = Field(None, description="per-hidden-layer rates (last one repeats)")

        @field_validator("rates")
        @classmethod
        def _rates_in_range(cls, v):
            if v is not None and (not v or any(not 0 <= r < 1 for r in v)):
                raise ValueError("every rate must be in [0, 1)")
            return v

    def _rates(self) -> list[float] | float:
        return self.params.rates if self.params.rates is not None else self.params.rate

    def active(self):
        rates = self._rates()
        return any(rates) if isinstance(rates, list) else rates > 0

    def bind(self, model):
        return DropoutHandler(self._rates()) if self.active() else None


# -- reverse noise (Algorithm 2) ---------------------------------------------------
def reverse_offdiagonal(sigma: torch.Tensor) -> torch.Tensor:
    """r(Sigma): flip the sign of every off-diagonal entry (keep the diagonal)."""
    return 2 * torch.diag_embed(torch.diagonal(sigma, dim1=-2, dim2=-1)) - sigma


def psd_factor(matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A factor L with L L^T = the matrix with its negative eigenvalues set to zero.

    r(Sigma) of a positive-definite Sigma is not always positive semidefinite (for
    n >= 3), so it is not a covariance; we sample from its nearest PSD matrix in the
    Frobenius norm, V max(Lambda, 0) V^T. Returns (L, number of clipped eigenvalues).
    """
    sym = (matrix + matrix.T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    clipped = int((evals < 0).sum())
    return evecs * evals.clamp(min=0).sqrt(), clipped


def reverse_noise_covariance(moment: torch.Tensor, damping: float,
                             normalize: bool) -> torch.Tensor:
    """The covariance the reverse noise claims before clipping: r(Sigma), Sigma = (M + d I)^{-1}.

    ``M`` is a second-moment matrix (E[A] or E[G]); the damping is relative to M's mean
    diagonal. With ``normalize``, r(Sigma) is rescaled so its mean diagonal equals M's:
    the noise then has the units of the signal and ``strength`` is relative to its RMS.
    """
    m = moment.double()  # the running moment is float32; invert in float64
    scale = float(torch.diagonal(m).mean().clamp(min=1e-30))
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    damped = m + damping * scale * eye
    chol, info = torch.linalg.cholesky_ex(damped)
    # Cholesky inverse (the damped moment is positive definite); an undamped singular
    # moment falls back to the pseudo-inverse.
    sigma = torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.pinv(damped, hermitian=True)
    r = reverse_offdiagonal(sigma)
    if normalize:
        r = r * (scale / float(torch.diagonal(r).mean().clamp(min=1e-300)))
    return r


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, N) stays; (B, C, *spatial) becomes (B*spatial, C): channels are the units and
    every position is a sample (the conv convention of docs/regularizers.md)."""
    return x if x.dim() == 2 else x.movedim(1, -1).reshape(-1, x.shape[1])


class _UnitStats:
    """Running second moment of one tap's units and the sampler derived from it."""

    def __init__(self):
        self.moment: torch.Tensor | None = None  # float32 EMA of (1/rows) X^T X
        self.steps = 0
        self.sampler: torch.Tensor | None = None  # (N, N): z @ sampler = strength * (eta - mu)
        self.shift = 0.0  # strength * mu (a scalar times ones)
        self.clipped = 0
        self.refreshes = 0
        self.refreshed_at = 0


class ReverseNoiseHandler(TapHandler):
    """Shared machinery of both reverse noises: per tap, an exponential moving average of
    the units' second moment (updated every ``stats_every`` training steps from at most
    ``max_rows`` rows), a sampler recomputed every ``refresh_every`` steps, and the
    perturbation (every step)."""

    def __init__(self, params: Any):
        self.p = params
        self.stats: dict[int, _UnitStats] = {}

    def _observe(self, tap: Tap, x: torch.Tensor) -> _UnitStats:
        st = self.stats.setdefault(tap.index, _UnitStats())
        with torch.no_grad():
            if st.steps % self.p.stats_every:
                st.steps += 1
                return st
            rows = as_rows(x.detach())
            if rows.shape[0] > self.p.max_rows:
                pick = torch.randint(rows.shape[0], (self.p.max_rows,), device=rows.device)
                rows = rows[pick]
            rows = rows.float()
            n = rows.shape[0]
            if st.moment is None:
                st.moment = (rows.T @ rows) / n
            else:  # moment <- decay * moment + (1 - decay) * X^T X / n, in one kernel
                st.moment.addmm_(rows.T, rows, beta=self.p.decay, alpha=(1 - self.p.decay) / n)
            if st.refreshes == 0 or st.steps - st.refreshed_at >= self.p.refresh_every:
                self._refresh(st)
                st.refreshed_at = st.steps
            st.steps += 1
        return st

    def _refresh(self, st: _UnitStats) -> None:
        cov = reverse_noise_covariance(st.moment, self.p.damping, self.p.normalize)
        # float64 inverse; float32 eigh (2.5x faster at 512 units; ample for a noise factor)
        factor, st.clipped = psd_factor(cov.float())
        st.sampler = (self.p.strength * factor).T.contiguous().float()
        rms = math.sqrt(float(torch.diagonal(st.moment).double().mean().clamp(min=0))) \
            if self.p.normalize else 1.0
        st.shift = self.p.strength * self.p.mean * rms
        st.refreshes += 1

    def _perturb(self, st: _UnitStats, x: torch.Tensor) -> torch.Tensor:
        """x + strength * eta, eta ~ N(mean * rms, clip(r(Sigma))) per row (unit = channel)."""
        sampler = st.sampler if st.sampler.dtype == x.dtype else st.sampler.to(x.dtype)
        if x.dim() == 2:
            z = torch.randn(x.shape[0], sampler.shape[0], device=x.device, dtype=x.dtype)
            out = torch.addmm(x, z, sampler)
        else:
            z = torch.randn(x.shape[0], *x.shape[2:], sampler.shape[0], device=x.device, dtype=x.dtype)
            out = x + (z @ sampler).movedim(-1, 1)
        return out + st.shift if st.shift else out


class ActivationReverseNoiseHandler(ReverseNoiseHandler):
    def activation(self, tap: Tap, a: torch.Tensor) -> torch.Tensor:
        if not tap.training:  # a training perturbation only: see docs/regularizers.md
            return a
        return self._perturb(self._observe(tap, a), a)


class NodeLossReverseNoiseHandler(ReverseNoiseHandler):
    def preactivation(self, tap: Tap, h: torch.Tensor) -> torch.Tensor:
        if tap.training and h.requires_grad:
            h.register_hook(lambda g, tap=tap: self._on_grad(tap, g))
        return h

    def _on_grad(self, tap: Tap, g: torch.Tensor) -> torch.Tensor:
        return self._perturb(self._observe(tap, g), g)


class _ReverseNoiseParams(Params):
    strength: float = Field(0.0, ge=0, description="lambda: the noise is strength * eta (0 = off)")
    mean: float = Field(0.0, description="mu = mean * ones (in units of the signal's RMS when normalize)")
    damping: float = Field(1e-3, ge=0, description="added to E[.] before inversion, times its mean diagonal")
    normalize: bool = Field(True, description="rescale r(Sigma) to the signal's mean second moment, "
                            "so strength is relative to the signal's RMS")
    decay: float = Field(0.95, ge=0, lt=1, description="EMA decay of the running second moment")
    stats_every: int = Field(5, ge=1, description="update the running second moment every N steps "
                             "(its memory, stats_every / (1 - decay) steps, spans one refresh)")
    refresh_every: int = Field(100, ge=1, description="recompute r(Sigma) and its factor every N steps "
                               "(at the first moment update at least N steps after the last)")
    max_rows: int = Field(4096, ge=1, description="rows (samples x positions) used per step for E[.]")


class _ReverseNoise(Regularizer):
    """What both reverse noises share: their params, and off at strength 0."""

    Params = _ReverseNoiseParams
    handler: type[ReverseNoiseHandler] = ReverseNoiseHandler

    def active(self):
        return self.params.strength > 0

    def bind(self, model):
        return self.handler(self.params) if self.active() else None


class ActivationReverseNoise(_ReverseNoise):
    """Activation reverse noise: a + lambda_1 eta, eta ~ N(mu, r(E[A]^{-1})) (Algorithm 2, forward)."""

    name = "activation_reverse_noise"
    version = "1"
    handler = ActivationReverseNoiseHandler


class NodeLossReverseNoise(_ReverseNoise):
    """Node-loss reverse noise: dL/dh + lambda_2 eta, eta ~ N(mu, r(E[G]^{-1})) (Algorithm 2, backward)."""

    name = "node_loss_reverse_noise"
    version = "1"
    handler = NodeLossReverseNoiseHandler


# -- weight noise ---------------------------------------------------------------------
class WeightNoiseHandler(TapHandler):
    """Adds N(0, std^2) to every weight (Linear/Conv; biases if asked) every ``every`` steps,
    and keeps a tally of what it injected (``steps``, ``injections``, ``sum_sq``)."""

    def __init__(self, std: float, every: int, include_bias: bool):
        self.std, self.every, self.include_bias = std, every, include_bias
        self.steps = 0
        self.injections = 0
        self.sum_sq = 0.0

    def after_step(self, model) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        with torch.no_grad():
            for _, layer in _taps.weight_layers(model):
                tensors = [layer.weight]
                if self.include_bias and layer.bias is not None:
                    tensors.append(layer.bias)
                for t in tensors:
                    noise = torch.randn_like(t) * self.std
                    t.add_(noise)
                    self.sum_sq += float(noise.square().sum())
        self.injections += 1


class WeightNoise(Regularizer):
    """Stochastic (contraction) noise: w += N(0, std^2) on every weight after each optimizer step."""

    name = "weight_noise"
    version = "1"

    class Params(Params):
        std: float = Field(0.0, ge=0, description="standard deviation of the noise added to each weight (0 = off)")
        every: int = Field(1, ge=1, description="inject every N optimizer steps")
        include_bias: bool = Field(False, description="perturb the biases too")

    def active(self):
        return self.params.std > 0

    def bind(self, model):
        if not self.active():
            return None
        return WeightNoiseHandler(self.params.std, self.params.every, self.params.include_bias)


def paired_volume_change(rows: list[dict[str, Any]], keys: str | list[str],
                         volume: str = "vol_per_dim_mean") -> list[dict[str, Any]]:
    """The volume change a regularizer caused, against its twin trained without it.

    ``rows``: dicts with ``hparams``, ``seed`` and ``volume`` (a dict holding ``volume``).
    ``keys``: the hyperparameter(s) that switch the regularizer(s) on. A row is treated
    when any of ``keys`` is non-zero (truthy); its twin is the row with the same seed,
    the same other hparams, and every one of ``keys`` zero (falsy). Returns, per
    treated row with a twin, ``{"row", "twin", "change", "contracted"}`` with
    ``change = vol(row) - vol(twin)``. This is how the paper selects its contraction runs.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)

    def treated(r: dict[str, Any]) -> bool:
        return any(r["hparams"].get(k) for k in keys)

    def rest(r: dict[str, Any]) -> tuple:
        return (r["seed"], tuple(sorted((k, repr(v)) for k, v in r["hparams"].items() if k not in keys)))

    baselines: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if not treated(r):
            if rest(r) in baselines:
                raise ValueError(f"two untreated rows share seed and hyperparameters {rest(r)}: "
                                 "which one is the twin is ambiguous")
            baselines[rest(r)] = r
    out = []
    for r in rows:
        if not treated(r):
            continue
        twin = baselines.get(rest(r))
        if twin is None or r["volume"] is None or twin["volume"] is None:
            continue
        change = float(r["volume"][volume]) - float(twin["volume"][volume])
        out.append({"row": r, "twin": twin, "change": change, "contracted": change < 0})
    return out


# -- controls (paper Appendix H) ---------------------------------------------------------
class WeightDecay(Regularizer):
    """L2 weight decay as an optimizer override (replaces the recipe's weight_decay)."""

    name = "weight_decay"
    version = "1"

    class Params(Params):
        value: float = Field(5e-4, ge=0, description="the optimizer's weight_decay coefficient")

    def optimizer_overrides(self) -> dict[str, Any]:
        return {"weight_decay": self.params.value}


class BatchNorm(Regularizer):
    """Batch normalization as a model override (the family's batch_norm=True)."""

    name = "batch_norm"
    version = "1"

    class Params(Params):
        enabled: bool = Field(True, description="build the model with BatchNorm before every hidden activation")

    def model_overrides(self) -> dict[str, Any]:
        return {"batch_norm": self.params.enabled}


@genbench.hookimpl
def register_regularizers(register):
    for cls in (Dropout, ActivationReverseNoise, NodeLossReverseNoise, WeightNoise, WeightDecay,
                BatchNorm):
        register(cls)
