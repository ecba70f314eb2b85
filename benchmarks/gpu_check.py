"""GPU check: the default suite and a 72-model batched run on CUDA.

Run on a machine with an NVIDIA GPU: ``python benchmarks/gpu_check.py`` (a few
minutes; ``--quick`` times sequential training on 8 of the 72 models and scales).
Prints, and with ``--json`` writes:

- the default suite end to end on ``cuda`` (batched): seconds per stage and
  trained models per minute;
- 72 MNIST-1D MLPs (the default grid x seeds 0, 1, 2, the default recipe):
  batched (bmm and vmap backends) and sequential ``train_one``, side by side:
  models per minute and the batched/sequential ratio (targets: 100+ models per
  minute, 20x over sequential);
- batched == sequential on CUDA: the largest weight difference and whether every
  model stopped at the same epoch (the CPU tests cannot check the CUDA RNG path).

Exits with a clear message and status 2 where CUDA is not available.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def synced(fn, *args, **kwargs) -> tuple[Any, float]:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sequential on 8 models, scaled to 72")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run this script on a machine with an NVIDIA GPU.", file=sys.stderr)
        raise SystemExit(2)

    import genbench
    from genbench.batched import train_batched
    from genbench.plugins import get_registry
    from genbench.population import expand
    from genbench.runner import DataCache
    from genbench.suite import load_suite
    from genbench.training import train_one

    registry = get_registry()
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(f"device: {out['device']}", flush=True)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # one-off lazy imports, untimed

    # 1. the default suite end to end
    suite = load_suite("default", registry)
    DataCache(registry).get(expand(suite, registry)[0].config)  # dataset made once, untimed
    with tempfile.TemporaryDirectory() as tmp:
        result, wall = synced(genbench.run, "default", store=Path(tmp) / "s", device="cuda")
    summary = result["summary"]
    out["default_suite"] = {"seconds": wall, "models": summary["models"],
                            "trained": summary["trained"],
                            "models_per_minute": summary["trained"] / wall * 60}
    print(f"default suite: {summary['trained']} models in {wall:.1f}s end to end "
          f"({out['default_suite']['models_per_minute']:.0f} models/minute)", flush=True)

    # 2. 72 models: batched vs sequential
    suite72 = suite.model_copy(update={"seeds": [0, 1, 2]})
    specs = expand(suite72, registry)
    assert len(specs) == 72, len(specs)
    data = DataCache(registry).get(specs[0].config)
    from genbench.runner import Trainer

    groups = Trainer(registry, DataCache(registry), "cuda").groups(specs)
    timings: dict[str, float] = {}
    batched: dict[str, list] = {}
    for backend in ("bmm", "vmap"):
        res, t = synced(lambda: [r for g in groups
                                 for r in train_batched(g, data, registry, "cuda", backend)])
        batched[backend], timings[backend] = res, t
        print(f"72 models batched ({backend}, {len(groups)} groups): {t:.1f}s "
              f"({72 / t * 60:.0f} models/minute)", flush=True)
    seq_specs = specs[:8] if args.quick else specs
    seq, t_seq = synced(lambda: [train_one(s, data, registry, "cuda") for s in seq_specs])
    t_seq_72 = t_seq * 72 / len(seq_specs)
    timings["sequential"] = t_seq_72
    print(f"72 models sequential: {t_seq_72:.1f}s{' (8 timed, scaled)' if args.quick else ''} "
          f"({72 / t_seq_72 * 60:.0f} models/minute)", flush=True)
    best = min(("bmm", "vmap"), key=timings.__getitem__)
    out["population_72"] = {"seconds": timings, "best_backend": best,
                            "models_per_minute_batched": 72 / timings[best] * 60,
                            "models_per_minute_sequential": 72 / t_seq_72 * 60,
                            "batched_over_sequential": t_seq_72 / timings[best]}
    print(f"batched/sequential: {out['population_72']['batched_over_sequential']:.1f}x "
          f"({best}); targets: 100+ models/minute, 20x", flush=True)

    # 3. batched == sequential on CUDA (grouped order -> spec order)
    by_key = {s.key: r for g, rs in zip(groups, _chunks(batched[best], groups)) for s, r in zip(g, rs)}
    worst, same_epochs = 0.0, True
    for s, r in zip(seq_specs, seq):
        b = by_key[s.key]
        same_epochs &= b.metrics["epochs"] == r.metrics["epochs"]
        for k in r.final_state:
            worst = max(worst, (r.final_state[k] - b.final_state[k]).abs().max().item())
    out["equivalence"] = {"max_abs_weight_diff": worst, "same_epochs": same_epochs,
                          "models_compared": len(seq_specs)}
    print(f"batched == sequential on CUDA: max |dW| {worst:.2e}, same epochs: {same_epochs}",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _chunks(flat: list, groups: list[list]) -> list[list]:
    out, i = [], 0
    for g in groups:
        out.append(flat[i:i + len(g)])
        i += len(g)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
