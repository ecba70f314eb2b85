"""What a measure receives: one trained model, its data, and memoised shared quantities.

Shared quantities (the sharpness ``sigma``, the volumes from each estimator) are
computed at most once per model and parameters, stored in the store as soon as
they exist, and reused by every measure and every later run that asks for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from genbench import keys, sharpness, taps
from genbench.data import DataBundle
from genbench.plugins import Registry
from genbench.training import evaluate, load_trained


def result_key(model_key: str, kind: str, name: str, version: str, params: dict[str, Any]) -> str:
    """The store key of a shared quantity (or volume) of one model (see :mod:`genbench.keys`)."""
    return keys.shared_key(model_key, kind, name, version, params)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as a matrix: conv kernels (C_out, C_in, k...) become (C_out, C_in*k...)."""
    return weight.reshape(weight.shape[0], -1)


class Results(Protocol):
    """Where a context finds and keeps shared quantities: the store in the driver, the
    task's record list in a worker (:mod:`genbench.tasks`)."""

    def result(self, key: str) -> dict[str, Any] | None: ...
    def put_result(self, key: str, model_key: str, kind: str, name: str, params: dict,
                   provenance: dict, **fields: Any) -> None: ...


class MeasureContext:
    """Everything :meth:`genbench.components.Measure.compute` may use.

    Attributes: ``key`` and ``hparams`` of the model, ``config`` (its resolved
    spec), ``data`` (a :class:`~genbench.data.DataBundle` on ``device``),
    ``registry``, and ``settings`` (the suite's per-estimator params under
    ``"volume"``; a measure's own params are its ``self.params``).
    """

    def __init__(self, *, key: str, hparams: dict[str, Any], config: dict[str, Any],
                 data: DataBundle, registry: Registry, store: Results | None,
                 init_state: dict[str, torch.Tensor], final_state: dict[str, torch.Tensor],
                 device: str | torch.device = "cpu", settings: dict[str, Any] | None = None):
        self.key = key
        self.hparams = hparams
        self.config = config
        self.data = data.to(device)
        self.registry = registry
        self.store = store
        self.device = torch.device(device)
        self.init_state = init_state
        self.final_state = final_state
        self.settings = settings or {}
        self._memo: dict[str, tuple[Any, list[keys.Lookup]]] = {}
        self._frames: list[list[keys.Lookup]] = []

    # -- the model and its weights -------------------------------------------------
    def build(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A fresh copy of the network in eval mode (regularizers bound to its taps),
        loaded with ``state`` (default: the final weights). Safe to perturb."""
        return load_trained(self.registry, self.config, self.data,
                            self.final_state if state is None else state, self.device)

    @cached_property
    def model(self) -> nn.Module:
        """The trained model in eval mode. Do not modify it: use :meth:`build`."""
        return self.build()

    def weight_names(self) -> list[str]:
        """State-dict names of the weight matrices measured (Linear/Conv weights, no bias)."""
        return [f"{name}.weight" for name, _ in taps.weight_layers(self.model)]

    def weights(self, initial: bool = False) -> dict[str, torch.Tensor]:
        """Per layer, the final (or initial) weight as a float64 matrix (conv reshaped)."""
        state = self.init_state if initial else self.final_state
        return {n: as_matrix(state[n].to(torch.float64)) for n in self.weight_names()}

    # -- the loss ----------------------------------------------------------------------
    @staticmethod
    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy: the loss every model was trained on."""
        return F.cross_entropy(logits, y)

    def train_loss(self, model: nn.Module | None = None) -> float:
        return evaluate(model or self.model, self.data.train_x, self.data.train_y)[0]

    def train_error(self, model: nn.Module | None = None) -> float:
        return 1.0 - evaluate(model or self.model, self.data.train_x, self.data.train_y)[1]

    # -- memoised shared quantities, each lookup recorded ------------------------------
    @contextmanager
    def recording(self) -> Iterator[list[keys.Lookup]]:
        """Collect every lookup made inside the block (nested ones included): the
        dependencies stored with the value computed there."""
        frame: list[keys.Lookup] = []
        self._frames.append(frame)
        try:
            yield frame
        finally:
            self._frames.pop()  # frames nest: the innermost closes first

    def _note(self, deps: list[keys.Lookup]) -> None:
        for frame in self._frames:
            frame.extend(d for d in deps if d not in frame)

    def memo(self, name: str, params: dict[str, Any], compute: Callable[[], Any],
             version: str = "1", kind: str = "shared",
             provenance: dict[str, Any] | None = None) -> Any:
        """Return ``compute()``, computed once per (model, name, version, params) and stored.

        The value must be JSON-serialisable. Measures that share a quantity (e.g.
        PAC-Sharpness and the PAC-S measures sharing sigma) call this with the same
        name and params. The lookup, and whatever ``compute`` itself looks up, is
        recorded as a dependency of the value being computed.
        """
        return self._lookup(keys.lookup(self.key, kind, name, version, params), compute,
                            provenance or {"name": name, "version": version})

    def _lookup(self, dep: keys.Lookup, compute: Callable[[], Any],
                provenance: dict[str, Any]) -> Any:
        rkey = dep["key"]
        if rkey not in self._memo:
            stored = self.store.result(rkey) if self.store is not None else None
            deps = (stored or {}).get("provenance", {}).get("deps", [])
            if stored is not None and keys.still_valid(self.key, deps, self.registry, self.settings):
                self._memo[rkey] = stored["data"], deps
            else:
                t0 = time.perf_counter()
                with self.recording() as deps:
                    try:
                        value = json.loads(json.dumps(compute()))  # what a later run will read back
                    except Exception as exc:  # noqa: BLE001 - remembered: every measure sharing it fails alike
                        self._memo[rkey] = exc, list(deps)
                        raise
                if self.store is not None:
                    self.store.put_result(rkey, self.key, dep["kind"], dep["name"], dep["params"],
                                          {**provenance, **({"deps": deps} if deps else {})},
                                          data=value, seconds=time.perf_counter() - t0)
                self._memo[rkey] = value, list(deps)
        value, deps = self._memo[rkey]
        self._note([dep, *deps])
        if isinstance(value, Exception):
            raise value
        return value

    def volume(self, estimator: str) -> dict[str, Any]:
        """The weight-volume estimate of this model by ``estimator`` (e.g. ``"laplace"``),
        with the suite's params for it. Keys: ``layers`` ({name: {log_vol, dim,
        vol_per_dim}}), ``log_vol_sum``, ``vol_per_dim_mean``, plus the estimator's own."""
        entry = self.registry.get("volume_estimator", estimator)
        dep = keys.volume_lookup(self.key, estimator, self.registry, self.settings)
        est = self.registry.create("volume_estimator", estimator,
                                   self.settings.get("volume", {}).get(estimator, {}))

        def compute() -> dict[str, Any]:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(int(self.key[:15], 16))
                return est.estimate(self.build(), self.data, loss_fn=self.loss_fn,
                                    device=self.device)

        return self._lookup(dep, compute, entry.provenance)

    def sigma(self, **params: Any) -> dict[str, Any]:
        """The PAC-Bayes sharpness search (:func:`genbench.sharpness.sigma_search`) with
        :class:`genbench.sharpness.SigmaParams` ``params`` (eps from the dataset when not
        given): ``{"sigma", "bracket", "eps", "probes", ...}``. Computed once per model
        and params and stored, so the three PAC measures share one search."""
        p = sharpness.resolve(sharpness.SigmaParams(**params), self.data.n_classes)
        return self._lookup(keys.search_lookup(self.key, "sigma", p), lambda: sigma_for(self, p),
                            {"name": "sigma", "version": sharpness.SIGMA_VERSION})

    def alpha(self, **params: Any) -> dict[str, Any]:
        """The worst-case sharpness search (:func:`genbench.sharpness.alpha_search`) with
        :class:`genbench.sharpness.AlphaParams` ``params``: ``{"alpha", "bracket", "eps",
        "probes", ...}``. Computed once per model and params and stored."""
        p = sharpness.resolve(sharpness.AlphaParams(**params), self.data.n_classes)
        return self._lookup(keys.search_lookup(self.key, "alpha", p), lambda: alpha_for(self, p),
                            {"name": "alpha", "version": sharpness.ALPHA_VERSION})


# -- the sharpness searches on a context's model (sharpness.py takes modules, not contexts) --
def training_subset(ctx: MeasureContext, n_samples: int | None,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of the training data (all of it when ``n_samples`` is None
    or not smaller), so every probe of a search sees the same samples."""
    x, y = ctx.data.train_x, ctx.data.train_y
    if n_samples is None or n_samples >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n_samples]
    idx = idx.sort().values.to(x.device)
    return x[idx], y[idx]


def perturbed_loss(ctx: MeasureContext, params: sharpness.SearchParams) -> sharpness.PerturbedLoss:
    """The evaluator for ``ctx``'s model (a fresh copy) with ``params``' subset and scope."""
    model = ctx.build()
    names = (ctx.weight_names() if params.perturb == "weights"
             else [n for n, p in model.named_parameters() if p.requires_grad])
    x, y = training_subset(ctx, params.n_samples, params.seed)
    return sharpness.PerturbedLoss(model, names, x, y, loss_fn=ctx.loss_fn,
                                   batched=params.batched, rows_per_pass=params.rows_per_pass)


def sigma_for(ctx: MeasureContext, params: sharpness.SigmaParams) -> dict[str, Any]:
    """:func:`genbench.sharpness.sigma_search` on ``ctx``'s model (``params`` resolved)."""
    ev = perturbed_loss(ctx, params)
    out = sharpness.sigma_search(ev, eps=params.eps, criterion=params.criterion,
                                 lower=params.lower, upper=params.upper, depth=params.depth,
                                 draws=params.draws, envelope=params.envelope, seed=params.seed)
    out["n_samples"] = int(ev.x.shape[0])
    return out


def alpha_for(ctx: MeasureContext, params: sharpness.AlphaParams) -> dict[str, Any]:
    """:func:`genbench.sharpness.alpha_search` on ``ctx``'s model (``params`` resolved)."""
    ev = perturbed_loss(ctx, params)
    out = sharpness.alpha_search(ev, eps=params.eps, criterion=params.criterion,
                                 lower=params.lower, upper=params.upper, depth=params.depth,
                                 restarts=params.restarts, steps=params.steps,
                                 step_size=params.step_size, magnitude_eps=params.magnitude_eps,
                                 seed=params.seed)
    out["n_samples"] = int(ev.x.shape[0])
    return out
