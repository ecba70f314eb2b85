"""Benchmark genbench.scoring against the plain-loop reference.

    python benchmarks/bench_scoring.py [--n 10000] [--small 100 200] [--json out.json]

Scores a random table of ``--n`` models x 8 measures under every preset with
|omega| <= 2. The table has the paper's six conditioned hyperparameters (Omega: batch
size, lr, depth, activation, weight decay, width) plus the dropout rate as the
'against' hyperparameter, paper-like levels (2*2*3*2*2*2*3 = 288 settings, so about
35 models per setting at n = 10,000), ties in the accuracy gap (rounded to 1e-4, as
accuracies on a 10,000-image test set are) and 1% failed (NaN) values in two measures.

The brute force (the plain Python loops over ordered pairs of tests/test_scoring.py,
which the tests check against this implementation to 1e-12) cannot run at n = 10,000,
so it is timed side by side with the vectorized code on the ``--small`` subsets and
its time is extrapolated to ``--n`` as t(n2) * (n / n2)^2: it visits every ordered
pair of every cell, and with a fixed number of cells that number grows exactly as n^2.
The exponent fitted between the two small sizes is printed as a check (timings of a
few seconds on a shared machine make it noisy). The script says all this in its
output, and checks that both implementations give the same scores on the subset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genbench.scoring import PRESETS, resolve_options, score_population  # noqa: E402

LEVELS = {
    "batch_size": [64, 256], "lr": [0.1, 0.03], "depth": [11, 16, 19],
    "activation": ["relu", "tanh"], "weight_decay": [0.0, 5e-4], "width": [1.0, 0.5],
    "dropout": [0.0, 0.15, 0.3],
}
CONDITION_ON = [h for h in LEVELS if h != "dropout"]
AGAINST = ["dropout"]
N_MEASURES = 8


def make_table(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hparams = {h: np.array(rng.choice(np.array(v, dtype=object), n), dtype=object) for h, v in LEVELS.items()}
    drop = hparams["dropout"].astype(float)
    loss_gap = rng.gamma(2.0, 0.3, n) * (1.0 - drop)
    acc_gap = np.round(np.clip(0.1 * loss_gap + 0.02 * rng.normal(size=n), 0, 1), 4)
    measures = {}
    for k in range(N_MEASURES):
        noise = (k + 1) * 0.25
        m = np.log1p(loss_gap) + noise * rng.normal(size=n) + 0.5 * k * drop
        if k in (2, 5):
            m[rng.random(n) < 0.01] = np.nan
        measures[f"measure_{k}"] = m
    return measures, {"loss": loss_gap, "acc": acc_gap}, hparams


def load_bruteforce():
    spec = importlib.util.spec_from_file_location("_bf_scoring", ROOT / "tests" / "test_scoring.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_fast(measures, gaps, hparams, preset, repeat):
    best, board = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        board = score_population(measures, gaps, hparams, CONDITION_ON, AGAINST, preset=preset, max_omega=2)
        best = min(best, time.perf_counter() - t0)
    return best, board


def time_brute(bf, measures, gaps, hparams, preset):
    opts = resolve_options(preset)
    hp = {h: v.tolist() for h, v in hparams.items()}
    g = gaps[opts.gap].tolist()
    t0 = time.perf_counter()
    out = {name: bf.bf_score(c.tolist(), g, hp, CONDITION_ON, AGAINST, opts, max_omega=2)
           for name, c in measures.items()}
    return time.perf_counter() - t0, out


def max_diff(board, brute, skip_mi=False):
    """Largest |difference| over every score; ``skip_mi`` for the pgdl preset, whose MI uses
    the program's value-pair tables, which the brute force here does not model (tests check
    them against a transcription of the program, ``pgdl_program``)."""
    worst = 0.0
    for name, want in brute.items():
        e = board["leaderboard"][name]
        got = {f"mi.{k}": v for k, v in e["mi"].items()}
        got.update({f"mi_min.{k}": v for k, v in e["mi_min"].items()})
        got.update({f"mi_hparam.{h}": v for h, v in e["mi_hparam"].items()})
        for key in ("kendall_tau", "granulated_kendall", "sign_error", "robust_sign_error", "sign_error_q90"):
            got[key] = e[key]
        for key, v in want.items():
            if key == "n_models" or (skip_mi and key.startswith(("mi.", "mi_min."))):
                continue
            if (v is None) != (got[key] is None):
                return math.inf
            if v is not None:
                worst = max(worst, abs(v - got[key]))
    return worst


def subset(measures, gaps, hparams, n):
    return ({k: v[:n] for k, v in measures.items()}, {k: v[:n] for k, v in gaps.items()},
            {k: v[:n] for k, v in hparams.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="models in the full table")
    ap.add_argument("--small", type=int, nargs=2, default=[100, 200], help="subset sizes for the brute force")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats of the full table (best is kept)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    print(f"genbench.scoring benchmark - python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {__import__('os').cpu_count()} CPUs")
    print(f"table: {args.n} models x {N_MEASURES} measures; condition_on = {len(CONDITION_ON)} hparams "
          f"({', '.join(CONDITION_ON)}), against = {AGAINST}; |omega| <= 2 "
          f"({1 + len(CONDITION_ON) + len(CONDITION_ON) * (len(CONDITION_ON) - 1) // 2} subsets)\n")
    measures, gaps, hparams = make_table(args.n)
    bf = load_bruteforce()
    n1, n2 = args.small
    results = {"n": args.n, "measures": N_MEASURES, "small": [n1, n2], "presets": {}}
    total = 0.0
    head = (f"{'preset':<7} {'fast n=' + str(args.n):>13} {'fast n=' + str(n2):>11} {'brute n=' + str(n1):>12} "
            f"{'brute n=' + str(n2):>12} {'fit exp':>8} {'brute n=' + str(args.n) + ' (extrap.)':>26} "
            f"{'speed-up n=' + str(args.n):>17} {'speed-up n=' + str(n2):>15} {'max |diff|':>11}")
    print(head)
    for preset in PRESETS:
        t_full, _ = time_fast(measures, gaps, hparams, preset, args.repeat)
        total += t_full
        s1, s2 = subset(measures, gaps, hparams, n1), subset(measures, gaps, hparams, n2)
        tf_small, board_small = time_fast(*s2, preset, 3)
        tb1, _ = time_brute(bf, *s1, preset)
        tb2, brute2 = time_brute(bf, *s2, preset)
        exponent = math.log(tb2 / tb1) / math.log(n2 / n1)
        tb_full = tb2 * (args.n / n2) ** 2
        diff = max_diff(board_small, brute2, skip_mi=PRESETS[preset].cells == "value_pairs")
        print(f"{preset:<7} {t_full:>12.2f}s {tf_small:>10.3f}s {tb1:>11.2f}s {tb2:>11.2f}s {exponent:>8.2f} "
              f"{tb_full:>25.0f}s {tb_full / t_full:>16.0f}x {tb2 / tf_small:>14.0f}x {diff:>11.1e}")
        results["presets"][preset] = {
            "fast_seconds": t_full, "fast_small_seconds": tf_small,
            "brute_small_seconds": [tb1, tb2], "brute_exponent": exponent,
            "brute_extrapolated_seconds": tb_full, "speedup_extrapolated": tb_full / t_full,
            "speedup_measured_small": tb2 / tf_small, "max_abs_diff_small": diff}
    results["fast_total_seconds"] = total
    results["load_average_1min"] = __import__("os").getloadavg()[0]
    print(f"\nall presets, n = {args.n}: {total:.2f} s (target < 30 s)")
    print(f"brute-force times at n = {args.n} are EXTRAPOLATED, not run: t(n={n2}) * ({args.n}/{n2})^2 "
          f"(the brute force visits every pair; 'fit exp' is the exponent measured between n = {n1} "
          f"and n = {n2}, a noisy check). 'max |diff|' is the largest absolute difference between "
          f"the two implementations over every score on the n = {n2} subset.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
