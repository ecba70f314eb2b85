"""Estimating the weight volume of a store's models: the flow around :mod:`genbench.volume`.

``volume_report`` trains what is missing, opens the store and goes through
:meth:`genbench.context.MeasureContext.volume`, so an estimate is computed once per
(model, estimator, version, params) and shared with the PAC-S measures. It lives
here, not in ``genbench.volume``, so the math imports no flow module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genbench.context import MeasureContext, result_key
from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache, _quiet, resolve_device, train_population
from genbench.store import Store
from genbench.suite import Suite, load_suite


def stored_settings(st: Store, estimator: str) -> tuple[dict[str, Any], str]:
    """The ``[volume.<estimator>]`` params of the last suite run in the store, and where
    they came from (the estimator's defaults when the store records no run)."""
    last = st.last_run()
    if last is None:
        return {}, "the estimator's defaults (the store records no run)"
    suite = Suite(**last["suite_json"])
    return dict(suite.volume.get(estimator, {})), f"suite {suite.name!r} (the store's last run)"


DIAGNOSTICS = ("mode", "kept", "tried", "ess_min", "iterations", "residual", "epochs", "damping")


def model_entry(model: dict[str, Any], est: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One model's row of the report: the estimate's figures, and its noise-off twin."""
    def figures(e: dict[str, Any]) -> dict[str, Any]:
        return {"layers": {n: {"log_vol": float(v["log_vol"]), "dim": int(v["dim"]),
                               "vol_per_dim": float(v["vol_per_dim"])}
                           for n, v in e["layers"].items()},
                "log_vol_sum": float(e["log_vol_sum"]),
                "vol_per_dim_mean": float(e["vol_per_dim_mean"])}

    row = {"hparams": model["hparams"], **figures(est), "seconds": float(seconds)}
    # How the estimate was obtained (sampling: kept/tried, ESS, the solve, its cost in passes).
    row["diagnostics"] = {k: est[k] for k in DIAGNOSTICS if k in est}
    if "noise_off" in est:
        row["noise_off"] = figures(est["noise_off"])
    return row


def volume_report(store_dir: str | Path, estimator: str, params: dict[str, Any] | None = None,
                  suite: Any = None, device: str = "cpu", registry: Any = None,
                  where: dict[str, Any] | None = None) -> dict[str, Any]:
    """Estimate the weight volume of every trained model in a store (or of a suite's
    models, training the missing ones first) with ``estimator``.

    The estimator's params are the suite's ``[volume.<estimator>]`` (with no suite named,
    those of the suite last run in the store), overridden by ``params``. Returns
    ``{"estimator", "params", "settings_from", "models": {key: {"hparams", "layers",
    "log_vol_sum", "vol_per_dim_mean", "seconds", "diagnostics"[, "noise_off"]}}}``
    (``diagnostics``: the estimate's kept/tried, ESS, iterations, residual, epochs where it
    gives them; ``seconds``: the
    cost of the estimate when it was computed; ``noise_off``: the same estimate with the
    regularizers' noise off, for a model that has one); a model whose estimate failed is
    left out of ``models`` and listed under ``"failed"``. ``where`` keeps only the models
    whose hyperparameters have those values (e.g. ``{"model.width": 128}``).
    """
    if suite is None and not (Path(store_dir) / "genbench.sqlite").exists():
        raise FileNotFoundError(f"--store {store_dir}: no genbench store there; run `genbench "
                                "run` first or name a suite")
    registry = registry or get_registry()
    entry = registry.get("volume_estimator", estimator)
    device = resolve_device(device)
    data = DataCache(registry)
    with Store(store_dir) as st:
        if suite is not None:
            s = suite if isinstance(suite, Suite) else load_suite(suite, registry)
            specs = expand(s, registry)
            train_population(specs, s, st, registry, device, _quiet, data=data)
            base, source = dict(s.volume.get(estimator, {})), f"suite {s.name!r}"
            models = st.models([sp.key for sp in specs])
        else:
            base, source = stored_settings(st, estimator)
            models = st.models()
        merged = {**base, **(params or {})}
        resolved = entry.cls.Params(**merged).identity()
        out: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for m in models:
            if m["status"] != "done" or any(m["hparams"].get(k) != v
                                            for k, v in (where or {}).items()):
                continue
            t0 = time.perf_counter()
            try:  # a damaged weights file (StoreDamage names it) fails this model only
                init, final = st.load_weights(m["key"])
                ctx = MeasureContext(key=m["key"], hparams=m["hparams"], config=m["config"],
                                     data=data.get(m["config"]), registry=registry, store=st,
                                     init_state=init, final_state=final, device=device,
                                     settings={"volume": {estimator: merged}})
                est = ctx.volume(estimator)
            except Exception as exc:  # noqa: BLE001 - one model's failure is reported, not fatal
                failed[m["key"]] = f"{type(exc).__name__}: {exc}"
                continue
            rkey = result_key(m["key"], "volume", estimator, str(entry.cls.version), resolved)
            stored = st.result(rkey)
            seconds = (stored["seconds"] if stored is not None and stored["seconds"] is not None
                       else time.perf_counter() - t0)
            out[m["key"]] = model_entry(m, est, seconds)
    report: dict[str, Any] = {"estimator": estimator, "params": resolved,
                              "settings_from": source, "models": out}
    if failed:
        report["failed"] = failed
    return report
