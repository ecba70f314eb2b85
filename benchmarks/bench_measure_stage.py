"""The measure stage of a suite on ``local`` vs ``process`` (2 workers), side by side.

Trains the suite once, then times the measure stage alone on fresh copies of that
store (models only, no stored values), alternating the executors, and checks that
both computed the same values bit for bit::

    python benchmarks/bench_measure_stage.py --suite default --repeats 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from genbench.plugins import get_registry
from genbench.population import expand
from genbench.runner import DataCache, _quiet, measure_population, train_population
from genbench.store import Store
from genbench.suite import load_suite


def models_only(trained: Path, dest: Path) -> None:
    shutil.copytree(trained, dest)
    db = sqlite3.connect(dest / "genbench.sqlite")
    db.execute("DELETE FROM results")
    db.commit()
    db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    registry = get_registry()
    suite = load_suite(args.suite, registry)
    specs = expand(suite, registry)
    root = Path(tempfile.mkdtemp(prefix="gb-measure-stage"))
    data = DataCache(registry)
    with Store(root / "trained") as st:
        train_population(specs, suite, st, registry, "cpu", _quiet, data=data)
    runs: dict[str, list[dict]] = {"local": [], "process": []}
    values: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, params in (("local", None), ("process", {"workers": args.workers, "threads": 1})):
            models_only(root / "trained", root / f"{name}{r}")
            with Store(root / f"{name}{r}") as st:
                t0 = time.perf_counter()
                counts = measure_population(specs, suite, st, registry, "cpu", _quiet, data,
                                            executor=name, executor_params=params)
                seconds = time.perf_counter() - t0
                values[name] = {(x["model_key"], x["name"]): (x["value"], x["error"])
                                for x in st.results(kind="measure")}
            runs[name].append({"seconds": round(seconds, 2), **counts})
    local = min(x["seconds"] for x in runs["local"])
    proc = min(x["seconds"] for x in runs["process"])
    out = {"suite": suite.name, "models": len(specs), "measures": len(suite.measures),
           "runs": runs, "process_over_local": round(proc / local, 3),
           "identical_values": values["local"] == values["process"]}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
