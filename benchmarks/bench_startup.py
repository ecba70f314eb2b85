"""Benchmark genbench's start-up: a rerun with nothing to do, and the light commands.

    python benchmarks/bench_startup.py [--repeat 5] [--json out.json]

Trains and measures a small suite once (tests/helpers.py's TINY_SUITE: 4 digits MLPs,
3 measures) in a temporary store, then times, as fresh processes of the real command,
best of ``--repeat``: ``genbench run SUITE --store S`` on that store (it must train and
compute nothing: checked from its ``--json``), ``genbench plugins``, ``genbench --help``,
and for scale ``python -c "import torch"``. Also says whether the rerun imported torch
(``-X importtime``). The load average is recorded before and after: the wall times of
fresh processes follow the machine's load closely.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import TINY_SUITE, write_suite  # noqa: E402

GENBENCH = [sys.executable, "-m", "genbench.cli"]  # what the `genbench` script runs


def wall(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return seconds, out


def best_of(repeat: int, cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    times = [wall(cmd, env)[0] for _ in range(repeat)]
    return {"min_s": round(min(times), 3), "median_s": round(sorted(times)[len(times) // 2], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = ap.parse_args()

    env = {**os.environ, "GENBENCH_PLUGINS": "", "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env["GENBENCH_DATA"] = str(tmp_path / "data")
        suite, store, out = write_suite(tmp_path), tmp_path / "store", tmp_path / "run.json"
        first, _ = wall([*GENBENCH, "run", str(suite), "--store", str(store), "--device", "cpu",
                         "--json", str(out)], env)
        rerun = [*GENBENCH, "run", str(suite), "--store", str(store), "--json", str(out)]
        _, probe = wall([sys.executable, "-X", "importtime", *rerun[1:]], env)
        summary = json.loads(out.read_text())["summary"]
        if summary["trained"] or summary["measures_computed"]:
            raise SystemExit(f"the rerun did work: {summary}")
        results = {
            "noop_rerun": best_of(args.repeat, rerun, env),
            "plugins": best_of(args.repeat, [*GENBENCH, "plugins"], env),
            "help": best_of(args.repeat, [*GENBENCH, "--help"], env),
            "import_torch": best_of(args.repeat, [sys.executable, "-c", "import torch"], env),
        }
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines()
                if line.startswith("import time:")}
    report = {"suite": "tests/helpers.py TINY_SUITE (4 models, 3 measures)",
              "first_run_s": round(first, 3), "repeat": args.repeat, **results,
              "rerun_imports_torch": "torch" in imported,
              "rerun_summary": {k: summary[k] for k in ("models", "trained", "reused",
                                                         "measures_computed", "measures_reused")},
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "machine": platform.machine()}
    print(f"no-op rerun: {results['noop_rerun']['min_s']:.3f} s (min of {args.repeat}; "
          f"torch imported: {report['rerun_imports_torch']}); plugins "
          f"{results['plugins']['min_s']:.3f} s; --help {results['help']['min_s']:.3f} s; "
          f"import torch alone {results['import_torch']['min_s']:.3f} s; "
          f"load average {report['loadavg_before'][0]} -> {report['loadavg_after'][0]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
