"""The two sharpness searches behind measures 5-8 of science.md section 2.

- :func:`sigma_search`: the PAC-Bayes sharpness sigma, the largest standard
  deviation sigma such that max_{sigma' <= sigma} |E L(W + U') - L(W)| <= eps with
  U' ~ N(0, sigma'^2 I). Shared by ``pac_sharpness``, ``pac_s_laplace`` and
  ``pac_s_sampling`` (through :meth:`genbench.context.MeasureContext.sigma`,
  which builds the evaluator: this module takes modules and tensors, never a context).
- :func:`alpha_search`: the worst-case (magnitude-aware) sharpness alpha', the
  largest alpha' such that projected gradient *ascent* inside the box
  |w - w_F| <= alpha' (|w_F| + magnitude_eps) cannot raise the loss by more than
  eps. Used by ``sharpness_alpha`` (through ``MeasureContext.alpha``).

Both evaluate the loss of K perturbed copies of the network at once, as one
``torch.func.vmap`` over ``functional_call`` (``batched=True``), or one copy after
the other (``batched=False``); ``benchmarks/bench_measures.py`` times the two.
Every draw comes from a generator seeded by the ``seed`` param, so a search is
deterministic and does not touch the global RNG. Design choices are in
``docs/measures.md``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from genbench.search_params import (ALPHA_VERSION, SIGMA_VERSION, AlphaParams,  # noqa: F401
                                    SearchParams, SigmaParams, default_eps, resolve)
from genbench.volume import is_cross_entropy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- evaluating the loss of perturbed copies ----------------------------------------

class PerturbedLoss:
    """Training loss and error of ``model`` with parameters ``w + delta`` for K deltas at once.

    ``names`` are the parameters perturbed (the rest keep their values); a delta
    is a dict {name: tensor of shape (K, *param.shape)}. The model must be in
    eval mode (no dropout noise): the search measures the trained function.
    ``loss_fn(outputs, y)`` is the *mean* loss of a batch (chunks are reweighted).
    """

    def __init__(self, model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
                 loss_fn: LossFn = F.cross_entropy, batched: bool = False,
                 rows_per_pass: int = 65536):
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"no parameters named {missing} in the model")
        self.model = model.eval()
        self.names = list(names)
        self.base = {n: params[n].detach() for n in self.names}
        self.x, self.y = x, y
        self.loss_fn = loss_fn
        self.batched = batched
        self.rows_per_pass = rows_per_pass
        self.evaluations = 0  # perturbed copies evaluated (forward passes over the subset)

    @cached_property
    def loss_floor(self) -> float:
        """0 when ``loss_fn`` is softmax cross-entropy (checked on a few samples), which
        cannot be negative; -inf otherwise (nothing known)."""
        with torch.no_grad():
            logits = self.model(self.x[:4])
        return 0.0 if is_cross_entropy(self.loss_fn, logits, self.y[:4]) else -math.inf

    def _one(self, delta: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor):
        out = functional_call(self.model, {n: self.base[n] + delta[n] for n in self.names}, (xb,))
        return self.loss_fn(out, yb), (out.argmax(-1) != yb).sum()

    @cached_property
    def _scratch(self) -> tuple[nn.Module, list[torch.Tensor]]:
        """A private copy of the model and its perturbed parameters, for the one-copy path."""
        model = copy.deepcopy(self.model).eval()
        params = dict(model.named_parameters())
        return model, [params[n].requires_grad_(True) for n in self.names]

    def _one_in_place(self, delta: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor):
        """:meth:`_one` by writing W + delta into the private copy's parameters: the same
        numbers (the same sums, the same modules; the gradient w.r.t. those parameters is
        the gradient w.r.t. delta) without ``functional_call``'s per-call bookkeeping (about
        a tenth of the searches' time in a profile; within the noise end to end)."""
        model, params = self._scratch
        with torch.no_grad():
            for name, p in zip(self.names, params):
                torch.add(self.base[name], delta[name], out=p)
        out = model(xb)
        return self.loss_fn(out, yb), (out.argmax(-1) != yb).sum()

    def evaluate(self, delta: dict[str, torch.Tensor], with_grad: bool = False, *,
                 stop_above: float | None = None, criterion: str = "loss",
                 copies: int | None = None):
        """(loss, error) per copy, each of shape (K,); with ``with_grad`` also the gradient
        of each copy's loss w.r.t. its delta (a dict like ``delta``).

        ``stop_above``: the caller only needs to know whether some copy's ``criterion``
        exceeds it, so the one-copy-at-a-time path stops at the first copy that does
        (without its gradient; the copies after it stay at 0). ``copies``: chunk the
        samples as for that many copies (default K), so evaluating some of the copies
        sums each copy's chunks exactly as evaluating all of them would.
        """
        k = next(iter(delta.values())).shape[0]
        n = self.x.shape[0]
        chunk = max(1, self.rows_per_pass // (copies or k))
        starts = range(0, n, chunk)
        if with_grad and self.batched:  # the one-copy path differentiates its scratch copy
            delta = {name: d.detach().requires_grad_(True) for name, d in delta.items()}
        loss = torch.zeros(k, device=self.x.device)
        wrong = torch.zeros(k, device=self.x.device)
        grads = {name: torch.zeros_like(d) for name, d in delta.items()} if with_grad else None

        def exceeded(j: int) -> bool:
            value = loss[j] if criterion == "loss" else wrong[j] / n
            return stop_above is not None and float(value) > stop_above

        with torch.set_grad_enabled(with_grad):
            if self.batched:
                for i in starts:
                    xb, yb = self.x[i:i + chunk], self.y[i:i + chunk]
                    weight = xb.shape[0] / n
                    lb, wb = vmap(self._one, in_dims=(0, None, None))(delta, xb, yb)
                    if with_grad:
                        # Copies are independent: the gradient of the sum is each copy's own.
                        g = torch.autograd.grad(lb.sum() * weight, [delta[nm] for nm in self.names])
                        for nm, gi in zip(self.names, g):
                            grads[nm] += gi
                    loss += lb.detach() * weight
                    wrong += wb.detach().to(loss.dtype)
                self.evaluations += k
            else:
                for j in range(k):  # one copy at a time: one graph alive at a time
                    dj = {nm: d[j] for nm, d in delta.items()}
                    for i in starts:
                        xb, yb = self.x[i:i + chunk], self.y[i:i + chunk]
                        weight = xb.shape[0] / n
                        lj, wj = self._one_in_place(dj, xb, yb)
                        loss[j] += lj.detach() * weight
                        wrong[j] += wj.detach().to(loss.dtype)
                        if with_grad and not (len(starts) == 1 and exceeded(j)):
                            g = torch.autograd.grad(lj * weight, self._scratch[1])
                            for nm, gi in zip(self.names, g):
                                grads[nm][j] += gi
                    self.evaluations += 1
                    if exceeded(j):
                        break
        return (loss, wrong / n, grads) if with_grad else (loss, wrong / n)

    def value(self, delta: dict[str, torch.Tensor], criterion: str,
              copies: int | None = None) -> torch.Tensor:
        loss, err = self.evaluate(delta, copies=copies)
        return loss if criterion == "loss" else err

    def zeros(self, k: int = 1) -> dict[str, torch.Tensor]:
        return {n: torch.zeros((k, *w.shape), dtype=w.dtype, device=w.device)
                for n, w in self.base.items()}


def draw_noise(base: dict[str, torch.Tensor], sigma: float, draws: int,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``draws`` samples of U' ~ N(0, sigma^2 I) shaped like ``base``: standard deviation
    ``sigma`` (not sigma^2)."""
    return {n: sigma * torch.randn((draws, *w.shape), generator=generator, dtype=w.dtype,
                                   device=w.device)
            for n, w in base.items()}


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# -- the sigma search ------------------------------------------------------------------

def bisect(passes: Callable[[float], bool], lo: float, hi: float, depth: int) -> tuple[float, float]:
    """Narrow [lo, hi] ``depth`` times towards the largest value that ``passes`` (monotone)."""
    for _ in range(depth):
        if lo >= hi:
            break
        mid = 0.5 * (lo + hi)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def value_bounds(ev: PerturbedLoss, criterion: str) -> tuple[float, float]:
    """The range a copy's ``criterion`` can take: an error lies in [0, 1]; a loss is
    known to be >= 0 only for cross-entropy (a loss of unknown form: no bound)."""
    if criterion == "error":
        return 0.0, 1.0
    return ev.loss_floor, math.inf


def mean_deviation(ev: PerturbedLoss, noise: dict[str, torch.Tensor], criterion: str,
                   ref: float, eps: float, early_exit: bool = True) -> tuple[float, bool]:
    """(|mean_k criterion(W + noise_k) - ref|, whether it is <= eps).

    With ``early_exit`` (one copy at a time), stop as soon as the copies seen so far
    settle the comparison whatever the others give (each lies in
    :func:`value_bounds`); the deviation returned is then the bound that settled it.
    The verdict is the full mean's (a margin of 1e-5 relative guards rounding).
    """
    draws = next(iter(noise.values())).shape[0]
    floor, ceil = value_bounds(ev, criterion)
    if not early_exit or ev.batched or (floor == -math.inf and ceil == math.inf):
        dev = abs(float(ev.value(noise, criterion).mean()) - ref)
        return dev, dev <= eps
    values = []
    margin = 1e-5 * (abs(ref) + eps)
    for j in range(draws):
        values.append(ev.value({n: z[j:j + 1] for n, z in noise.items()}, criterion,
                               copies=draws))
        seen, left = float(sum(float(v) for v in values)), draws - j - 1
        low, high = (seen + left * floor) / draws, (seen + left * ceil) / draws
        if left and low - ref > eps + margin:
            return low - ref, False
        if left and ref - high > eps + margin:
            return ref - high, False
        if left and ref - low <= eps - margin and high - ref <= eps - margin:
            return max(ref - low, high - ref), True
    dev = abs(float(torch.cat(values).mean()) - ref)
    return dev, dev <= eps


def sigma_search(ev: PerturbedLoss, *, eps: float, criterion: str = "loss", lower: float = 0.0,
                 upper: float = 2.0, depth: int = 15, draws: int = 10, envelope: int = 3,
                 seed: int = 0, early_exit: bool = True) -> dict[str, Any]:
    """The largest sigma in [lower, upper] with deviation(sigma') <= eps for every probed
    sigma' <= sigma, where deviation(s) = |mean_k L(W + s Z_k) - L(W)|.

    The same standard-normal directions Z_k (k = 1..draws) are used at every probe
    (common random numbers), so deviation is a smooth, deterministic function of s
    and the bisection is a proper one. Returns ``sigma`` = the largest probe that
    passed (``lower`` if none did), the final bracket and every probe. ``early_exit``
    stops a probe once its first draws settle it (:func:`mean_deviation`): the same
    answer from fewer passes; such a probe records the bound that settled it.
    """
    device = next(iter(ev.base.values())).device
    ref = float(ev.value(ev.zeros(), criterion)[0])
    directions = draw_noise(ev.base, 1.0, draws, _generator(device, seed))
    probes: list[list[float]] = []
    cache: dict[float, bool] = {}

    def passes(s: float) -> bool:
        if s not in cache:
            noise = {n: s * z for n, z in directions.items()}  # == draw_noise(..., s, ...)
            dev, ok = mean_deviation(ev, noise, criterion, ref, eps, early_exit)
            probes.append([s, dev])
            cache[s] = ok
        return cache[s]

    lo, hi = lower, upper
    if passes(upper):
        lo = upper
    for _round in range(4):
        lo, hi = bisect(passes, lo, hi, depth)
        # The max over sigma' <= sigma: check a few smaller sigmas the bisection skipped.
        failed = [s for s in (lo * j / (envelope + 1) for j in range(1, envelope + 1))
                  if s > lower and not passes(s)]
        if not failed:
            break
        lo, hi = lower, min(failed)
    else:  # still non-monotone after every round: settle below the lowest failure seen
        lo, hi = bisect(passes, lower, hi, depth)
    return {"sigma": lo, "bracket": [lo, hi], "eps": eps, "criterion": criterion,
            "reference": ref, "draws": draws, "probes": probes,
            "evaluations": ev.evaluations}


# -- the worst-case alpha' search ------------------------------------------------------

def ascent(ev: PerturbedLoss, alpha: float, *, criterion: str = "loss", restarts: int = 3,
           steps: int = 10, step_size: float = 0.25, magnitude_eps: float = 1e-3,
           seed: int = 0, stop_above: float = math.inf, early_exit: bool = True) -> dict[str, Any]:
    """Projected sign-gradient *ascent* of the loss inside the box
    |delta| <= alpha (|w_F| + magnitude_eps), from ``restarts`` uniform random starts.

    Returns ``worst`` (the largest criterion value seen, over starts and steps) and
    ``trace`` (the largest value after each step, starting with the random start).
    ``early_exit`` skips work that cannot change whether ``worst > stop_above`` (all
    the search needs to know): after a value above ``stop_above`` the other starts and
    steps; and a start whose step left it
    where it was (a fixed point of the projected step) is not evaluated again, its
    value being final. The trace ends when every start is at its fixed point.
    One copy at a time (``ev.batched`` False), each start climbs all its steps before
    the next begins, so a probe that fails stops after the first start that rises
    (30% less work on the default suite); the starts are independent, so every
    start's values, and ``worst``, are those of climbing them side by side.
    """
    gen = _generator(next(iter(ev.base.values())).device, seed)
    radius = {n: alpha * (w.abs() + magnitude_eps) for n, w in ev.base.items()}
    delta = {n: (2 * torch.rand((restarts, *r.shape), generator=gen, dtype=r.dtype,
                                device=r.device) - 1) * r
             for n, r in radius.items()}
    groups = [list(range(restarts))] if ev.batched else [[i] for i in range(restarts)]
    traces: list[list[float]] = []
    for group in groups:
        traces.append(_climb(ev, {n: d[group] for n, d in delta.items()}, radius, steps=steps,
                             step_size=step_size, criterion=criterion, stop_above=stop_above,
                             copies=restarts, early_exit=early_exit))
        if early_exit and max(traces[-1]) > stop_above:
            break
    trace = [max(t[min(i, len(t) - 1)] for t in traces)
             for i in range(max(len(t) for t in traces))]
    return {"worst": max(trace), "trace": trace}


def _climb(ev: PerturbedLoss, delta: dict[str, torch.Tensor], radius: dict[str, torch.Tensor], *,
           steps: int, step_size: float, criterion: str, stop_above: float, copies: int,
           early_exit: bool) -> list[float]:
    """:func:`ascent` of the starts ``delta`` side by side: the largest value after each step."""
    stop = stop_above if early_exit and stop_above < math.inf else None
    current = torch.full((next(iter(delta.values())).shape[0],), -math.inf)  # latest values
    moving = torch.arange(len(current))  # starts not yet at a fixed point
    trace: list[float] = []
    for t in range(steps + 1):
        last = t == steps
        part = {n: d[moving] for n, d in delta.items()}
        loss, err, *grad = ev.evaluate(part, with_grad=not last, stop_above=stop,
                                       criterion=criterion, copies=copies)
        current[moving] = (loss if criterion == "loss" else err).detach().cpu()
        trace.append(float(current.max()))
        if (stop is not None and max(trace) > stop) or last:
            break
        step = {n: torch.maximum(torch.minimum(d + step_size * radius[n] * grad[0][n].sign(),
                                               radius[n]), -radius[n])
                for n, d in part.items()}
        if early_exit:
            still = torch.tensor([not all(torch.equal(step[n][i], part[n][i]) for n in step)
                                  for i in range(len(moving))], dtype=torch.bool)
            for n in delta:
                delta[n][moving] = step[n]
            moving = moving[still]
            if not len(moving):
                break
        else:
            for n in delta:
                delta[n][moving] = step[n]
    return trace


def alpha_search(ev: PerturbedLoss, *, eps: float, criterion: str = "loss", lower: float = 0.0,
                 upper: float = 2.0, depth: int = 10, restarts: int = 3, steps: int = 10,
                 step_size: float = 0.25, magnitude_eps: float = 1e-3,
                 seed: int = 0, early_exit: bool = True) -> dict[str, Any]:
    """The largest alpha' in [lower, upper] such that the ascent finds no perturbation
    in the magnitude-aware box raising the criterion by more than ``eps`` above its
    value at W^F. Returns ``alpha`` = the largest probe that passed (``lower`` if none).
    ``early_exit``: see :func:`ascent` (the same answer from fewer passes; a failed
    probe records the first rise above eps found, not the largest)."""
    ref = float(ev.value(ev.zeros(), criterion)[0])
    probes: list[list[float]] = []

    def passes(a: float) -> bool:
        r = ascent(ev, a, criterion=criterion, restarts=restarts, steps=steps,
                   step_size=step_size, magnitude_eps=magnitude_eps, seed=seed,
                   stop_above=ref + eps, early_exit=early_exit)
        rise = r["worst"] - ref
        probes.append([a, rise])
        return rise <= eps

    lo, hi = lower, upper
    if passes(upper):
        lo = upper
    lo, hi = bisect(passes, lo, hi, depth)
    return {"alpha": lo, "bracket": [lo, hi], "eps": eps, "criterion": criterion,
            "reference": ref, "probes": probes, "evaluations": ev.evaluations}
