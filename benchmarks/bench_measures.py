"""Seconds per model for each complexity measure, and batched vs sequential sharpness searches.

Trains the suite's models into ``--store`` (reusing what is there), then, for every
model, times each measure on a fresh :class:`genbench.context.MeasureContext`
(no store, so nothing is reused between measures except what the context itself
memoises: the PAC-S measures reuse pac_sharpness's sigma, as in a real run, so
their time is the volume estimate alone). Volume estimators that are not
registered are reported as skipped.

Then times the sigma and alpha' searches with ``batched=True`` (one vmap over the
K perturbed copies) and ``batched=False`` (one copy after the other), side by side
on the same models, and checks that both give the same answer.

    python benchmarks/bench_measures.py                       # default suite, 24 models
    python benchmarks/bench_measures.py --models 4 --threads 2
    python benchmarks/bench_measures.py --device cuda         # batched vs sequential on a GPU
    python benchmarks/bench_measures.py --models 6 --early-exit-only --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genbench import context
from genbench.context import MeasureContext
from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache, _quiet, train_population
from genbench.store import Store
from genbench.suite import Suite, read_suite_toml

MEASURES = ["frobenius_distance", "parameter_norm", "spectral_norm", "path_norm",
            "sharpness_alpha", "pac_sharpness", "pac_s_laplace", "pac_s_sampling"]


def contexts(suite: Suite, store: Store, registry, n_models: int | None, device: str):
    specs = expand(suite, registry)[:n_models]
    data = DataCache(registry)
    t0 = time.perf_counter()
    counts = train_population(specs, suite, store, registry, device, _quiet, data=data)
    if counts["trained"]:
        print(f"trained {counts['trained']} models in {time.perf_counter() - t0:.1f} s")
    settings = {"volume": suite.volume}

    def make(spec):
        init, final = store.load_weights(spec.key)
        return MeasureContext(key=spec.key, hparams=spec.hparams, config=spec.config,
                              data=data.get(spec.config), registry=registry, store=None,
                              init_state=init, final_state=final, device=device,
                              settings=settings)

    return [(spec, make) for spec in specs]


def time_measures(models, registry, measure_params):
    """Seconds per model per measure; a measure failing on a model is counted (with its
    first error) and the others go on, as in a run."""
    per: dict[str, list[float]] = {m: [] for m in MEASURES}
    failed: dict[str, list[str]] = {}
    for spec, make in models:
        ctx = make(spec)
        ctx.model  # noqa: B018 - build once, outside the timings
        for name in MEASURES:
            try:
                entry = registry.get("measure", name)
                inst = entry.cls(entry.cls.Params(**measure_params.get(name, {})))
                t0 = time.perf_counter()
                inst.compute(ctx)
            except Exception as exc:  # noqa: BLE001 - e.g. a volume estimator not registered
                failed.setdefault(name, []).append(f"{type(exc).__name__}: {exc}"[:80])
                continue
            per[name].append(time.perf_counter() - t0)
    return per, failed


def time_batching(models, n: int):
    """Both modes on the same models, alternating model by model (the machine is shared:
    load drifts, so the two columns must see the same conditions)."""
    from genbench import sharpness

    rows = []
    for search, params_cls, run in (("sigma", sharpness.SigmaParams, context.sigma_for),
                                     ("alpha", sharpness.AlphaParams, context.alpha_for)):
        secs: dict[bool, list[float]] = {True: [], False: []}
        answers: dict[bool, list[float]] = {True: [], False: []}
        for spec, make in models[:n]:
            ctx = make(spec)
            for batched in (True, False):
                p = sharpness.resolve(params_cls(batched=batched), ctx.data.n_classes)
                t0 = time.perf_counter()
                out = run(ctx, p)
                secs[batched].append(time.perf_counter() - t0)
                answers[batched].append(out[search])
        for batched in (True, False):
            rows.append((search, batched, statistics.mean(secs[batched]), answers[batched]))
    return rows


def time_early_exit(models, n: int):
    """The searches with and without their early exits (same answers, fewer passes),
    alternating on the same models: seconds, perturbed-copy evaluations, answers."""
    from genbench import sharpness

    searches = (("sigma", sharpness.SigmaParams, sharpness.sigma_search,
                 ("depth", "draws", "envelope")),
                ("alpha", sharpness.AlphaParams, sharpness.alpha_search,
                 ("depth", "restarts", "steps", "step_size", "magnitude_eps")))
    rows = []
    for name, params_cls, search, own in searches:
        stats = {e: {"seconds": 0.0, "evaluations": 0, "answers": []} for e in (False, True)}
        for spec, make in models[:n]:
            ctx = make(spec)
            p = sharpness.resolve(params_cls(), ctx.data.n_classes)
            kw = {k: getattr(p, k) for k in ("eps", "criterion", "lower", "upper", "seed", *own)}
            for early in (False, True):
                ev = sharpness.perturbed_loss(ctx, p)
                t0 = time.perf_counter()
                out = search(ev, early_exit=early, **kw)
                stats[early]["seconds"] += time.perf_counter() - t0
                stats[early]["evaluations"] += out["evaluations"]
                stats[early]["answers"].append(out[name])
        same = stats[True]["answers"] == stats[False]["answers"]
        rows.append({"search": name, "models": min(n, len(models)), "same_answers": same,
                     **{f"{k}_{'early' if e else 'full'}": v for e in (False, True)
                        for k, v in stats[e].items() if k != "answers"}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--store", default=None, help="store dir (default: a temporary one)")
    ap.add_argument("--models", type=int, default=None, help="first N models of the suite")
    ap.add_argument("--batching-models", type=int, default=6,
                    help="models for the batched-vs-sequential comparison")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--early-exit-only", action="store_true",
                    help="only compare the searches with and without their early exits")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry = get_registry()
    data, _ = read_suite_toml(args.suite)
    suite = Suite(**data)
    store_dir = args.store or tempfile.mkdtemp(prefix="bench_measures_")
    with Store(Path(store_dir)) as store:
        models = contexts(suite, store, registry, args.models, args.device)
        early = time_early_exit(models, args.batching_models)
        for row in early:
            print(json.dumps(row))
        if args.json:
            Path(args.json).write_text(json.dumps({"load": os.getloadavg(), "early_exit": early},
                                                  indent=1))
        if args.early_exit_only:
            return
        per, failed = time_measures(models, registry, suite.measures)
        batching = time_batching(models, args.batching_models)
    total = sum(sum(v) for v in per.values())
    print(f"\n{len(models)} models of suite '{suite.name}', device {args.device}, "
          f"torch threads {args.threads}, store {store_dir}\n")
    print("| measure | s/model (mean) | s/model (max) | total s | share |")
    print("|---|---:|---:|---:|---:|")
    for name in MEASURES:
        v = per[name]
        note = (f" (failed on {len(failed[name])} models: {failed[name][0]})"
                if name in failed else "")
        if not v:
            print(f"| {name}{note} | | | | |")
            continue
        print(f"| {name}{note} | {statistics.mean(v):.4f} | {max(v):.4f} | {sum(v):.2f} | "
              f"{sum(v) / total:.1%} |")
    print(f"| **all** | {total / len(models):.3f} | | {total:.2f} | 100% |")
    print("\n(pac_s_* reuse pac_sharpness's sigma: their time is the volume estimate)\n")
    print("| search | batched | s/model | answers (first models) |")
    print("|---|---|---:|---|")
    for search, batched, sec, answers in batching:
        shown = ", ".join(f"{a:.5f}" for a in answers[:4])
        print(f"| {search} | {batched} | {sec:.3f} | {shown} |")
    by = {(s, b): sec for s, b, sec, _ in batching}
    for s in ("sigma", "alpha"):
        print(f"{s}: sequential / batched = {by[(s, False)] / by[(s, True)]:.2f}x")


if __name__ == "__main__":
    main()
