"""The registry's suites at a glance: size, dataset and an estimated run time here.

``list_suites()`` feeds ``genbench suites``. The run-time estimate is a simple cost
model, calibrated on this 2-core CPU by ``benchmarks/calibrate_cost_model.py`` (the
constants and how well they predict are in docs/models-and-data.md):

    training  = steps * (step + layers * layer) + samples * (linear MACs * k_lin
                + conv MACs * k_conv) * (1 pass per epoch + 1/3 per evaluation pass)
    tracking  = calls * (laplace_mac * n_train * (classes + 2) * MACs
                + laplace_eig * sum over layers of (fan_in^3 + fan_out^3) + laplace_call)

MACs are counted per sample by running the model once on PyTorch's ``meta`` device
(no memory, no arithmetic). Early stopping is ignored, so the training part is an
upper bound when a suite has ``stop_train_loss``/``stop_train_acc``; measures are not
included. GPU-scale suites get the same (very large) CPU estimate: it says how far
out of reach they are here. Nothing here trains anything.
"""

from __future__ import annotations

import math
from typing import Any

from genbench.plugins import Registry, get_registry
from genbench.suite import Suite, SuiteError, available_suites, load_suite

# Fitted by benchmarks/calibrate_cost_model.py here (1 torch thread, minimum of 3 runs,
# 2 shared CPU cores; see docs/models-and-data.md for measured against predicted).
COST = {
    "step": 1.4e-3,          # s per optimizer step (fixed overhead)
    "layer": 0.0,            # s per weight layer per step (fitted to 0: absorbed by "step")
    "k_lin": 1.2e-10,        # s per linear multiply-accumulate in a training pass (fwd+bwd)
    "k_conv": 4.5e-10,       # s per convolution multiply-accumulate in a training pass
    "eval_fraction": 1 / 3,  # an evaluation (forward) pass relative to a training pass
    "laplace_mac": 1.4e-10,  # s per MAC x sample x (classes + 2) of one Laplace estimate
    "laplace_eig": 5e-11,    # s per dim^3 of the factor decompositions: a float64 Cholesky
                             # (dim^3 / 3 flops) at ~7 GFLOP/s; the fit cannot identify it (0)
    "laplace_call": 0.18,    # s fixed per Laplace estimate
}


def _dataset_shape(suite: Suite, registry: Registry) -> dict[str, Any]:
    entry = registry.get("dataset", suite.dataset.name)
    inst = entry.cls(entry.cls.Params(**suite.dataset.params))
    if hasattr(inst, "shape"):
        return inst.shape()
    data = inst.load()  # a third-party dataset without shape(): load it once
    return {"input_shape": data.input_shape, "n_classes": data.n_classes,
            "n_train": data.n_train, "n_test": int(data.test_x.shape[0])}


def model_costs(registry: Registry, model: dict[str, Any], input_shape: tuple[int, ...],
                n_classes: int) -> dict[str, float]:
    """Per-sample multiply-accumulates of a model (linear, conv), its weight layers and the
    cube sums of its Kronecker factor sizes; built on the meta device (free)."""
    import torch
    from torch import nn

    family = registry.get("model", model["name"]).cls
    counts = {"lin": 0.0, "conv": 0.0, "layers": 0, "dim3": 0.0}

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        per_out = mod.weight[0].numel()  # MACs per output element
        kind = "lin" if isinstance(mod, nn.Linear) else "conv"
        counts[kind] += out[0].numel() * per_out
        counts["layers"] += 1
        counts["dim3"] += float(per_out) ** 3 + float(mod.weight.shape[0]) ** 3

    with torch.device("meta"):
        net = family(family.Params(**model["params"])).build(tuple(input_shape), n_classes)
        net.eval()
        for mod in net.modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                mod.register_forward_hook(hook)
        with torch.no_grad():
            net(torch.empty(1, *input_shape))
    return counts


def spec_seconds(config: dict[str, Any], shape: dict[str, Any], costs: dict[str, float],
                 cost: dict[str, float] = COST) -> float:
    """Estimated seconds to train one model (and track its volume) on this CPU."""
    train = config["train"]
    epochs, batch = train["max_epochs"], train["batch_size"]
    n, n_test = shape["n_train"], shape["n_test"]
    per_sample = costs["lin"] * cost["k_lin"] + costs["conv"] * cost["k_conv"]
    steps = epochs * math.ceil(n / batch)
    seconds = steps * (cost["step"] + costs["layers"] * cost["layer"])
    seconds += per_sample * (epochs * n + cost["eval_fraction"] * ((epochs + 1) * n + n_test))
    tv = train.get("track_volume")
    if tv:
        calls = epochs // tv.get("every", 1)
        macs = costs["lin"] + costs["conv"]
        if tv.get("estimator") == "sampling":
            # each sample: a perturbation + `epochs` epochs of fine-tuning, + loss evaluations
            n_samples = tv.get("params", {}).get("n_samples", 8)
            one = per_sample * n * (1 + 2 * cost["eval_fraction"]) \
                + math.ceil(n / 64) * (cost["step"] + costs["layers"] * cost["layer"])
            seconds += calls * n_samples * one
        else:
            seconds += calls * (cost["laplace_mac"] * n * (shape["n_classes"] + 2) * macs
                                + cost["laplace_eig"] * costs["dim3"] + cost["laplace_call"])
    return seconds


def estimate_seconds(suite: Suite, registry: Registry, specs: list[Any] | None = None) -> float:
    """Sum of :func:`spec_seconds` over the suite's distinct models."""
    from genbench.population import expand

    specs = specs if specs is not None else expand(suite, registry)
    shape = _dataset_shape(suite, registry)
    seen: set[str] = set()
    cache: dict[str, dict[str, float]] = {}
    total = 0.0
    for spec in specs:
        if spec.key in seen:
            continue
        seen.add(spec.key)
        cfg = spec.config
        mkey = repr(sorted(cfg["model"]["params"].items())) + cfg["model"]["name"] \
            + repr(sorted(cfg["regularizers"].get("batch_norm", {}).items()))
        if mkey not in cache:
            model = {"name": cfg["model"]["name"], "params": dict(cfg["model"]["params"])}
            for name, params in cfg["regularizers"].items():
                entry = registry.get("regularizer", name)
                model["params"].update(entry.cls(entry.cls.Params(**params)).model_overrides())
            cache[mkey] = model_costs(registry, model, shape["input_shape"], shape["n_classes"])
        total += spec_seconds(cfg, shape, cache[mkey])
    return total


def list_suites(registry: Registry | None = None) -> list[dict[str, Any]]:
    """One row per registry suite: name, description, models (distinct, via
    :func:`genbench.population.expand`), est_seconds (this CPU, see the module doc),
    dataset. A suite that does not validate gets ``models=None`` and an ``error``."""
    from genbench.population import expand

    registry = registry or get_registry()
    rows = []
    for name in available_suites():
        row: dict[str, Any] = {"name": name, "description": "", "models": None,
                               "est_seconds": None, "dataset": None}
        try:
            suite = load_suite(name, registry)
        except SuiteError as exc:
            row["error"] = str(exc).splitlines()[0]
            rows.append(row)
            continue
        row.update(description=suite.description, dataset=suite.dataset.name)
        specs = expand(suite, registry)
        row["models"] = len({s.key for s in specs})
        try:
            row["est_seconds"] = round(estimate_seconds(suite, registry, specs), 1)
        except Exception as exc:  # noqa: BLE001 - an estimate is optional, the listing is not
            row["estimate_error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
