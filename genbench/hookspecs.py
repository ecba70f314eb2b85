"""The plugin author's manual: every hook genbench calls.

A plugin is a module (or object) with functions marked ``@genbench.hookimpl`` and
named after a hook below. Ship it in a package that declares an entry point in the
``genbench`` group::

    [project.entry-points.genbench]
    my_measures = "my_package.plugin"

Every hook receives ``register``, a callable owned by the core: call it with a
component class (a subclass of the matching base in :mod:`genbench.components`).
The core checks the class, rejects a name that another plugin already registered
(naming both plugins), and records your plugin's name and version with every
result the component produces. A hook that raises marks your plugin as failed; it
never stops genbench.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("genbench")
hookimpl = pluggy.HookimplMarker("genbench")

Register = Callable[[type], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`genbench.components.Dataset` subclasses.

    ``load()`` returns a :class:`genbench.data.DataBundle` (tensors in memory).
    Nothing may be downloaded unless the user's params ask for it.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register :class:`genbench.components.ModelFamily` subclasses.

    ``build(input_shape, n_classes)`` returns an ``nn.Module`` whose hidden layers
    are each followed by a :class:`genbench.taps.Tap`, so regularizers reach them.
    """


@hookspec
def register_regularizers(register: Register) -> None:
    """Register :class:`genbench.components.Regularizer` subclasses.

    A regularizer acts through the taps (forward on activations, backward on
    pre-activation gradients, on the weights after each optimizer step) or through
    optimizer/model overrides.
    """


@hookspec
def register_volume_estimators(register: Register) -> None:
    """Register :class:`genbench.components.VolumeEstimator` subclasses.

    Measures reach them through ``ctx.volume(name)``; results are stored per model.
    """


@hookspec
def register_measures(register: Register) -> None:
    """Register :class:`genbench.components.Measure` subclasses.

    ``compute(ctx)`` returns a float where bigger predicts worse generalization, or
    ``{"value": float, "parts": {name: float}}``. ``ctx`` is a
    :class:`genbench.context.MeasureContext`; every shared quantity it looks up is
    recorded with the value (see :mod:`genbench.keys`).
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register :class:`genbench.components.Executor` subclasses: how a stage's tasks
    (train a group, measure a model; :mod:`genbench.tasks`) are run."""
