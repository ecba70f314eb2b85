"""Run the three CPU twins and regenerate docs/results-cpu-twins.md from the store with `genbench report`.

    python benchmarks/cpu_twins.py [--store /tmp/twins] [--suites dropout-rates noise controls]
                                   [--doc docs/results-cpu-twins.md] [--threads 1] [--json PATH]

One store holds every twin; each suite is run with `genbench.run` (training and measuring
only what the store lacks), then `genbench.report` writes the document from the last run of
each suite: provenance, leaderboards, figures (PNG in docs/results-cpu-twins/) and a
computed verdict for each of the paper's findings, side by side. No number in the
document is typed by hand. The equivalent shell commands::

    for s in dropout-rates noise controls; do genbench run $s --store /tmp/twins; done
    genbench report --store /tmp/twins --out report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import genbench
from genbench.report import report

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = (
    "The registry's three CPU twins of the paper's experiments (`dropout-rates`: Figure 3, "
    "`noise`: Figure 4, `controls`: Figure 6c; each suite's description and TOML in `registry/` "
    "say what it trains). This page is regenerated, numbers, figures and verdicts included, by "
    "`python benchmarks/cpu_twins.py --store /tmp/twins`, which runs each suite with "
    "`genbench.run` and then `genbench report` on the store. Nothing was tuned to agree with the "
    "paper: the regularizer strengths were set once, before the first run.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/twins")
    ap.add_argument("--suites", nargs="*", default=["dropout-rates", "noise", "controls"])
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results-cpu-twins.md"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    ap.add_argument("--json", help="write run seconds per suite and the verdicts here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seconds = {}
    for name in args.suites:
        t0 = time.perf_counter()
        genbench.run(name, store=args.store)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]} s")
    doc = Path(args.doc)
    t0 = time.perf_counter()
    result = report(args.store, out=doc.with_suffix(""), markdown=doc,
                    title="What the CPU twins show", preamble=PREAMBLE)
    seconds["report"] = round(time.perf_counter() - t0, 1)
    print(f"{result['markdown']} and {len(result['figures'])} figures ({seconds['report']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "runs": result["runs"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
