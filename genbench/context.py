"""What a measure receives: one trained model, its data, and memoised shared quantities.

Shared quantities (the sharpness ``sigma``, the volumes from each estimator) are
computed at most once per model and parameters, stored in the store as soon as
they exist, and reused by every measure and every later run that asks for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import taps
from genbench.data import DataBundle
from genbench.plugins import Registry
from genbench.population import content_key
from genbench.store import Store
from genbench.training import evaluate, load_trained


def result_key(model_key: str, kind: str, name: str, version: str, params: dict[str, Any]) -> str:
    """The store key of a shared quantity (or volume) of one model."""
    return content_key({"model": model_key, "kind": kind, "name": name, "version": version,
                        "params": params})


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as a matrix: conv kernels (C_out, C_in, k...) become (C_out, C_in*k...)."""
    return weight.reshape(weight.shape[0], -1)


class MeasureContext:
    """Everything :meth:`genbench.components.Measure.compute` may use.

    Attributes: ``key`` and ``hparams`` of the model, ``config`` (its resolved
    spec), ``data`` (a :class:`~genbench.data.DataBundle` on ``device``),
    ``registry``, and ``settings`` (the suite's per-estimator params under
    ``"volume"``; a measure's own params are its ``self.params``).
    """

    def __init__(self, *, key: str, hparams: dict[str, Any], config: dict[str, Any],
                 data: DataBundle, registry: Registry, store: Store | None,
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
        self._memo: dict[str, Any] = {}

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

    # -- memoised shared quantities --------------------------------------------------
    def memo(self, name: str, params: dict[str, Any], compute: Callable[[], Any],
             version: str = "1", kind: str = "shared",
             provenance: dict[str, Any] | None = None) -> Any:
        """Return ``compute()``, computed once per (model, name, version, params) and stored.

        The value must be JSON-serialisable. Measures that share a quantity (e.g.
        PAC-Sharpness and the PAC-S measures sharing sigma) call this with the same
        name and params.
        """
        rkey = result_key(self.key, kind, name, version, params)
        if rkey not in self._memo:
            stored = self.store.result(rkey) if self.store is not None else None
            if stored is not None:
                self._memo[rkey] = stored["data"]
            else:
                t0 = time.perf_counter()
                try:
                    value = json.loads(json.dumps(compute()))  # what a later run will read back
                except Exception as exc:  # noqa: BLE001 - remembered: every measure sharing it fails alike
                    self._memo[rkey] = exc
                    raise
                if self.store is not None:
                    self.store.put_result(rkey, self.key, kind, name, params,
                                          provenance or {"name": name, "version": version},
                                          data=value, seconds=time.perf_counter() - t0)
                self._memo[rkey] = value
        value = self._memo[rkey]
        if isinstance(value, Exception):
            raise value
        return value

    def volume(self, estimator: str) -> dict[str, Any]:
        """The weight-volume estimate of this model by ``estimator`` (e.g. ``"laplace"``),
        with the suite's params for it. Keys: ``layers`` ({name: {log_vol, dim,
        vol_per_dim}}), ``log_vol_sum``, ``vol_per_dim_mean``, plus the estimator's own."""
        entry = self.registry.get("volume_estimator", estimator)
        params = entry.cls.Params(**self.settings.get("volume", {}).get(estimator, {}))
        est = entry.cls(params)

        def compute() -> dict[str, Any]:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(int(self.key[:15], 16))
                return est.estimate(self.build(), self.data, loss_fn=self.loss_fn,
                                    device=self.device)

        return self.memo(estimator, params.identity(), compute,
                         version=str(entry.cls.version), kind="volume",
                         provenance=entry.provenance)

    def sigma(self, **params: Any) -> dict[str, Any]:
        """The PAC-Bayes sharpness search (:func:`genbench.sharpness.sigma_search`) with
        :class:`genbench.sharpness.SigmaParams` ``params`` (eps from the dataset when not
        given): ``{"sigma", "bracket", "eps", "probes", ...}``. Computed once per model
        and params and stored, so the three PAC measures share one search."""
        from genbench import sharpness

        p = sharpness.resolve(sharpness.SigmaParams(**params), self.data.n_classes)
        return self.memo("sigma", p.identity(), lambda: sharpness.sigma_for(self, p),
                         version=sharpness.SIGMA_VERSION)

    def alpha(self, **params: Any) -> dict[str, Any]:
        """The worst-case sharpness search (:func:`genbench.sharpness.alpha_search`) with
        :class:`genbench.sharpness.AlphaParams` ``params``: ``{"alpha", "bracket", "eps",
        "probes", ...}``. Computed once per model and params and stored."""
        from genbench import sharpness

        p = sharpness.resolve(sharpness.AlphaParams(**params), self.data.n_classes)
        return self.memo("alpha", p.identity(), lambda: sharpness.alpha_for(self, p),
                         version=sharpness.ALPHA_VERSION)
