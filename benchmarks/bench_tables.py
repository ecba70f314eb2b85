"""Benchmark `genbench score`'s table parser against the per-cell parser it replaced.

    python benchmarks/bench_tables.py [--n 50000] [--repeat 3] [--json out.json]

Writes the table of benchmarks/bench_scoring.py (``--n`` models x 8 measures, seven
hyperparameters, 1% empty cells in two measures) as a CSV, then times, side by side in
one process, ``load_population`` of genbench.tables and of benchmarks/tables_before.py
(the parser before issue 13), best of ``--repeat``; and once, the whole path of
``genbench score TABLE.csv --condition-on ... --against dropout`` in one process (read the
file, ``export.score_table``: rows, roles, unconverged filter, columns, ``score_population``
with the paper preset, |omega| <= 2; no intervals, the command's default), timed in parts.
Checks that both parsers give the same arrays. Prints the 1-minute load average (the machine
is shared; seconds scale with it) and the CPU time of the command path, which does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables_before  # noqa: E402
from bench_scoring import AGAINST, CONDITION_ON, make_table  # noqa: E402

from genbench import export, tables  # noqa: E402
from genbench.scoring import score_population  # noqa: E402


def command_path(path: Path) -> dict:
    """`genbench score` without the printing: read, then score_table (which scores)."""
    import genbench.scoring as scoring

    c0, t0 = time.process_time(), time.perf_counter()
    t = export.read_table(path)
    t1 = time.perf_counter()
    spent = {}
    inner = scoring.score_population

    def timed(*a, **k):
        s0 = time.perf_counter()
        out = inner(*a, **k)
        spent["score_population"] = time.perf_counter() - s0
        return out

    scoring.score_population = timed
    try:
        export.score_table(t, condition_on=CONDITION_ON, against=AGAINST)
    finally:
        scoring.score_population = inner
    t2, c2 = time.perf_counter(), time.process_time()
    return {"cpu_seconds": round(c2 - c0, 3), "read_table": round(t1 - t0, 3), "columns_and_checks": round(t2 - t1 - spent["score_population"], 3),
            "score_population": round(spent["score_population"], 3), "total": round(t2 - t0, 3)}


def write_csv(path: Path, n: int) -> list[str]:
    measures, gaps, hparams = make_table(n)
    cols = {**{h: hparams[h] for h in CONDITION_ON + AGAINST}, "gap": gaps["loss"],
            "acc_gap": gaps["acc"], **measures}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*cols.values()):
            w.writerow(["" if isinstance(v, float) and np.isnan(v) else v for v in row])
    return list(measures)


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pop.csv"
        write_csv(path, args.n)
        kw = dict(condition_on=CONDITION_ON, against=AGAINST)
        t_new, new = best_of(args.repeat, lambda: tables.load_population(path, **kw))
        t_old, old = best_of(args.repeat, lambda: tables_before.load_population(path, **kw))
        for part in ("measures", "gaps"):
            for k, v in getattr(old, part).items():
                np.testing.assert_array_equal(getattr(new, part)[k], v)
        for k, v in old.hparams.items():
            assert list(new.hparams[k]) == list(v), k
        t0 = time.perf_counter()
        pop = tables.load_population(path, **kw)
        score_population(pop.measures, pop.gaps, pop.hparams, condition_on=CONDITION_ON,
                         against=AGAINST, preset="paper", max_omega=2)
        t_score = time.perf_counter() - t0
        cmd = command_path(path)
        size = path.stat().st_size
    out = {"n_models": args.n, "n_measures": len(new.measures), "csv_bytes": size,
           "parse_seconds": {"new": round(t_new, 4), "before": round(t_old, 4)},
           "speedup": round(t_old / t_new, 1), "parse_and_score_seconds": round(t_score, 3),
           "command_path_seconds": cmd, "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
           "same_arrays": True, "python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine()}
    print(f"{args.n} models x {len(new.measures)} measures ({size / 1e6:.1f} MB CSV), best of {args.repeat}:")
    print(f"  parse: {t_new:.3f} s now, {t_old:.3f} s before ({out['speedup']}x); same arrays")
    print(f"  parse + score (paper preset, |omega| <= 2): {t_score:.2f} s")
    print(f"  genbench score path: {cmd['total']:.2f} s = read {cmd['read_table']:.2f} + columns/checks "
          f"{cmd['columns_and_checks']:.2f} + score_population {cmd['score_population']:.2f} "
          f"(load average {out['load_average_1min']:.1f} on {out['cpus']} CPUs); "
          f"CPU time {cmd['cpu_seconds']:.2f} s (single-threaded: the wall time of an idle core)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
