"""Our Kronecker factors against curvlinops' KFAC, timed side by side (issue 16, item 4).

    python benchmarks/peer_kfac.py --store STORE [--models 6] [--repeat 3] [--json out.json]

On trained models of a store (``genbench run`` makes one), times
``genbench.volume.kronecker_factors`` (exact E[G], and the 1-draw Monte-Carlo Fisher) and
curvlinops' ``KFACLinearOperator(...).compute_kronecker_factors()`` (fisher_type "type-2",
exact, and "mc" with 1 sample; ours also with float32 Grams, as curvlinops accumulates),
interleaved, min of ``--repeat``, all with the
regularizers' noise off (curvlinops knows nothing of it), on the whole training set in
batches of 1,024, the threads torch has. curvlinops is not a dependency: install it
beside the project (``pip install curvlinops-for-pytorch``) to run this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_measures import contexts  # noqa: E402

from genbench.plugins import get_registry  # noqa: E402
from genbench.store import Store  # noqa: E402
from genbench.suite import load_suite  # noqa: E402
from genbench.volume import kronecker_factors  # noqa: E402


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from curvlinops import KFACLinearOperator

    registry = get_registry()
    suite = load_suite("default", registry)
    specs = contexts(suite, Store(args.store), registry, None, "cpu")
    step = max(1, len(specs) // args.models)
    rows = []
    for spec, make in specs[::step][:args.models]:
        ctx = make(spec)
        model, x, y = ctx.build(), ctx.data.train_x, ctx.data.train_y
        params = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        batches = [(x[i:i + 1024], y[i:i + 1024]) for i in range(0, x.shape[0], 1024)]

        def peer(fisher: str) -> None:
            KFACLinearOperator(model.eval(), nn.CrossEntropyLoss(), params, batches,
                               fisher_type=fisher, mc_samples=1, check_deterministic=False,
                               separate_weight_and_bias=True).compute_kronecker_factors()

        def ours(fisher: str, accumulate: torch.dtype = torch.float64) -> None:
            kronecker_factors(model, x, y, fisher=fisher, noise=False, batch_size=1024,
                              accumulate=accumulate)

        t = {"ours_exact": timed(lambda: ours("exact"), args.repeat),
             "curvlinops_exact": timed(lambda: peer("type-2"), args.repeat),
             "ours_mc": timed(lambda: ours("mc"), args.repeat),
             "curvlinops_mc": timed(lambda: peer("mc"), args.repeat),
             "ours_mc_float32": timed(lambda: ours("mc", torch.float32), args.repeat)}
        rows.append({"hparams": spec.hparams, **{k: round(v, 4) for k, v in t.items()}})
        print(spec.hparams, {k: f"{v:.3f} s" for k, v in t.items()}, flush=True)
    summary = {k: statistics.median(r[k] for r in rows)
               for k in ("ours_exact", "curvlinops_exact", "ours_mc", "curvlinops_mc",
                         "ours_mc_float32")}
    out = {"models": rows, "median_seconds": summary,
           "exact_peer_over_ours": summary["curvlinops_exact"] / summary["ours_exact"],
           "mc_peer_over_ours": summary["curvlinops_mc"] / summary["ours_mc"],
           "mc_peer_over_ours_float32": summary["curvlinops_mc"] / summary["ours_mc_float32"],
           "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "machine": platform.platform(), "torch": torch.__version__}
    print(json.dumps({k: v for k, v in out.items() if k != "models"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
