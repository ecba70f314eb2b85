"""Expand a suite into model specs, each with a content key.

The key is a hash of the model's canonical, fully resolved configuration (every
param with its default filled in) plus the versions of the components that build
and train it. A changed recipe or component version is a new key (retrained); an
unchanged one is found in the store and never retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from genbench import keys
from genbench.keys import canonical_json, content_key  # noqa: F401 - their old home
from genbench.plugins import Registry
from genbench.suite import Scalar, Suite, SuiteError, TrainRecipe, apply_point
from genbench.training import TRAINER_VERSION


@dataclass(frozen=True)
class ModelSpec:
    """One model of the population: everything needed to train it, nothing else."""

    key: str
    hparams: dict[str, Scalar]
    seed: int
    config: dict[str, Any]  # resolved dataset/model/train/regularizers
    provenance: list[dict[str, str]] = field(default_factory=list)

    @cached_property
    def recipe(self) -> TrainRecipe:
        """The training recipe, parsed once (the engines ask for it often)."""
        return TrainRecipe(**self.config["train"])


def resolve(registry: Registry, cfg: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Fill in every default so the config is canonical; list the components it uses."""
    out: dict[str, Any] = {}
    prov = []
    for section, kind in (("dataset", "dataset"), ("model", "model")):
        entry = registry.get(kind, cfg[section]["name"])
        params = entry.cls.Params(**cfg[section]["params"]).model_dump(mode="json")
        out[section] = {"name": entry.cls.name, "params": params}
        prov.append(entry.provenance)
    out["train"] = TrainRecipe(**cfg["train"]).model_dump(mode="json")
    tracked = out["train"].get("track_volume")
    if tracked is not None:  # the volume history depends on the estimator's version and params
        entry = registry.get("volume_estimator", tracked["estimator"])
        tracked["params"] = entry.cls.Params(**tracked["params"]).model_dump(mode="json")
        prov.append(entry.provenance)
    out["regularizers"] = {}
    for name in sorted(cfg["regularizers"]):
        entry = registry.get("regularizer", name)
        out["regularizers"][name] = entry.cls.Params(**cfg["regularizers"][name]).model_dump(mode="json")
        prov.append(entry.provenance)
    return out, prov


def dataset_key(config: dict[str, Any], registry: Registry) -> str:
    """The key of a model config's dataset (see :func:`genbench.keys.dataset_key`)."""
    return keys.dataset_key(config, str(registry.get("dataset", config["dataset"]["name"]).cls.version))


def expand(suite: Suite, registry: Registry) -> list[ModelSpec]:
    """All models of the suite: every grid point times every replicate seed."""
    base = suite.model_dump(include={"dataset", "model", "train", "regularizers"})
    specs = []
    for point in suite.grid_points():
        cfg, prov = resolve(registry, apply_point(base, point))
        for seed in suite.seeds:
            key = keys.model_key(cfg, seed, TRAINER_VERSION,
                                 [(p["kind"], p["name"], p["version"]) for p in prov])
            specs.append(ModelSpec(key=key, hparams=dict(point), seed=seed,
                                   config=cfg, provenance=prov))
    seen: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.key in seen:
            raise SuiteError([f"grid: {spec.hparams} and {seen[spec.key]} describe the same model "
                              "(equal values such as 1 and 1.0); list each value once"])
        seen[spec.key] = spec.hparams
    return specs
