"""Both volume estimators against the exact posterior volume of small trained MLPs.

    python benchmarks/volume_truth.py [--width 24] [--seeds 3] [--json out.json]

Trains a small population (MNIST-1D, 2 hidden layers of ``--width``, dropout {0, 0.15,
0.3} x ``--seeds``) to the default suite's target, then per model computes the exact
Gauss-Newton matrix G of the mean training loss over all weight matrices jointly (per
sample Jacobians by torch.func, no Kronecker or block approximation) and the truth the
``sampling`` estimator claims (science.md 1b): log_vol of each hidden layer's block of
(G + delta)^-1, delta_l = damping x tr(E[A]) tr(E[G]) / (n_A n_G) as the chain's prior.
Beside it: the ``sampling`` estimate, Laplace (defaults, and noise off), and the exact
inverse of each layer's own block (what a block-diagonal Laplace approximates).
Reports per-estimator relative error on the hidden layers' sum and Kendall's tau with
the truth across the population. The softmax output layer is left out (its gauge makes
the truth a different quantity per estimator; tests/test_volume.py covers it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbench.context import MeasureContext  # noqa: E402
from genbench.plugins import get_registry  # noqa: E402
from genbench.runner import DataCache, _quiet, run  # noqa: E402
from genbench.store import Store  # noqa: E402
from genbench.volume import kronecker_factors, log_vol, output_hessian_sqrt  # noqa: E402

SUITE = """
name = "volume-truth"
seeds = {seeds}
[dataset]
name = "mnist1d"
params = {{ num_samples = 2000 }}
[model]
name = "mlp"
params = {{ activation = "relu", depth = 2, width = {width} }}
[train]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
batch_size = 64
max_epochs = 400
stop_train_loss = 0.1
[regularizers.dropout]
rate = 0.0
[grid]
"regularizers.dropout.rate" = [0.0, 0.15, 0.3]
[measures]
parameter_norm = {{}}
"""


def exact_gauss_newton(model, x, y, names, chunk=250):
    """G = mean_s J_s^T (diag p - p p^T) J_s over the named weights, float64."""
    model = model.double().eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    weights = {n: params[n] for n in names}

    def logits(w, xs):
        return functional_call(model, {**params, **w}, (xs[None],))[0]

    dim = sum(w.numel() for w in weights.values())
    g = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        xs = x[i:i + chunk].double()
        jac = vmap(jacrev(logits), in_dims=(None, 0))(weights, xs)  # {name: (B, C, *shape)}
        j = torch.cat([jac[n].reshape(len(xs), jac[n].shape[1], -1) for n in names], 2)
        with torch.no_grad():
            z = model(xs)
        root = output_hessian_sqrt(z, y[i:i + chunk], None, True)  # (B, C, K)
        sj = torch.einsum("bck,bcp->bkp", root, j).reshape(-1, dim)
        g += sj.T @ sj
    return g / len(x)


def kronecker_projection(cov: torch.Tensor, rows: int, cols: int, iterations: int = 100):
    """The matrix-normal U (x) V closest to a (rows cols)^2 covariance in the sense the
    sampling estimator's maximum-likelihood fit converges to (flip-flop on the exact
    covariance, i.e. on infinitely many draws)."""
    c = cov.reshape(rows, cols, rows, cols)
    v = torch.eye(cols, dtype=torch.float64)
    for _ in range(iterations):
        u = torch.einsum("aibj,ji->ab", c, torch.linalg.inv(v)) / cols
        v = torch.einsum("aibj,ba->ij", c, torch.linalg.inv(u)) / rows
    return cols * log_vol(u) + rows * log_vol(v)


def truth(ctx: MeasureContext, damping: float) -> dict:
    model = ctx.build()
    names = ctx.weight_names()
    x, y = ctx.data.train_x, ctx.data.train_y
    g = exact_gauss_newton(model, x, y, names)
    factors = kronecker_factors(ctx.build(), x, y, ctx.loss_fn, fisher="exact", noise=False)
    shapes = [model.get_parameter(n).shape for n in names]
    sizes = [sh.numel() for sh in shapes]
    deltas = []
    for n, k in zip(names, sizes):
        f = factors[n.removesuffix(".weight")]
        deltas += [damping * float(torch.diagonal(f.A).mean() * torch.diagonal(f.G).mean())] * k
    cov = torch.linalg.inv(g + torch.diag(torch.tensor(deltas, dtype=torch.float64)))
    out, start = {}, 0
    for n, k, sh in zip(names[:-1], sizes[:-1], shapes[:-1]):  # hidden layers
        block = slice(start, start + k)
        out[n] = {"marginal": log_vol(cov[block, block]),
                  "kronecker": kronecker_projection(cov[block, block], sh[0], sh[1]),
                  "block_inverse": log_vol(torch.linalg.inv(
                      g[block, block] + torch.diag(torch.tensor(deltas[block], dtype=torch.float64))))}
        start += k
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--store", help="reuse or keep this store (default: a temporary one)")
    ap.add_argument("--sampling", default="{}", help="JSON params of the sampling estimator")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    t0 = time.perf_counter()
    store = Path(args.store or tempfile.mkdtemp(prefix="volume-truth-"))
    store.parent.mkdir(parents=True, exist_ok=True)
    suite_file = store.parent / f"{store.name}.toml"
    suite_file.write_text(SUITE.format(seeds=list(range(args.seeds)), width=args.width))
    run(str(suite_file), store=str(store), progress=_quiet)
    registry, cache = get_registry(), DataCache(get_registry())
    sampling = json.loads(args.sampling)
    damping = sampling.get("damping", 0.1)
    rows = []
    with Store(store) as st:
        for m in st.models():
            if m["status"] != "done":
                continue
            init, final = st.load_weights(m["key"])
            ctx = MeasureContext(key=m["key"], hparams=m["hparams"], config=m["config"],
                                 data=cache.get(m["config"]), registry=registry, store=None,
                                 init_state=init, final_state=final,
                                 settings={"volume": {"sampling": sampling}})
            exact = truth(ctx, damping)
            samp = ctx.volume("sampling")
            lap = ctx.volume("laplace")
            hidden = list(exact)
            lap_off = lap.get("noise_off", lap)
            rows.append({
                "dropout": m["hparams"].get("regularizers.dropout.rate"),
                "seed": m["seed"], "train_loss": m["metrics"]["train_loss"],
                "truth": sum(exact[n]["marginal"] for n in hidden),
                "block_inverse": sum(exact[n]["block_inverse"] for n in hidden),
                "kronecker_truth": sum(exact[n]["kronecker"] for n in hidden),
                "sampling": sum(samp["layers"][n]["log_vol"] for n in hidden),
                "sampling_ess_min": samp["ess_min"],
                "laplace": sum(lap["layers"][n]["log_vol"] for n in hidden),
                "laplace_noise_off": sum(lap_off["layers"][n]["log_vol"] for n in hidden),
            })
    est = ["kronecker_truth", "sampling", "block_inverse", "laplace_noise_off", "laplace"]
    t = [r["truth"] for r in rows]
    summary = {e: {"tau_with_truth": kendalltau(t, [r[e] for r in rows])[0],
                   "median_rel_error": sorted(abs(r[e] - r["truth"]) / abs(r["truth"])
                                              for r in rows)[len(rows) // 2]} for e in est}
    print("| dropout | seed | truth | its Kronecker projection | sampling (ESS) | block inverse "
          "| Laplace noise off | Laplace |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["dropout"], r["seed"])):
        print(f"| {r['dropout']} | {r['seed']} | {r['truth']:.1f} | {r['kronecker_truth']:.1f} "
              f"| {r['sampling']:.1f} "
              f"({r['sampling_ess_min']:.0f}) | {r['block_inverse']:.1f} | "
              f"{r['laplace_noise_off']:.1f} | {r['laplace']:.1f} |")
    k = [r["kronecker_truth"] for r in rows]
    summary["sampling"]["tau_with_kronecker_truth"] = kendalltau(k, [r["sampling"] for r in rows])[0]
    summary["sampling"]["median_rel_error_to_kronecker_truth"] = sorted(
        abs(r["sampling"] - r["kronecker_truth"]) / abs(r["kronecker_truth"]) for r in rows)[len(rows) // 2]
    for e, s in summary.items():
        print(f"{e}: tau with truth {s['tau_with_truth']:+.2f}, median |rel. error| "
              f"{100 * s['median_rel_error']:.1f}%")
    print(f"sampling against the Kronecker projection of the truth (its estimand): tau "
          f"{summary['sampling']['tau_with_kronecker_truth']:+.2f}, median |rel. error| "
          f"{100 * summary['sampling']['median_rel_error_to_kronecker_truth']:.1f}%")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"width": args.width, "sampling_params": sampling,
                                               "models": rows, "summary": summary,
                                               "machine": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
