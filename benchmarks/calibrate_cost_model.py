"""Fit the constants of genbench.catalog's run-time cost model on this machine.

    python benchmarks/calibrate_cost_model.py [--epochs 2] [--repeats 3] [--threads 1]

Times a handful of small trainings (MLPs, 1-D and 2-D CNNs, tiny VGG/AlexNet) and
Laplace volume estimates, computes each run's cost features exactly as
genbench.catalog does, fits the constants by non-negative least squares and prints
them (paste them into ``genbench.catalog.COST``) with the measured and predicted
times side by side. Each time is the minimum over ``--repeats`` runs (robust to other
jobs sharing the CPU). One torch thread by default: on a shared 2-core machine it is
both faster and far steadier than two.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from genbench import catalog
from genbench.plugins import get_registry
from genbench.population import ModelSpec, resolve
from genbench.runner import DataCache
from genbench.training import load_trained, train_one

CASES = [
    ("mnist1d", {"num_samples": 4000}, "mlp", {"depth": 2, "width": 128}, 64),
    ("mnist1d", {"num_samples": 4000}, "mlp", {"depth": 3, "width": 512}, 64),
    ("mnist1d", {"num_samples": 4000}, "mlp", {"depth": 1, "width": 64}, 256),
    ("digits", {}, "mlp", {"depth": 2, "width": 128}, 32),
    ("mnist1d", {"num_samples": 4000, "layout": "channels"}, "cnn", {"width": 0.25}, 64),
    ("mnist1d", {"num_samples": 4000, "layout": "channels"}, "cnn", {"width": 0.5}, 128),
    ("digits", {"layout": "image"}, "cnn", {"width": 0.25}, 64),
    ("digits", {"layout": "image"}, "vgg", {"depth": 11, "width": 0.125}, 64),
    ("digits", {"layout": "image"}, "alexnet", {"depth": 7, "width": 0.125}, 64),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = get_registry()
    cache = DataCache(reg)
    laplace = reg.get("volume_estimator", "laplace").cls()
    rows, times, lap_rows, lap_times = [], [], [], []
    print(f"torch threads: {torch.get_num_threads()}")
    for ds, dparams, family, mparams, batch in CASES:
        cfg = resolve(reg, {"dataset": {"name": ds, "params": dparams},
                            "model": {"name": family, "params": mparams},
                            "train": {"batch_size": batch, "max_epochs": args.epochs},
                            "regularizers": {}})[0]
        spec = ModelSpec(key="cal", hparams={}, seed=0, config=cfg)
        data = cache.get(cfg)
        shape = {"input_shape": data.input_shape, "n_classes": data.n_classes,
                 "n_train": data.n_train, "n_test": int(data.test_x.shape[0])}
        costs = catalog.model_costs(reg, cfg["model"], data.input_shape, data.n_classes)
        train_one(spec, data, reg)  # warm-up (lazy imports, kernel selection)
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = train_one(spec, data, reg)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        n, e = shape["n_train"], args.epochs
        passes = e * n + catalog.COST["eval_fraction"] * ((e + 1) * n + shape["n_test"])
        steps = e * math.ceil(n / batch)
        rows.append([steps, steps * costs["layers"], passes * costs["lin"], passes * costs["conv"]])
        model = load_trained(reg, cfg, data, res.final_state)
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            laplace.estimate(model, data, loss_fn=F.cross_entropy)
            best = min(best, time.perf_counter() - t0)
        lap_times.append(best)
        lap_rows.append([n * (shape["n_classes"] + 2) * (costs["lin"] + costs["conv"]),
                         costs["dim3"], 1.0])
        print(f"  {family:8s} {str(mparams):34s} train {times[-1]:6.2f}s  laplace {lap_times[-1]:6.2f}s")

    a, b = np.array(rows), np.array(times)
    scale = a.max(0)
    coef, _ = nnls(a / scale, b)
    coef /= scale
    la, lb = np.array(lap_rows), np.array(lap_times)
    lscale = la.max(0)
    lcoef, _ = nnls(la / lscale, lb)
    lcoef /= lscale
    fitted = dict(zip(["step", "layer", "k_lin", "k_conv"], coef))
    fitted.update(zip(["laplace_mac", "laplace_eig", "laplace_call"], lcoef))
    print("\nCOST constants:")
    for k, v in fitted.items():
        print(f"    {k!r}: {v:.3g},")
    print("\n  case                                             train meas/pred    laplace meas/pred")
    for (ds, _, family, mparams, _), row, t, lrow, lt in zip(CASES, a, b, la, lb):
        print(f"  {ds:8s} {family:8s} {str(mparams):32s} {t:6.2f} / {row @ coef:6.2f}"
              f"     {lt:6.2f} / {lrow @ lcoef:6.2f}")


if __name__ == "__main__":
    main()
