"""GPU check: the CUDA path end to end, models per minute, batched vs sequential, memory.

One call on a machine with an NVIDIA GPU: ``python benchmarks/gpu_check.py --json out.json``
(a few minutes). Prints, and with ``--json`` writes:

- ``suites``: the default suite (24 MNIST-1D MLPs, all eight measures) and a small
  1-D CNN suite (12 CNNs, norms + sharpness + Laplace), each end to end through
  ``genbench.run`` on the device: wall seconds, the run's ``stage_seconds`` where it
  reports them, models trained and measured per minute, peak GPU memory;
- ``population``: 72 MNIST-1D MLPs (the default grid x seeds 0, 1, 2) trained batched
  (bmm and vmap) and sequentially (``--quick``: 8 sequential, scaled), side by side:
  models per minute and the batched/sequential ratio (goals: >= 1,000 MLPs trained
  and measured per minute, batched >= 20x sequential);
- ``equivalence``: batched == sequential on the device (largest weight difference,
  same stopping epochs), which the CPU tests cannot check for the CUDA RNG path.

``--device cpu --dry-run`` runs the same code on a few tiny models on the CPU (seconds
to a minute), so the script is checked where no GPU is lent. Without CUDA and without
``--device cpu`` it exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CNN_SUITE = {
    "name": "gpu-check-cnn", "seeds": [0, 1],
    "dataset": {"name": "mnist1d", "params": {"num_samples": 4000, "layout": "channels"}},
    "model": {"name": "cnn", "params": {"width": 0.25, "activation": "relu"}},
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 64,
              "max_epochs": 30, "lr_halve_every": 10, "stop_train_loss": 0.05},
    "regularizers": {"dropout": {"rate": 0.0}},
    "grid": {"regularizers.dropout.rate": [0.0, 0.15, 0.3], "train.lr": [0.05, 0.02]},
    "measures": {"frobenius_distance": {}, "spectral_norm": {}, "path_norm": {},
                 "sharpness_alpha": {}, "pac_sharpness": {}, "pac_s_laplace": {}},
    "scoring": {"preset": "paper"},
}


class Device:
    """Timing and memory on ``name`` (CUDA: synchronised, peak memory; CPU: wall only)."""

    def __init__(self, name: str):
        import torch

        self.torch, self.name = torch, name
        self.cuda = torch.device(name).type == "cuda"

    def timed(self, fn, *args, **kwargs) -> tuple[Any, float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            self.torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2 ** 30 if self.cuda else None


def shrink(suite, dry_run: bool):
    """The dry run: 4 models, 1 epoch, 400 samples, cheap search settings."""
    if not dry_run:
        return suite
    grid = {k: v[:2] if i < 2 else v[:1] for i, (k, v) in enumerate(suite.grid.items())}
    dataset = suite.dataset.model_copy(update={"params": {**suite.dataset.params,
                                                          "num_samples": 400}})
    fast = {"depth": 4, "n_samples": 64}
    measures = {m: ({**p, **fast} if m in ("sharpness_alpha", "pac_sharpness",
                                            "pac_s_laplace", "pac_s_sampling") else p)
                for m, p in suite.measures.items()}
    return suite.model_copy(update={
        "grid": grid, "dataset": dataset, "measures": measures, "seeds": [0],
        "train": suite.train.model_copy(update={"max_epochs": 1})})


def run_suite(dev: Device, suite, label: str) -> dict[str, Any]:
    import genbench

    with tempfile.TemporaryDirectory() as tmp:
        result, wall = dev.timed(genbench.run, suite, store=Path(tmp) / "s", device=dev.name)
    s = result["summary"]
    row = {"suite": label, "wall_seconds": wall, "models": s["models"], "trained": s["trained"],
           "measures_computed": s["measures_computed"], "stage_seconds": s.get("stage_seconds"),
           "models_trained_and_measured_per_minute": s["models"] / wall * 60,
           "peak_gpu_gib": dev.peak_gib()}
    print(f"{label}: {s['models']} models trained and measured in {wall:.1f} s "
          f"({row['models_trained_and_measured_per_minute']:.0f}/minute), "
          f"stages {row['stage_seconds']}, peak GPU {row['peak_gpu_gib']}", flush=True)
    return row


def population(dev: Device, suite, registry, quick: bool, dry_run: bool) -> dict[str, Any]:
    from genbench.batched import group_key, train_batched
    from genbench.population import expand
    from genbench.runner import DataCache
    from genbench.training import train_one

    specs = expand(suite.model_copy(update={"seeds": [0] if dry_run else [0, 1, 2]}), registry)
    data = DataCache(registry).get(specs[0].config)
    groups: dict[Any, list] = {}
    for s in specs:  # a spec that cannot be stacked (key None) trains alone
        groups.setdefault(group_key(s, registry) or s.key, []).append(s)
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    for backend in ("bmm", "vmap"):
        res, t = dev.timed(lambda: [r for g in groups.values()
                                    for r in train_batched(g, data, registry, dev.name, backend)])
        keys = [s.key for g in groups.values() for s in g]
        results[backend], timings[backend] = dict(zip(keys, res)), t
        print(f"{len(specs)} models batched ({backend}, {len(groups)} groups): {t:.1f} s "
              f"({len(specs) / t * 60:.0f} trained/minute)", flush=True)
    seq_specs = specs[:8] if quick else specs
    seq, t_seq = dev.timed(lambda: [train_one(s, data, registry, dev.name) for s in seq_specs])
    timings["sequential"] = t_seq * len(specs) / len(seq_specs)
    best = min(("bmm", "vmap"), key=timings.__getitem__)
    out = {"models": len(specs), "seconds": timings, "best_backend": best,
           "trained_per_minute_batched": len(specs) / timings[best] * 60,
           "trained_per_minute_sequential": len(specs) / timings["sequential"] * 60,
           "batched_over_sequential": timings["sequential"] / timings[best],
           "peak_gpu_gib": dev.peak_gib()}
    print(f"sequential: {timings['sequential']:.1f} s{' (8 timed, scaled)' if quick else ''}; "
          f"batched/sequential {out['batched_over_sequential']:.1f}x ({best})", flush=True)
    worst, same_epochs = 0.0, True
    for s, r in zip(seq_specs, seq):
        b = results[best][s.key]
        same_epochs &= b.metrics["epochs"] == r.metrics["epochs"]
        for k in r.final_state:
            worst = max(worst, (r.final_state[k] - b.final_state[k]).abs().max().item())
    out["equivalence"] = {"max_abs_weight_diff": worst, "same_epochs": same_epochs,
                          "models_compared": len(seq_specs)}
    print(f"batched == sequential: max |dW| {worst:.2e}, same epochs: {same_epochs}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny models, to check the script")
    ap.add_argument("--quick", action="store_true", help="time sequential on 8 models, scaled")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on "
              "a machine with an NVIDIA GPU, or check the script with --device cpu --dry-run.",
              file=sys.stderr)
        raise SystemExit(2)

    from genbench.plugins import get_registry
    from genbench.suite import Suite, load_suite

    registry = get_registry()
    dev = Device(args.device)
    out: dict[str, Any] = {"device": (torch.cuda.get_device_name(torch.device(args.device))
                                      if dev.cuda else "cpu"),
                           "torch": torch.__version__, "dry_run": args.dry_run}
    print(f"device: {out['device']}", flush=True)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # one-off lazy imports, untimed
    default = shrink(load_suite("default", registry), args.dry_run)
    cnn = shrink(Suite(**CNN_SUITE), args.dry_run)
    out["suites"] = [run_suite(dev, default, "default"), run_suite(dev, cnn, "cnn")]
    out["population"] = population(dev, default, registry, args.quick, args.dry_run)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
