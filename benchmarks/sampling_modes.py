"""The three sampling modes on a quadratic whose Hessian is known exactly (issue 11's truths
(a) and (b) for the old estimator).

    python benchmarks/sampling_modes.py

The quadratic of tests/test_sampling.py (one linear layer at its least-squares minimum,
loss 1/2 mean r^T Q r, Hessian Q (x) E[x x^T] by torch.autograd) at three input mixings;
per mixing, the truth log_vol(H^-1) and the estimate of each mode: ``exact`` (damping 1e-6,
tol 1e-6, 100 draws), ``langevin`` at its defaults (damping 0.1: another prior, so not
comparable to the truth) and ``paper`` (Algorithm 1, sigma_u 0.005, eps 1).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbench.data import DataBundle  # noqa: E402
from genbench.plugins import get_registry  # noqa: E402
from tests.test_sampling import kron_problem, truth  # noqa: E402

MODES = {"exact": {"damping": 1e-6, "tol": 1e-6, "n_samples": 100}, "langevin": {},
         "paper": {"sigma_u": 0.005, "eps": 1.0, "n_samples": 60, "batch_size": 300}}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    cls = get_registry().get("volume_estimator", "sampling").cls
    print("| mixing | truth log_vol(H^-1) | " + " | ".join(MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for mixing in (0.2, 1.0, 1.5):
        net, x, y, loss, h = kron_problem(mixing=mixing)
        data = DataBundle("toy", x, y, x[:4], y[:4], 3)
        cells = []
        for mode, params in MODES.items():
            torch.manual_seed(0)
            est = cls(cls.Params(mode=mode, **params)).estimate(copy.deepcopy(net), data,
                                                                 loss_fn=loss)
            cells.append(f"{est['log_vol_sum']:.1f}")
        print(f"| {mixing} | {truth(h, 1e-6):.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
