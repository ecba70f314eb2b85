"""Run the CPU twin suites and tabulate what they show (docs/results-cpu-twins.md).

    python benchmarks/cpu_twins.py [--store /tmp/twins] [--suites dropout-rates noise controls]
                                   [--no-sampling] [--threads 1]

For every training condition (mean +- sd over seeds): the Laplace weight volume
recorded at the end of training (per-dimension volume, mean over layers), the
sampling-method volume of the final weights (an independent estimator), train and
test loss, the loss gap and the accuracy gap; and, per regularizer, the paired
volume change against the no-regularizer run of the same seed (how the paper picks
its weight-noise "contraction" runs). Trains only what the store lacks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import genbench
from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache
from genbench.store import Store
from genbench.suite import load_suite, short_names
from genbench.training import load_trained

from genbench_plugins.regularizers import paired_volume_change

# The paper's sigma_u = 0.1 keeps no sample on these small models (every perturbation
# moves the training loss by more than eps), so the twins use a smaller step.
SAMPLING = {"n_samples": 40, "sigma_u": 0.005, "eps": 0.05}


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def sampling_volume(reg, model_row, data) -> tuple[float | None, int, int]:
    entry = reg.get("volume_estimator", "sampling")
    est = entry.cls(entry.cls.Params(**SAMPLING))
    with Store(ARGS.store + "/" + model_row["suite"]) as st:
        _, final = st.load_weights(model_row["key"])
    model = load_trained(reg, model_row["config"], data, final)
    torch.manual_seed(0)
    try:
        out = est.estimate(model, data, loss_fn=F.cross_entropy)
    except ValueError:  # too few samples kept
        return None, 0, SAMPLING["n_samples"]
    return float(out["vol_per_dim_mean"]), int(out["kept"]), int(out["tried"])


def condition_name(hparams: dict, names: dict) -> str:
    active = [f"{names[k]}={v}" for k, v in hparams.items() if v not in (0, 0.0, False)]
    return ", ".join(active) or "none"


def tabulate(suite_name: str) -> None:
    reg = get_registry()
    suite = load_suite(suite_name, reg)
    store_dir = f"{ARGS.store}/{suite_name}"
    t0 = time.perf_counter()
    result = genbench.run(suite_name, store=store_dir)
    print(f"\n## {suite_name}: {suite.description}\n")
    print(f"run: {result['summary']} ({time.perf_counter() - t0:.0f} s this call)\n")
    keys = {s.key for s in expand(suite, reg)}
    with Store(store_dir) as st:
        models = [m for m in st.models(list(keys)) if m["status"] == "done"]
    names = short_names(suite.hyperparameters())
    cache = DataCache(reg)
    groups: dict[str, list[dict]] = defaultdict(list)
    rows = []
    order = {repr(sorted(p.items())): i for i, p in enumerate(suite.grid_points())}
    models.sort(key=lambda m: (order.get(repr(sorted(m["hparams"].items())), -1), m["seed"]))
    for m in models:
        hist = m["metrics"]["history"]
        vol = next((e["volume"] for e in reversed(hist) if "volume" in e), None)
        row = {"key": m["key"], "suite": suite_name, "config": m["config"], "hparams": m["hparams"],
               "seed": m["seed"], "volume": vol, "metrics": m["metrics"], "seconds": m["seconds"]}
        if ARGS.sampling:
            row["sampling"], row["kept"], row["tried"] = sampling_volume(reg, row, cache.get(m["config"]))
        rows.append(row)
        groups[condition_name(m["hparams"], names)].append(row)
    print("| condition | seeds | Laplace vol/dim | sampling vol/dim (kept) | train loss | test loss "
          "| loss gap | acc gap | s/model |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cond, rs in groups.items():
        lap = [r["volume"]["vol_per_dim_mean"] for r in rs if r["volume"]]
        smp = [r["sampling"] for r in rs if r.get("sampling") is not None]
        kept = f" ({sum(r['kept'] for r in rs)}/{sum(r['tried'] for r in rs)})" if ARGS.sampling else ""
        print(f"| {cond} | {len(rs)} | {fmt(lap, 4)} | {fmt(smp, 4) if ARGS.sampling else 'n/a'}{kept} "
              f"| {fmt([r['metrics']['train_loss'] for r in rs])} "
              f"| {fmt([r['metrics']['test_loss'] for r in rs])} | {fmt([r['metrics']['gap'] for r in rs])} "
              f"| {fmt([r['metrics']['acc_gap'] for r in rs])} | {statistics.mean(r['seconds'] for r in rs):.1f} |")
    varied = [k for k in suite.hyperparameters() if any(r["hparams"].get(k) for r in rows)]
    if varied:
        print("\nPaired volume change against the same seed with every regularizer off "
              "(Laplace vol/dim; contracted = smaller):\n")
        by_cond: dict[str, list[dict]] = defaultdict(list)
        for p in paired_volume_change(rows, varied):
            by_cond[condition_name(p["row"]["hparams"], names)].append(p)
        for cond, ps in by_cond.items():
            changes = [p["change"] for p in ps]
            print(f"- {cond}: change {fmt(changes, 4)}; contracted in "
                  f"{sum(p['contracted'] for p in ps)}/{len(ps)} seeds")
    print("\nLaplace volume during training (mean over seeds, by epoch):\n")
    for cond, rs in groups.items():
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            for e in r["metrics"]["history"]:
                if "volume" in e:
                    per_epoch[e["epoch"]].append(e["volume"]["vol_per_dim_mean"])
        traj = ", ".join(f"ep{ep}: {statistics.mean(v):.4f}" for ep, v in sorted(per_epoch.items()))
        print(f"- {cond}: {traj}")


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/twins")
    ap.add_argument("--suites", nargs="*", default=["dropout-rates", "noise", "controls"])
    ap.add_argument("--no-sampling", dest="sampling", action="store_false")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    ARGS = ap.parse_args()
    torch.set_num_threads(ARGS.threads)
    for name in ARGS.suites:
        tabulate(name)


ARGS: argparse.Namespace
if __name__ == "__main__":
    main()
