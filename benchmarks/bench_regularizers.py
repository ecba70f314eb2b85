"""How much each regularizer slows training down (side by side, one process).

    python benchmarks/bench_regularizers.py [--epochs 3] [--repeats 3] [--threads 1]

Trains the same model on MNIST-1D with each regularizer for a few epochs (no volume
tracking) and prints seconds per epoch and the ratio to plain training. Runs are
interleaved (every configuration once per round) and the median over rounds is
reported, so background load hits every configuration alike. Numbers quoted in
docs/regularizers.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genbench.plugins import get_registry
from genbench.population import ModelSpec, resolve
from genbench.runner import DataCache
from genbench.training import train_one

MODELS = {
    "mlp 2x128": ({"name": "mlp", "params": {"depth": 2, "width": 128}}, "flat"),
    "mlp 2x512": ({"name": "mlp", "params": {"depth": 2, "width": 512}}, "flat"),
    "cnn-1d x0.25": ({"name": "cnn", "params": {"width": 0.25}}, "channels"),
    "cnn-1d x1": ({"name": "cnn", "params": {"width": 1.0}}, "channels"),
}
RN = {"strength": 0.5}
REGULARIZERS = {
    "none": {},
    "dropout 0.3": {"dropout": {"rate": 0.3}},
    "act-RN stats 1 refresh 1": {"activation_reverse_noise": {**RN, "stats_every": 1, "refresh_every": 1}},
    "act-RN stats 1 refresh 100": {"activation_reverse_noise": {**RN, "stats_every": 1}},
    "act-RN (default)": {"activation_reverse_noise": RN},
    "node-RN (default)": {"node_loss_reverse_noise": RN},
    "both RN (default)": {"activation_reverse_noise": RN, "node_loss_reverse_noise": RN},
    "weight noise 0.01": {"weight_noise": {"std": 0.01}},
}


def spec(model: dict, layout: str, regs: dict, epochs: int) -> ModelSpec:
    cfg = {"dataset": {"name": "mnist1d", "params": {"num_samples": 4000, "layout": layout}},
           "model": model, "train": {"batch_size": 64, "max_epochs": epochs, "lr": 0.05},
           "regularizers": regs}
    return ModelSpec(key="bench", hparams={}, seed=0, config=resolve(get_registry(), cfg)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = get_registry()
    cache = DataCache(reg)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.epochs} epochs, "
          f"median of {args.repeats} interleaved rounds")
    for name in args.models:
        model, layout = MODELS[name]
        specs = {r: spec(model, layout, regs, args.epochs) for r, regs in REGULARIZERS.items()}
        data = cache.get(specs["none"].config)
        train_one(specs["none"], data, reg)  # warm-up: lazy imports, allocator
        train_one(specs["both RN (default)"], data, reg)
        times: dict[str, list[float]] = {r: [] for r in specs}
        for _ in range(args.repeats):
            for r, s in specs.items():
                t0 = time.perf_counter()
                train_one(s, data, reg)
                times[r].append((time.perf_counter() - t0) / args.epochs)
        base = statistics.median(times["none"])
        print(f"\n{name} (n_train={data.n_train}, batch 64)")
        print(f"  {'regularizer':28s} {'s/epoch':>8s} {'x none':>7s}")
        for r, ts in times.items():
            med = statistics.median(ts)
            print(f"  {r:28s} {med:8.3f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
