"""The small interfaces every plugin implements.

A component is a class with a ``name``, a ``version`` (bump it when results would
change: stored results are keyed by it), a nested pydantic ``Params`` model and one
main method. The core never imports a concrete component: plugins register them
through the hooks in :mod:`genbench.hookspecs`.

This module must not import torch (``genbench --help`` stays fast); type hints
that mention torch are strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from genbench.data import DataBundle


class Params(BaseModel):
    """Base for every component's parameters: unknown keys are errors, not ignored.

    ``EXECUTION_ONLY`` names fields of a measure's or volume estimator's params that
    change how a result is computed but not the result (e.g. batching of evaluations);
    they are left out of the keys of stored measure values and shared quantities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The params as they enter content keys: every field (defaults filled in),
        except the execution-only ones."""
        return self.model_dump(mode="json", exclude=set(self.EXECUTION_ONLY))


class Component:
    """Common shape of all plugin components."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def describe(cls) -> str:
        """First line of the docstring: shown by ``genbench plugins``."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class Dataset(Component):
    """Loads a classification dataset into memory as tensors."""

    kind = "dataset"

    def load(self) -> DataBundle:
        raise NotImplementedError


class ModelFamily(Component):
    """Builds a network. Hidden layers must be followed by :class:`genbench.taps.Tap`
    modules (one per hidden layer, placed after the activation, holding the
    pre-activation too) so that every regularizer works with every family."""

    kind = "model"

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        raise NotImplementedError


class Regularizer(Component):
    """Acts on training through the taps of a model.

    ``bind(model)`` is called once before training on the model it will regularize;
    it returns a :class:`genbench.taps.TapHandler` (or ``None`` if the regularizer
    is a no-op for these params, e.g. dropout rate 0). Optimizer-level
    regularizers may instead override :meth:`optimizer_overrides`.
    """

    kind = "regularizer"

    def bind(self, model: nn.Module) -> Any:
        return None

    def active(self) -> bool:
        """False when these params make the regularizer a no-op (rate 0, strength 0):
        the training engines then treat it as absent (e.g. it does not stop batching)."""
        return True

    def optimizer_overrides(self) -> dict[str, Any]:
        """Keyword overrides for the optimizer (e.g. ``weight_decay``)."""
        return {}

    def model_overrides(self) -> dict[str, Any]:
        """Keyword overrides for the model family's params (e.g. ``batch_norm``)."""
        return {}


class TapHandler:
    """What a regularizer binds to a model (see :mod:`genbench.taps`). Override any of the
    three methods. It lives here, not in taps, so a plugin can subclass it without torch."""

    def preactivation(self, tap: Any, h: torch.Tensor) -> torch.Tensor:
        return h

    def activation(self, tap: Any, a: torch.Tensor) -> torch.Tensor:
        return a

    def after_step(self, model: nn.Module) -> None:
        return None


class VolumeEstimator(Component):
    """Estimates the per-layer weight volume of a trained model (science.md section 1)."""

    kind = "volume_estimator"

    def estimate(self, model: nn.Module, data: DataBundle, *, loss_fn: Any = None,
                 device: Any = None) -> dict[str, Any]:
        """Return ``{"layers": {name: {"log_vol", "dim", "vol_per_dim"}},
        "log_vol_sum": float, "vol_per_dim_mean": float, ...extra}``."""
        raise NotImplementedError


class Context(Protocol):
    """What a measure may ask of its model (:class:`genbench.context.MeasureContext` is the
    implementation; this protocol keeps the interfaces free of the flow that builds it)."""

    key: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    data: DataBundle
    device: torch.device

    def build(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module: ...
    def weight_names(self) -> list[str]: ...
    def weights(self, initial: bool = False) -> dict[str, torch.Tensor]: ...
    def train_loss(self, model: nn.Module | None = None) -> float: ...
    def train_error(self, model: nn.Module | None = None) -> float: ...
    def memo(self, name: str, params: dict[str, Any], compute: Any, version: str = "1",
             kind: str = "shared", provenance: dict[str, Any] | None = None) -> Any: ...
    def volume(self, estimator: str) -> dict[str, Any]: ...
    def sigma(self, **params: Any) -> dict[str, Any]: ...
    def alpha(self, **params: Any) -> dict[str, Any]: ...


class Measure(Component):
    """A complexity measure: bigger must mean *predicted worse generalization*.

    ``compute`` returns a number, or ``{"value": number, "parts": {name: number}}``
    when the value is a sum of named terms worth showing (stored with the value).
    ``needs`` names the shared quantities (e.g. ``"sigma"``, ``"volume:laplace"``) the
    measure reads, for readers; the core does not trust it: every lookup a measure
    makes is recorded with its value (see :mod:`genbench.keys`).
    """

    kind = "measure"
    needs: ClassVar[tuple[str, ...]] = ()

    def compute(self, ctx: Context) -> float | dict[str, Any]:
        raise NotImplementedError


class Executor(Component):
    """Runs a stage's tasks and hands each task's records back as soon as it finishes.

    An executor may use exactly this, all from :mod:`genbench.tasks`:

    - each task: picklable; ``len(task)`` (its size), ``task.stage`` (``"train"`` or
      ``"measure"``), ``task.failed(error) -> records`` (for a task its worker never
      returned from), and ``task.split()`` where it exists (to balance workers, see
      ``balance``); ``portable(task)`` when the worker may not see the driver's files;
    - ``setup``, a picklable ``WorkerSetup``: ``setup.device``, and ``setup.worker(device)``
      builds the worker a task runs with (once per process; in the driver's own process
      it is the driver's worker);
    - ``execute(task, worker) -> records``: runs a task; its errors are records;
    - ``pack(records)``: the records as bytes, to send them back from a worker.

    ``on_done(task, records)`` must be called once per task, in the calling process
    (the driver stores the records there, nowhere else).
    """

    kind = "executor"

    def run(self, tasks: list[Any], setup: Any, on_done: Any) -> None:
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    c.kind: c for c in (Dataset, ModelFamily, Regularizer, VolumeEstimator, Measure, Executor)
}
