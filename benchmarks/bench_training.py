"""Population training speed: batched vs sequential, FLOP/s, the default suite, executors.

Run: ``python benchmarks/bench_training.py`` (all sections, a few minutes on 2 cores)
or ``--only batched,flops,threads,suite,executors``; ``--json out.json`` keeps the numbers.
``--quick --json out.json``: only achieved vs same-shape GEMM FLOP/s, written as
``{"gemm_limit_gflops", "configs": [{"depth", "width", "models", "achieved_gflops",
"gemm_same_shape_gflops"}]}``.

Every ratio is measured side by side in one run, repeats interleaved. On a
machine shared with other processes wall-clock times swing; each measurement
also records this process's CPU time (``time.process_time``), which with one
torch thread counts only the work this process did. Both are reported.
Results and their reading: docs/performance-training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache, collect, measure_population, score_rows, train_population
from genbench.store import Store
from genbench.suite import Suite, load_suite
from genbench.training import train_one


def timed(fn, *args, **kwargs) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w, time.process_time() - c


def mlp_suite(n_models: int, depth: int, width: int, epochs: int, dropout: bool = True) -> Suite:
    """n same-architecture MNIST-1D MLPs varying dropout (or not) and lr like the default
    suite (fixed epochs, no early stop, so both paths do the same work)."""
    rates = [0.0, 0.15, 0.3] if dropout else [0.0]
    seeds = list(range(math.ceil(n_models / (2 * len(rates)))))
    s = Suite(name=f"bench-{depth}x{width}", dataset={"name": "mnist1d", "params": {}},
              model={"name": "mlp", "params": {"depth": depth, "width": width}},
              train={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 64,
                     "max_epochs": epochs, "lr_halve_every": 15},
              regularizers={"dropout": {"rate": 0.0}},
              grid={"regularizers.dropout.rate": rates, "train.lr": [0.05, 0.02]},
              seeds=seeds)
    return s


def specs_for(n_models: int, depth: int, width: int, epochs: int, registry,
              dropout: bool = True) -> list:
    """The first n models, seed-major, so every subset mixes the grid's settings."""
    specs = expand(mlp_suite(n_models, depth, width, epochs, dropout), registry)
    return sorted(specs, key=lambda s: s.seed)[:n_models]


def train_flops(depth: int, width: int, n_in: int, n_classes: int, n_train: int, n_test: int,
                batch: int, epochs: int) -> float:
    """Matrix-multiply FLOPs of training one MLP: per step forward (2 b in out), weight
    gradient (2 b in out) and input gradient (2 b in out, not for the first layer);
    a forward pass over the training set per epoch; the final train+test evaluation."""
    dims = [n_in] + [width] * depth + [n_classes]
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    first = dims[0] * dims[1]
    per_epoch = 6 * n_train * macs - 2 * n_train * first + 2 * n_train * macs
    return epochs * per_epoch + 2 * (n_train + n_test) * macs


def matmul_peak(size: int = 2048, reps: int = 5) -> float:
    """This machine's large-matmul FLOP/s (float32, current thread count, CPU time)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(reps):
        _, _, cpu = timed(torch.matmul, a, b)
        best = min(best, cpu)
    return 2 * size ** 3 / best


# -- sections -----------------------------------------------------------------------
def bench_batched(registry, sizes, archs, epochs: int, repeats: int) -> list[dict[str, Any]]:
    """Batched (bmm and vmap backends) vs sequential train_one, same specs; populations
    with dropout {0, 0.15, 0.3} (masks cost the same random numbers on both paths)
    and without."""
    from genbench.batched import train_batched

    rows = []
    data_cache = DataCache(registry)
    for dropout in (True, False):
        for depth, width in archs:
            for n in sizes:
                specs = specs_for(n, depth, width, epochs, registry, dropout)
                data = data_cache.get(specs[0].config)
                times: dict[str, list[tuple[float, float]]] = {"seq": [], "bmm": [], "vmap": []}
                for _ in range(repeats):
                    for kind in ("seq", "bmm", "vmap"):
                        if kind == "seq":
                            _, w, c = timed(lambda: [train_one(s, data, registry) for s in specs])
                        else:
                            _, w, c = timed(train_batched, specs, data, registry, "cpu", kind)
                        times[kind].append((w, c))
                med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
                       for k, v in times.items()}
                row = {"dropout": dropout, "depth": depth, "width": width, "models": n,
                       "epochs": epochs,
                       "seq_wall": med["seq"][0], "seq_cpu": med["seq"][1],
                       "bmm_wall": med["bmm"][0], "bmm_cpu": med["bmm"][1],
                       "vmap_wall": med["vmap"][0], "vmap_cpu": med["vmap"][1]}
                for k in ("bmm", "vmap"):
                    row[f"{k}_speedup_wall"] = row["seq_wall"] / row[f"{k}_wall"]
                    row[f"{k}_speedup_cpu"] = row["seq_cpu"] / row[f"{k}_cpu"]
                rows.append(row)
                label = f"{'dropout' if dropout else 'no dropout'} {depth}x{width} N={n:3d}"
                print(f"  {label}: seq {row['seq_cpu']:.2f}s cpu ({row['seq_wall']:.2f}s wall)"
                      f" | bmm x{row['bmm_speedup_cpu']:.2f} cpu "
                      f"x{row['bmm_speedup_wall']:.2f} wall | vmap x{row['vmap_speedup_cpu']:.2f} cpu "
                      f"x{row['vmap_speedup_wall']:.2f} wall", flush=True)
    return rows


def bench_flops(registry, archs, n_models: int, epochs: int) -> list[dict[str, Any]]:
    """Achieved matmul FLOP/s of batched training vs large-matmul FLOP/s, same run."""
    from genbench.batched import train_batched

    peak = matmul_peak()
    rows = []
    data_cache = DataCache(registry)
    for dropout, (depth, width) in [(d, a) for d in (True, False) for a in archs]:
        specs = specs_for(n_models, depth, width, epochs, registry, dropout)
        data = data_cache.get(specs[0].config)
        _, wall, cpu = timed(train_batched, specs, data, registry, "cpu", "bmm")
        flops = n_models * train_flops(depth, width, data.train_x.shape[1], data.n_classes,
                                       data.n_train, data.test_x.shape[0], 64, epochs)
        rows.append({"dropout": dropout, "depth": depth, "width": width, "models": n_models,
                     "epochs": epochs, "gflop": flops / 1e9, "gflops_cpu": flops / cpu / 1e9,
                     "gflops_wall": flops / wall / 1e9, "peak_gflops": peak / 1e9,
                     "fraction_cpu": flops / cpu / peak, "fraction_wall": flops / wall / peak})
        print(f"  {'dropout' if dropout else 'no dropout'} {depth}x{width} N={n_models}: "
              f"{flops / cpu / 1e9:.1f} GFLOP/s (cpu time), "
              f"{flops / wall / 1e9:.1f} wall; large matmul {peak / 1e9:.1f} -> "
              f"{rows[-1]['fraction_cpu']:.0%} of it", flush=True)
    return rows


def same_shape_gemm(depth: int, width: int, n_models: int, n_in: int = 40, n_classes: int = 10,
                    batch: int = 64, reps: int = 200) -> float:
    """FLOP/s (CPU time) of the batched matrix products of one training step, alone and
    replayed ``reps`` times: per layer the forward (b x in) @ (in x out), the input
    gradient (b x out) @ (out x in) (not for the first layer) and the weight gradient
    (in x b) @ (b x out), each for ``n_models`` models at once, as torch.bmm."""
    dims = [n_in] + [width] * depth + [n_classes]
    ops = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        x, w, g = (torch.randn(n_models, batch, a), torch.randn(n_models, a, b),
                   torch.randn(n_models, batch, b))
        ops.append((x, w))
        if i:
            ops.append((g, w.transpose(1, 2)))
        ops.append((x.transpose(1, 2), g))
    flops = sum(2 * l.shape[0] * l.shape[1] * l.shape[2] * r.shape[2] for l, r in ops)
    for l, r in ops:
        torch.bmm(l, r)
    best = math.inf
    for _ in range(3):
        c = time.process_time()
        for _ in range(reps):
            for l, r in ops:
                torch.bmm(l, r)
        best = min(best, time.process_time() - c)
    return reps * flops / best


def bench_quick(registry, archs, n_models: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Achieved FLOP/s of batched training (best of ``repeats``, CPU time) beside the
    large-matmul limit and the rate of the same products alone (:func:`same_shape_gemm`)."""
    from genbench.batched import train_batched

    limit = matmul_peak()
    configs = []
    data_cache = DataCache(registry)
    for depth, width in archs:
        specs = specs_for(n_models, depth, width, epochs, registry, dropout=True)
        data = data_cache.get(specs[0].config)
        cpu = min(timed(train_batched, specs, data, registry, "cpu", "bmm")[2]
                  for _ in range(repeats))
        flops = n_models * train_flops(depth, width, data.train_x.shape[1], data.n_classes,
                                       data.n_train, data.test_x.shape[0], 64, epochs)
        gemm = same_shape_gemm(depth, width, n_models, data.train_x.shape[1], data.n_classes)
        configs.append({"depth": depth, "width": width, "models": n_models,
                        "achieved_gflops": flops / cpu / 1e9,
                        "gemm_same_shape_gflops": gemm / 1e9,
                        "fraction_of_same_shape": flops / cpu / gemm})
        print(f"  {depth}x{width} N={n_models}: {flops / cpu / 1e9:.1f} GFLOP/s, same-shape "
              f"GEMM {gemm / 1e9:.1f} ({flops / cpu / gemm:.0%}), limit {limit / 1e9:.1f}",
              flush=True)
    return {"gemm_limit_gflops": limit / 1e9, "configs": configs}


def bench_threads(registry, n_models: int, epochs: int, repeats: int) -> list[dict[str, Any]]:
    """Sequential and batched training under 1 thread and under all usable cores (wall)."""
    from genbench.batched import train_batched

    specs = specs_for(n_models, 2, 128, epochs, registry)
    data = DataCache(registry).get(specs[0].config)
    cores = len(os.sched_getaffinity(0))
    rows = []
    before = torch.get_num_threads()
    try:
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            sample = specs[::max(1, len(specs) // 8)][:8]  # every setting of the grid
            seq = statistics.median(timed(lambda: [train_one(s, data, registry) for s in sample])[1]
                                    for _ in range(repeats)) * n_models / len(sample)
            bat = statistics.median(timed(train_batched, specs, data, registry)[1]
                                    for _ in range(repeats))
            rows.append({"threads": threads, "seq_wall_est": seq, "batched_wall": bat,
                         "loadavg": os.getloadavg()[0]})
            print(f"  {threads} thread(s): sequential {seq:.1f}s (8 models, scaled), "
                  f"batched {bat:.1f}s wall, load {rows[-1]['loadavg']:.1f}", flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


def run_stages(suite: Suite, registry, store_dir: Path, batching: bool, executor: str | None = None,
               executor_params: dict | None = None) -> dict[str, float]:
    """The stages of genbench.run, each timed (wall and CPU): train / measures / score."""
    specs = expand(suite, registry)
    data = DataCache(registry)
    out: dict[str, float] = {}
    with Store(store_dir) as st:
        quiet = lambda stage, total: (lambda d: None)  # noqa: E731
        _, out["train_wall"], out["train_cpu"] = timed(
            train_population, specs, suite, st, registry, "cpu", quiet, executor, data, batching,
            executor_params)
        _, out["measures_wall"], out["measures_cpu"] = timed(
            measure_population, specs, suite, st, registry, "cpu", quiet, data)
        rows, out["score_wall"], out["score_cpu"] = timed(
            lambda: (lambda r: (r, score_rows(r, suite)))(collect(st, suite, [s.key for s in specs], registry)))
    out["total_wall"] = sum(v for k, v in out.items() if k.endswith("_wall"))
    out["total_cpu"] = sum(v for k, v in out.items() if k.endswith("_cpu") and k != "total_wall")
    return out


def bench_suite(registry, repeats: int) -> dict[str, Any]:
    """The default suite end to end, batched vs --batching off, with stage shares."""
    suite = load_suite("default", registry)
    DataCache(registry).get(expand(suite, registry)[0].config)  # dataset generated once, untimed
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for mode in ("on", "off"):
                results[mode].append(run_stages(suite, registry, Path(tmp) / f"{mode}{r}",
                                                batching=mode == "on"))
                t = results[mode][-1]
                print(f"  batching {mode}: train {t['train_wall']:.1f}s wall "
                      f"({t['train_cpu']:.1f}s cpu), measures {t['measures_wall']:.1f}s, "
                      f"score {t['score_wall']:.1f}s", flush=True)
    med = {mode: {k: statistics.median(x[k] for x in v) for k in v[0]} for mode, v in results.items()}
    return {"median": med, "runs": results,
            "speedup_total_wall": med["off"]["total_wall"] / med["on"]["total_wall"],
            "speedup_total_cpu": med["off"]["total_cpu"] / med["on"]["total_cpu"],
            "speedup_train_wall": med["off"]["train_wall"] / med["on"]["train_wall"],
            "speedup_train_cpu": med["off"]["train_cpu"] / med["on"]["train_cpu"]}


def bench_executors(registry, repeats: int) -> dict[str, Any]:
    """The default suite's training under local, process (and ray, if installed)."""
    suite = load_suite("default", registry)
    specs = expand(suite, registry)
    DataCache(registry).get(specs[0].config)
    kinds: list[tuple[str, dict]] = [("local", {}), ("process", {})]
    ray_note = None
    tmp_dir = tempfile.TemporaryDirectory(prefix="gb-exec-")
    tmp = tmp_dir.name
    # Ray (>= 2.5x) writes an auth token to ~/.ray unless told where: keep it here.
    token = Path(tmp) / "ray_token"
    token.write_text(os.urandom(32).hex())
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray  # noqa: F401

        kinds.append(("ray", {}))
    except ImportError:
        ray_note = "ray not installed"
    times: dict[str, list[float]] = {k: [] for k, _ in kinds}
    ray_started = False
    try:
        for r in range(repeats):
            for name, params in kinds:
                if name == "ray" and not ray_started:
                    import ray

                    _, w, _ = timed(ray.init, num_cpus=len(os.sched_getaffinity(0)),
                                    include_dashboard=False, _temp_dir=os.path.join(tmp, "ray"),
                                    log_to_driver=False)
                    ray_note = f"ray.init took {w:.1f}s (not counted)"
                    ray_started = True
                with Store(Path(tmp) / f"{name}{r}") as st:
                    quiet = lambda stage, total: (lambda d: None)  # noqa: E731
                    _, w, _ = timed(train_population, specs, suite, st, registry, "cpu", quiet,
                                    name, None, True, params)
                times[name].append(w)
                print(f"  {name}: train {w:.1f}s wall", flush=True)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        tmp_dir.cleanup()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_wall": med, "runs": times, "note": ray_note,
            "vs_local": {k: med["local"] / v for k, v in med.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="batched,flops,threads,suite,executors")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see docs)")
    ap.add_argument("--sizes", default="8,24,72")
    ap.add_argument("--archs", default="1x64,2x128", help="depth x width of the MLPs")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="only the FLOP/s figures: 24 models "
                    "of each of 1x64, 1x128, 2x64, 2x128, one epoch (~1 minute on an idle core)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # the local executor keeps it
    registry = get_registry()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # torch's one-off lazy imports, untimed
    sizes = [int(s) for s in args.sizes.split(",")]
    archs = [tuple(int(v) for v in a.split("x")) for a in args.archs.split(",")]
    only = set(args.only.split(","))
    out: dict[str, Any] = {"threads": args.threads, "cores": len(os.sched_getaffinity(0)),
                           "loadavg_start": os.getloadavg(), "torch": torch.__version__}
    if args.quick:
        print("achieved vs same-shape GEMM FLOP/s of batched training:", flush=True)
        quick = [(1, 64), (1, 128), (2, 64), (2, 128)]
        out.update(bench_quick(registry, quick, 24, 1, max(1, args.repeats)))
        only = set()
    if "batched" in only:
        print("batched vs sequential (median of repeats):", flush=True)
        out["batched"] = bench_batched(registry, sizes, archs, args.epochs, args.repeats)
    if "flops" in only:
        print("achieved FLOP/s of batched training:", flush=True)
        out["flops"] = bench_flops(registry, archs, max(sizes), args.epochs)
    if "threads" in only:
        print("thread count (2x128 MLPs):", flush=True)
        out["threads_rows"] = bench_threads(registry, max(sizes), args.epochs, args.repeats)
    if "suite" in only:
        print("default suite end to end:", flush=True)
        out["suite"] = bench_suite(registry, args.repeats)
    if "executors" in only:
        print("executors on the default suite (training stage):", flush=True)
        out["executors"] = bench_executors(registry, max(1, args.repeats - 1))
    out["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
