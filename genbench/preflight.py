"""Build what a suite describes before any training: catch a model that cannot take its data.

Schema validation cannot see that a CNN was given flat ``digits`` vectors; only building
the network and feeding it a batch can. For each distinct (dataset, model, regularizers)
configuration of the population this builds the model exactly as training will and runs
one forward pass on a zero batch of the dataset's real shape (taken from the dataset's
``shape()`` when it has one, so no data is loaded or downloaded; else from the loaded
data). That costs one small forward per architecture, not per model.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PreflightError", "check_builds"]


class PreflightError(ValueError):
    """Models of the suite that cannot be built or cannot take their data, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _shape(registry: Any, dataset: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a dataset config, loading it only if it must."""
    entry = registry.get("dataset", dataset["name"])
    ds = entry.cls(entry.cls.Params(**dataset["params"]))
    if hasattr(ds, "shape"):
        s = ds.shape()
        return tuple(s["input_shape"]), int(s["n_classes"])
    data = ds.load()
    return data.input_shape, data.n_classes


def _describe(config: dict[str, Any], dataset: dict[str, Any], shape: tuple[int, ...]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in config["model"]["params"].items()
                       if k in ("layout", "depth", "width"))
    layout = dataset["params"].get("layout")
    data = f"{dataset['name']}" + (f" (layout={layout})" if layout else "")
    return (f"model '{config['model']['name']}'{f' ({params})' if params else ''} cannot take "
            f"{data} inputs of shape {tuple(shape)}")


def check_builds(specs: list[Any], registry: Any) -> int:
    """Build each distinct architecture of ``specs`` and run a forward pass on a batch of two
    inputs of its dataset's shape; raise :class:`PreflightError` naming each failure and the
    fix. Returns the number of architectures checked."""
    import torch

    from genbench.data import DataBundle
    from genbench.training import build_model

    seen: dict[str, Any] = {}
    for spec in specs:
        cfg = spec.config
        key = json.dumps([cfg["dataset"], cfg["model"], cfg["regularizers"]], sort_keys=True,
                         default=str)
        seen.setdefault(key, spec)
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    problems: list[str] = []
    for spec in seen.values():
        cfg = spec.config
        dkey = json.dumps(cfg["dataset"], sort_keys=True, default=str)
        if dkey not in shapes:
            shapes[dkey] = _shape(registry, cfg["dataset"])
        shape, n_classes = shapes[dkey]
        x = torch.zeros(2, *shape)
        probe = DataBundle(cfg["dataset"]["name"], x, torch.zeros(2, dtype=torch.long), x,
                           torch.zeros(2, dtype=torch.long), n_classes)
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model = build_model(registry, cfg, probe).model.eval()
                out = model(x)
            if tuple(out.shape) != (2, n_classes):
                raise ValueError(f"output shape {tuple(out.shape)}, expected (2, {n_classes})")
        except Exception as exc:  # noqa: BLE001 - every failure is the user's to see, in one line
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fix = "" if "; use " in why else "; use a dataset layout or model that match"
            problems.append(f"{_describe(cfg, cfg['dataset'], shape)}: {why}{fix}")
    if problems:
        raise PreflightError(list(dict.fromkeys(problems)))  # one line per distinct failure
    return len(seen)
