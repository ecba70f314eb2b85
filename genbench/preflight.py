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


def _forward(registry: Any, cfg: dict[str, Any], shape: tuple[int, ...], n_classes: int,
             device: str) -> None:
    """Build the model as training does and feed it a batch of two zero inputs."""
    import torch

    with torch.device(device), torch.no_grad():
        x = torch.zeros(2, *shape)
        out = _build(registry, cfg, x, n_classes)(x)
    if tuple(out.shape) != (2, n_classes):
        raise ValueError(f"output shape {tuple(out.shape)}, expected (2, {n_classes})")


#: Above this many parameters a model is checked on the meta device (shapes only, no
#: arithmetic and no weight init: a VGG costs ~40 ms instead of ~0.5 s); below it on the
#: CPU, which spares the meta device's one-time start-up (~3 s of CPU).
META_ABOVE = 2_000_000


def _check_one(registry: Any, cfg: dict[str, Any], shape: tuple[int, ...], n_classes: int) -> None:
    import torch

    try:
        with torch.device("meta"):
            x = torch.zeros(2, *shape)
            size = sum(p.numel() for p in _build(registry, cfg, x, n_classes).parameters())
    except Exception:  # noqa: BLE001 - the CPU build below reports the problem
        size = 0
    if size > META_ABOVE:
        try:
            return _forward(registry, cfg, shape, n_classes, "meta")
        except Exception:  # noqa: BLE001 - maybe an op without a meta kernel: ask the CPU
            pass
    _forward(registry, cfg, shape, n_classes, "cpu")


def _build(registry: Any, cfg: dict[str, Any], x: Any, n_classes: int) -> Any:
    import torch

    from genbench.data import DataBundle
    from genbench.training import build_model

    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with torch.random.fork_rng(devices=[]):
        return build_model(registry, cfg, DataBundle(cfg["dataset"]["name"], x, y, x, y,
                                                     n_classes)).model.eval()


def check_builds(specs: list[Any], registry: Any) -> int:
    """Build each distinct architecture of ``specs`` and run a forward pass on a batch of two
    inputs of its dataset's shape; raise :class:`PreflightError` naming each failure and the
    fix. Returns the number of architectures checked."""
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
        try:
            _check_one(registry, cfg, shape, n_classes)
        except Exception as exc:  # noqa: BLE001 - every failure is the user's to see, in one line
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fix = "" if "; use " in why else "; use a dataset layout or model that match"
            problems.append(f"{_describe(cfg, cfg['dataset'], shape)}: {why}{fix}")
    if problems:
        raise PreflightError(list(dict.fromkeys(problems)))  # one line per distinct failure
    return len(seen)
