"""The params and versions of the two sharpness searches, without torch.

They enter content keys and the measures' Params, which the registry and a rerun's
"is this value still valid" check read; :mod:`genbench.sharpness` (the searches
themselves, with torch) imports them from here.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, model_validator

from genbench.components import Params

SIGMA_VERSION = "1"
ALPHA_VERSION = "1"


def default_eps(n_classes: int) -> float:
    """science.md: eps = 0.05 for CIFAR-10/SVHN-like tasks, 0.1 for CIFAR-100/ImageNet-32-like.
    We read "-like" as the number of classes: 100 or more classes -> 0.1, else 0.05
    (so MNIST-1D and digits, 10 classes each, get 0.05)."""
    return 0.1 if n_classes >= 100 else 0.05


class SearchParams(Params):
    """What both searches share. ``eps=None`` picks :func:`default_eps` from the dataset."""

    EXECUTION_ONLY = frozenset({"batched", "rows_per_pass"})  # same numbers either way

    eps: float | None = Field(None, gt=0, description="allowed rise of the training loss "
                              "(or error); None: 0.05 below 100 classes, 0.1 from 100 classes")
    criterion: Literal["loss", "error"] = Field(
        "loss", description="what eps bounds: mean training cross-entropy or training error")
    lower: float = Field(0.0, ge=0, description="lower end of the binary search")
    upper: float = Field(2.0, gt=0, description="upper end of the binary search")
    n_samples: int | None = Field(
        1024, ge=1, description="training samples the loss is estimated on (a fixed random "
        "subset drawn with `seed`); None = the whole training set")
    perturb: Literal["weights", "all"] = Field(
        "weights", description="perturb the measured weight matrices only (the parameters the "
        "KL term sums over), or every parameter (biases, BatchNorm affine too)")
    batched: bool = Field(False, description="evaluate the K perturbed copies in one vmap "
                          "(True) or one after the other (False, faster on CPU: see "
                          "docs/measures.md); same numbers")
    rows_per_pass: int = Field(65536, ge=1, description="copies x samples per forward pass "
                               "(memory bound for big models)")
    seed: int = Field(0, description="seed of the data subset, noise and random starts")

    @model_validator(mode="after")
    def _bounds_ordered(self):
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


class SigmaParams(SearchParams):
    """The PAC-Bayes sigma search. Defaults: bounds [0, 2], depth 15, 10 draws (Jiang et al.)."""

    depth: int = Field(15, ge=1, le=60, description="bisection steps")
    draws: int = Field(10, ge=1, description="Monte-Carlo draws of U' per probed sigma")
    envelope: int = Field(3, ge=0, description="after the bisection, also check sigma' = "
                          "j/(envelope+1) * sigma for j=1..envelope (the max over sigma' <= "
                          "sigma); a failure restarts the bisection below it")


class AlphaParams(SearchParams):
    """The worst-case sharpness alpha' search (projected sign-gradient ascent in a box)."""

    depth: int = Field(13, ge=1, le=60, description="bisection steps on alpha'")
    restarts: int = Field(3, ge=1, description="random starts of the ascent (run as a batch)")
    steps: int = Field(10, ge=0, description="ascent steps per start")
    step_size: float = Field(0.25, gt=0, description="step as a fraction of the box half-width")
    magnitude_eps: float = Field(1e-3, ge=0, description="box half-width is alpha' (|w_F| + this)")


SP = TypeVar("SP", bound=SearchParams)


def resolve(params: SP, n_classes: int) -> SP:
    """``params`` with ``eps`` filled in from the dataset when it was left at None."""
    if params.eps is None:
        return params.model_copy(update={"eps": default_eps(n_classes)})
    return params
