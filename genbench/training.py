"""Build and train one model from its spec (the sequential reference path).

Everything random is derived from the model's seed: the initial weights and the
regularizers' noise from ``torch.manual_seed(seed)`` inside a forked RNG (so
training never disturbs the caller's RNG), and the data order from its own
generator. Two runs of the same spec give the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genbench.data import DataBundle
from genbench.lazy import lazy_module
from genbench.plugins import Registry
from genbench.suite import TrainRecipe

# Imported on first use: model keys need TRAINER_VERSION, and a rerun with nothing to
# train must not pay for importing torch (docs/performance.md, "Start-up").
torch, F, nn = lazy_module("torch"), lazy_module("torch.nn.functional"), lazy_module("torch.nn")

TRAINER_VERSION = "2"  # in every model key: bump when the training loop changes results
EVAL_BATCH = 4096


@dataclass
class BuiltModel:
    """A network with its regularizers bound to its taps."""

    model: nn.Module
    regularizers: list[Any] = field(default_factory=list)
    optimizer_overrides: dict[str, Any] = field(default_factory=dict)


def build_model(registry: Registry, config: dict[str, Any], data: DataBundle) -> BuiltModel:
    """Instantiate the model family with its params (plus regularizers' model overrides)
    and bind every regularizer's tap handler."""
    from genbench import taps

    regs = [registry.get("regularizer", name).cls(registry.get("regularizer", name).cls.Params(**p))
            for name, p in config["regularizers"].items()]
    family = registry.get("model", config["model"]["name"]).cls
    params = dict(config["model"]["params"])
    for r in regs:
        params.update(r.model_overrides())
    model = family(family.Params(**params)).build(data.input_shape, data.n_classes)
    handlers = [h for h in (r.bind(model) for r in regs) if h is not None]
    taps.attach(model, handlers)
    opt_over: dict[str, Any] = {}
    for r in regs:
        opt_over.update(r.optimizer_overrides())
    return BuiltModel(model, regs, opt_over)


def make_optimizer(params: Any, recipe: TrainRecipe, overrides: dict[str, Any]) -> torch.optim.Optimizer:
    wd = overrides.get("weight_decay", recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=wd)


def lr_at(recipe: TrainRecipe, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based): halved every ``lr_halve_every`` epochs."""
    if recipe.lr_halve_every:
        return recipe.lr * 0.5 ** (epoch // recipe.lr_halve_every)
    return recipe.lr


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    was = model.training
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], EVAL_BATCH):
            out = model(x[i:i + EVAL_BATCH])
            total += F.cross_entropy(out, y[i:i + EVAL_BATCH], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + EVAL_BATCH]).sum().item()
    model.train(was)
    n = x.shape[0]
    return total / n, correct / n


def final_metrics(model: nn.Module, data: DataBundle, epochs: int, history: list) -> dict[str, Any]:
    train_loss, train_acc = evaluate(model, data.train_x, data.train_y)
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    return {"train_loss": train_loss, "test_loss": test_loss, "train_acc": train_acc,
            "test_acc": test_acc, "gap": test_loss - train_loss, "acc_gap": train_acc - test_acc,
            "epochs": epochs, "history": history}


def stop_reached(recipe: TrainRecipe, loss: float, acc: float) -> bool:
    return ((recipe.stop_train_loss is not None and loss <= recipe.stop_train_loss)
            or (recipe.stop_train_acc is not None and acc >= recipe.stop_train_acc))


def converged(metrics: dict[str, Any], recipe: TrainRecipe) -> bool:
    """Whether a trained model reached its recipe's training target: final eval-mode train
    cross-entropy <= stop_train_loss, or train accuracy >= stop_train_acc; true when the
    recipe sets neither. Models are compared at a common training state (Jiang et al. 2019),
    so scores leave the others out by default."""
    if recipe.stop_train_loss is None and recipe.stop_train_acc is None:
        return True
    return stop_reached(recipe, metrics["train_loss"], metrics["train_acc"])


@dataclass
class TrainResult:
    init_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    seconds: float


EpochCallback = Callable[[int, "nn.Module"], "dict[str, Any] | None"]


def train_one(spec: Any, data: DataBundle, registry: Registry, device: str | torch.device = "cpu",
              callbacks: list[EpochCallback] | None = None) -> TrainResult:
    """Train ``spec`` to the recipe's stop condition; return weights and metrics.

    ``callbacks`` run after every epoch with (epoch, model); what they return is
    added to that epoch's history entry (e.g. the volume during training).
    """
    from genbench import taps

    t0 = time.perf_counter()
    recipe = spec.recipe
    data = data.to(device)
    callbacks = list(callbacks or [])
    if recipe.track_volume is not None:
        callbacks.append(volume_tracker(registry, spec.config, data, recipe, device))
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(spec.seed)
        built = build_model(registry, spec.config, data)
        model = built.model.to(device)
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = make_optimizer(model.parameters(), recipe, built.optimizer_overrides)
        order = torch.Generator().manual_seed(spec.seed + 7919)
        history: list[dict[str, Any]] = []
        epoch = 0
        for epoch in range(1, recipe.max_epochs + 1):
            lr = lr_at(recipe, epoch - 1)
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            perm = torch.randperm(data.n_train, generator=order).to(device)
            for i in range(0, data.n_train, recipe.batch_size):
                idx = perm[i:i + recipe.batch_size]
                x = data.train_x[idx]
                if data.augment is not None:
                    x = data.augment(x, order)
                loss = F.cross_entropy(model(x), data.train_y[idx])
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                taps.after_step(model)
            train_loss, train_acc = evaluate(model, data.train_x, data.train_y)
            entry: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                                     "train_acc": train_acc}
            for cb in callbacks:
                entry.update(cb(epoch, model) or {})
            history.append(entry)
            if stop_reached(recipe, train_loss, train_acc):
                break
        metrics = {**final_metrics(model, data, epoch, history), "engine": "sequential"}
    final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(init_state, final_state, metrics, time.perf_counter() - t0)


def volume_tracker(registry: Registry, config: dict[str, Any], data: DataBundle,
                   recipe: TrainRecipe, device: str | torch.device) -> EpochCallback:
    """An epoch callback recording the weight volume every ``track_volume.every`` epochs
    (on a copy of the model, under its own RNG, so training is unaffected)."""
    tv = recipe.track_volume
    entry = registry.get("volume_estimator", tv.estimator)
    estimator = entry.cls(entry.cls.Params(**tv.params))

    def record(epoch: int, model: nn.Module) -> dict[str, Any] | None:
        if epoch % tv.every:
            return None
        with torch.random.fork_rng(devices=[torch.device(device)]
                                   if torch.device(device).type == "cuda" else []):
            torch.manual_seed(epoch)
            copy = load_trained(registry, config, data, model.state_dict(), device)
            est = estimator.estimate(copy, data, loss_fn=F.cross_entropy, device=device)
        return {"volume": {"estimator": tv.estimator, "vol_per_dim_mean": est["vol_per_dim_mean"],
                           "log_vol_sum": est["log_vol_sum"]}}

    return record


def load_trained(registry: Registry, config: dict[str, Any], data: DataBundle,
                 state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a stored model (regularizers bound, eval mode) with ``state`` loaded."""
    built = build_model(registry, config, data)
    built.model.load_state_dict(state)
    return built.model.to(device).eval()
