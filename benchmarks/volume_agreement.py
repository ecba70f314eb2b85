"""Do the two volume estimators rank the models of one architecture alike? (issue 11, truth d)

    python benchmarks/volume_agreement.py --store STORE [--json out.json]
           [--sampling K=V ...] [--laplace K=V ...] [--where K=V ...]

On the trained models of a store (``genbench run`` makes one), estimates every model's
volume with ``sampling`` (the store's suite settings, overridden by ``--sampling``) and
with ``laplace`` twice: at its defaults (dropout noise in the factors, damping 1e-3) and
on the chain's own target (noise off, the sampling damping), the like-for-like check of
the Kronecker approximation. Models are grouped by architecture (every hyperparameter
that is not a regularizer's) and, within each group, the script reports the spread of
the sampling estimates ((max - min) / |mean| of log_vol_sum) and Kendall's tau between
the estimators' log_vol_sum. Estimates already in the store are reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbench.estimate import volume_report  # noqa: E402


def parse(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        k, v = pair.split("=", 1)
        out[k] = json.loads(v) if v not in ("true", "false") else v == "true"
    return out


def architecture(hparams: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hparams.items())
                     if not k.startswith("regularizers.") and k != "seed")


def agreement(store: str, sampling: dict, laplace: dict, where: dict) -> dict:
    t0 = time.perf_counter()
    samp = volume_report(store, "sampling", sampling, where=where)
    damping = samp["params"].get("damping", 0.1)
    lap = volume_report(store, "laplace", laplace, where=where)
    like = volume_report(store, "laplace", {**laplace, "noise": False, "damping": damping},
                         where=where)
    groups: dict[str, list[str]] = {}
    for key, row in samp["models"].items():
        groups.setdefault(architecture(row["hparams"]), []).append(key)
    rows = []
    for arch, keys in sorted(groups.items()):
        s = [samp["models"][k]["log_vol_sum"] for k in keys]
        rows.append({
            "architecture": arch, "models": len(keys),
            "sampling_mean": statistics.fmean(s),
            "sampling_spread": (max(s) - min(s)) / abs(statistics.fmean(s)),
            "tau_vs_laplace": kendalltau(s, [lap["models"][k]["log_vol_sum"] for k in keys])[0],
            "tau_vs_laplace_same_target": kendalltau(
                s, [like["models"][k]["log_vol_sum"] for k in keys])[0],
            "laplace_same_target_mean": statistics.fmean(
                like["models"][k]["log_vol_sum"] for k in keys),
        })
    return {"store": store, "where": where, "sampling_params": samp["params"],
            "laplace_params": lap["params"], "laplace_same_target_params": like["params"],
            "groups": rows,
            "mean_tau_vs_laplace": statistics.fmean(r["tau_vs_laplace"] for r in rows),
            "mean_tau_vs_laplace_same_target": statistics.fmean(
                r["tau_vs_laplace_same_target"] for r in rows),
            "min_spread": min(r["sampling_spread"] for r in rows),
            "failed": {**samp.get("failed", {}), **lap.get("failed", {})},
            "seconds": time.perf_counter() - t0, "machine": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--sampling", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--laplace", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--where", nargs="*", default=[], metavar="K=V",
                    help="only the models with these hyperparameters (e.g. model.width=128)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    out = agreement(args.store, parse(args.sampling), parse(args.laplace), parse(args.where))
    print("| architecture | models | sampling mean log_vol_sum | spread | tau vs Laplace "
          "| tau vs Laplace (noise off, same damping) |")
    print("|---|---|---|---|---|---|")
    for r in out["groups"]:
        print(f"| {r['architecture']} | {r['models']} | {r['sampling_mean']:.0f} | "
              f"{100 * r['sampling_spread']:.1f}% | {r['tau_vs_laplace']:+.2f} | "
              f"{r['tau_vs_laplace_same_target']:+.2f} |")
    print(f"\nmean within-architecture tau: {out['mean_tau_vs_laplace']:+.3f} (Laplace "
          f"defaults), {out['mean_tau_vs_laplace_same_target']:+.3f} (same target); "
          f"failed: {len(out['failed'])}; {out['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
