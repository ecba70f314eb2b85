"""Cost and behaviour of the weight-volume estimators on a suite's trained models.

Side by side in one run, per model (interleaved, median of ``--repeats``):
one training epoch of the model (its own recipe, dropout on, plus the per-epoch
train-set evaluation the trainer does), the Laplace estimator at its defaults,
and the sampling estimator at the suite's settings. Then, with ``--science``:
the measured volume by dropout rate (with and without the dropout noise in the
factors, and the paper-compatible 16x16-blocks figure) and a damping sweep.

    python benchmarks/bench_volume.py                       # default suite, trains if needed
    python benchmarks/bench_volume.py --limit 6 --science   # fewer models, plus volume tables
    python benchmarks/bench_volume.py --quick --json cost.json   # 4 models of the first architecture, 1 repeat

Prints markdown tables (docs/volume.md quotes them). ``--json PATH`` writes the cost per
model in training epochs (median over models): ``{"laplace_epochs_exact",
"laplace_epochs_mc", "sampling_epochs"}`` (Laplace exact E[G], Laplace with a one-draw
Monte-Carlo Fisher, the ``sampling`` plugin at the suite's params), plus ``models`` and
``sampling_failed`` (a failed estimate still costs its time).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from genbench.context import MeasureContext
from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache, _quiet, train_population
from genbench.store import Store
from genbench.suite import load_suite
from genbench.training import evaluate, load_trained, lr_at, make_optimizer


def one_epoch(ctx: MeasureContext, spec_config: dict, registry) -> float:
    """Seconds for one training epoch of this model, as genbench.training runs it."""
    from genbench.suite import TrainRecipe

    recipe = TrainRecipe(**spec_config["train"])
    model = load_trained(registry, spec_config, ctx.data, ctx.final_state)
    opt = make_optimizer(model.parameters(), recipe, {})
    for group in opt.param_groups:
        group["lr"] = lr_at(recipe, 0) * 1e-3  # keep the weights near W^F; cost is the same
    data = ctx.data
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(data.n_train)
    for i in range(0, data.n_train, recipe.batch_size):
        idx = perm[i:i + recipe.batch_size]
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    evaluate(model, data.train_x, data.train_y)
    return time.perf_counter() - t0


def timed_estimate(ctx: MeasureContext, cls, params: dict) -> tuple[float, dict]:
    est = cls(cls.Params(**params))
    model = ctx.build()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        out = est.estimate(model, ctx.data, loss_fn=ctx.loss_fn)
    except Exception as exc:  # noqa: BLE001 - a failed estimate is reported, and still timed
        out = {"error": f"{type(exc).__name__}: {exc}"}
    return time.perf_counter() - t0, out


def expansion_table(suite_name: str, store: str) -> None:
    """How much of the Laplace volume's rise with dropout is the factor noise: per rate, the
    mean vol/dim (and log_vol_sum) with the noise on and off, and the noise's share of the
    rise over the dropout-0 models, (on - off) / (on - base)."""
    from genbench.estimate import volume_report

    report = volume_report(store, "laplace", suite=suite_name, device="cpu")
    by_rate: dict[float, list] = {}
    for m in report["models"].values():
        off = m.get("noise_off", m)
        by_rate.setdefault(m["hparams"].get("regularizers.dropout.rate", 0.0), []).append(
            (m["vol_per_dim_mean"], off["vol_per_dim_mean"], m["log_vol_sum"], off["log_vol_sum"]))
    base = [statistics.mean(c) for c in zip(*by_rate[0.0])]
    print(f"\n### Laplace, both ways: {suite_name} ({len(report['models'])} models)\n")
    print("| dropout | models | vol/dim noise on | noise off | noise share | "
          "log_vol_sum noise on | noise off | noise share |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in sorted(by_rate):
        on, off, lon, loff = (statistics.mean(c) for c in zip(*by_rate[rate]))
        share = (on - off) / (on - base[0]) if rate else math.nan
        lshare = (lon - loff) / (lon - base[2]) if rate else math.nan
        print(f"| {rate} | {len(by_rate[rate])} | {on:.4f} | {off:.4f} | {share:.3f} | "
              f"{lon:.1f} | {loff:.1f} | {lshare:.3f} |")


def short(hp: dict) -> str:
    names = {"regularizers.dropout.rate": "drop", "model.depth": "depth", "model.width": "width",
             "train.lr": "lr"}
    return " ".join(f"{names.get(k, k)}={v}" for k, v in hp.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--store", default="/tmp/genbench-bench-volume")
    ap.add_argument("--limit", type=int, default=None, help="only the first N models")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--sampling", default="{}", help="JSON overrides for the sampling params")
    ap.add_argument("--science", action="store_true", help="also print the volume tables")
    ap.add_argument("--quick", action="store_true", help="train and time only the first "
                    "--limit (default 4) models, 1 repeat, no float32 column")
    ap.add_argument("--json", default=None, help="write the cost per model in epochs here")
    ap.add_argument("--expansion", action="store_true", help="only the noise-on/off table "
                    "of the Laplace volume by dropout rate (trains the suite if needed)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.expansion:
        return expansion_table(args.suite, args.store)
    if args.quick:
        args.limit, args.repeats = args.limit or 4, 1
    registry = get_registry()
    suite = load_suite(args.suite, registry)
    specs = expand(suite, registry)
    data = DataCache(registry)
    laplace = registry.get("volume_estimator", "laplace").cls
    sampling = registry.get("volume_estimator", "sampling").cls
    samp_params = {**suite.volume.get("sampling", {}), **json.loads(args.sampling)}
    lap_params = dict(suite.volume.get("laplace", {}))
    with Store(args.store) as st:
        t0 = time.perf_counter()
        if args.quick:  # the first architecture's models, spread over the dropout rates
            first = {k: v for k, v in specs[0].hparams.items() if not k.startswith("regularizers.")}
            specs = [s for s in specs if all(s.hparams.get(k) == v for k, v in first.items())]
            step = (len(specs) - 1) / max(args.limit - 1, 1)
            specs = [specs[round(i * step)] for i in range(min(args.limit, len(specs)))]
        trained = train_population(specs, suite, st, registry, "cpu", _quiet, data=data)
        print(f"<!-- trained {trained['trained']} models in {time.perf_counter() - t0:.0f} s; "
              f"torch threads {torch.get_num_threads()} -->")
        models = [m for m in st.models([s.key for s in specs]) if m["status"] == "done"]
        contexts = []
        for m in models[: args.limit]:
            init, final = st.load_weights(m["key"])
            contexts.append((m, MeasureContext(
                key=m["key"], hparams=m["hparams"], config=m["config"], data=data.get(m["config"]),
                registry=registry, store=None, init_state=init, final_state=final)))

    print(f"\n### Cost per model (median of {args.repeats}, seconds)\n")
    print(f"Laplace params: {json.dumps(lap_params) or '{}'} (defaults otherwise); "
          f"sampling params: {json.dumps(samp_params)}\n")
    print("| model | epoch | Laplace | Laplace/epoch | Laplace float32 Gram | Laplace MC 1 draw "
          "| sampling | kept/tried | sampling/Laplace |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {"epoch": 0.0, "laplace": 0.0, "laplace32": 0.0, "mc1": 0.0, "sampling": 0.0}
    ratios_le, ratios_sl = [], []
    epochs: list[tuple[float, float, float, bool]] = []
    results = []
    for m, ctx in contexts:
        runs = {k: [] for k in totals}
        lap_out = samp_out = None
        for _ in range(args.repeats):  # interleaved: load drifts hit every column alike
            runs["epoch"].append(one_epoch(ctx, m["config"], registry))
            t, lap_out = timed_estimate(ctx, laplace, lap_params)
            runs["laplace"].append(t)
            runs["laplace32"].append(math.nan if args.quick else timed_estimate(
                ctx, laplace, {**lap_params, "gram_dtype": "float32"})[0])
            runs["mc1"].append(timed_estimate(
                ctx, laplace, {**lap_params, "fisher": "mc", "mc_samples": 1})[0])
            t, samp_out = timed_estimate(ctx, sampling, samp_params)
            runs["sampling"].append(t)
        med = {k: statistics.median(v) for k, v in runs.items()}
        for k in totals:
            totals[k] += med[k]
        ratios_le.append(med["laplace"] / med["epoch"])
        ratios_sl.append(med["sampling"] / med["laplace"])
        epochs.append((med["laplace"] / med["epoch"], med["mc1"] / med["epoch"],
                       med["sampling"] / med["epoch"], "error" in samp_out))
        kept = (f"{samp_out['kept']}/{samp_out['tried']}" if "kept" in samp_out
                else "failed")
        print(f"| {short(m['hparams'])} | {med['epoch']:.3f} | {med['laplace']:.3f} | "
              f"{ratios_le[-1]:.2f} | {med['laplace32']:.3f} | {med['mc1']:.3f} | "
              f"{med['sampling']:.3f} | {kept} | {ratios_sl[-1]:.2f} |")
        results.append((m, ctx, lap_out, samp_out))
    ep = totals["epoch"]
    print(f"| **total** | {ep:.2f} | {totals['laplace']:.2f} | "
          f"{totals['laplace'] / ep:.2f} | {totals['laplace32']:.2f} ({totals['laplace32'] / ep:.2f} "
          f"epochs) | {totals['mc1']:.2f} ({totals['mc1'] / ep:.2f} epochs) | "
          f"{totals['sampling']:.2f} | | {totals['sampling'] / totals['laplace']:.2f} |")
    print(f"\nmedian Laplace/epoch {statistics.median(ratios_le):.2f}, "
          f"median sampling/Laplace {statistics.median(ratios_sl):.2f}")
    if args.json:
        exact, mc, samp, failed = zip(*epochs)
        cost = {"laplace_epochs_exact": statistics.median(exact),
                "laplace_epochs_mc": statistics.median(mc),
                "sampling_epochs": statistics.median(samp),
                "models": len(epochs), "sampling_failed": sum(failed)}
        with open(args.json, "w") as fh:
            json.dump(cost, fh, indent=2)
        print(f"\nwrote {args.json}: {json.dumps(cost)}")

    if not args.science:
        return
    print("\n### Volume by dropout rate (mean over models; per-dimension volume)\n")
    print("| dropout | Laplace (noise on) | Laplace (noise off) | Laplace, 16x16 block figure "
          "| sampling | sampling, 4x4 block figure | test-train loss gap |")
    print("|---|---|---|---|---|---|---|")
    by_rate: dict[float, list] = {}
    for m, ctx, lap_out, samp_out in results:
        rate = m["hparams"].get("regularizers.dropout.rate", 0.0)
        off = lap_out.get("noise_off", lap_out)  # the same estimate with the noise off
        _, blocks = timed_estimate(ctx, laplace, {**lap_params, "blocks": 16})
        _, sblocks = timed_estimate(ctx, sampling, {**samp_params, "blocks": 4})
        by_rate.setdefault(rate, []).append((
            lap_out["vol_per_dim_mean"], off["vol_per_dim_mean"], blocks["block_figure"]["mean"],
            samp_out.get("vol_per_dim_mean", math.nan),
            sblocks.get("paper_blocks", {}).get("mean", math.nan), m["metrics"]["gap"]))
    for rate in sorted(by_rate):
        cols = list(zip(*by_rate[rate]))
        print(f"| {rate} | " + " | ".join(f"{statistics.mean(c):.4f}" for c in cols) + " |")

    print("\n### Damping sweep (mean per-dimension Laplace volume; last layer's log-volume)\n")
    picks = []
    for rate in sorted(by_rate):
        for m, ctx, _, _ in results:
            if m["hparams"].get("regularizers.dropout.rate", 0.0) == rate:
                picks.append((m, ctx))
                break
    dampings = [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8]
    print("| model | " + " | ".join(f"{d:g}" for d in dampings) + " |")
    print("|---|" + "---|" * len(dampings))
    from genbench import volume as V

    for m, ctx in picks:
        model = ctx.build()
        torch.manual_seed(0)
        factors = V.kronecker_factors(model, ctx.data.train_x, ctx.data.train_y, ctx.loss_fn)
        last = list(factors)[-1]
        cells_mean, cells_last, cells_damp = [], [], []
        for d in dampings:
            prof = V.laplace_volume(factors, d)
            naive = V.laplace_volume(factors, d, null_space="damp")
            cells_mean.append(f"{prof['vol_per_dim_mean']:.4f}")
            cells_last.append(f"{prof['layers'][V.layer_key(last)]['log_vol']:.1f}")
            cells_damp.append(f"{naive['layers'][V.layer_key(last)]['log_vol']:.1f}")
        print(f"| {short(m['hparams'])}: mean vol/dim | " + " | ".join(cells_mean) + " |")
        print(f"| last layer log_vol, profiled | " + " | ".join(cells_last) + " |")
        print(f"| last layer log_vol, plain damping | " + " | ".join(cells_damp) + " |")


if __name__ == "__main__":
    main()
