"""Tiny data, a tiny model and a measure context for testing a plugin in a few lines::

    from genbench.testing import context, measure_value
    ctx = context()                       # a 5-6-3 MLP fitted a little on 48 random points
    assert measure_value(MyMeasure(), ctx) > 0

The project's own tests use these too. Nothing here touches a store or the disk.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genbench.context import MeasureContext
from genbench.data import DataBundle


def tiny_data(n_train: int = 48, d: int = 5, n_classes: int = 3, seed: int = 0,
              shape: tuple[int, ...] | None = None) -> DataBundle:
    """Gaussian inputs with random labels: ``n_train`` training and 16 test samples."""
    g = torch.Generator().manual_seed(seed)
    shape = shape or (d,)
    x = torch.randn((n_train, *shape), generator=g)
    y = torch.randint(0, n_classes, (n_train,), generator=g)
    xt = torch.randn((16, *shape), generator=g)
    yt = torch.randint(0, n_classes, (16,), generator=g)
    return DataBundle("tiny", x, y, xt, yt, n_classes)


def mlp_config(**params: Any) -> dict[str, Any]:
    """A resolved model config for the built-in ``mlp`` (``params``: width, depth, ...)."""
    return {"dataset": {"name": "tiny", "params": {}}, "model": {"name": "mlp", "params": params},
            "regularizers": {}}


def context(config: dict[str, Any] | None = None, data: DataBundle | None = None,
            registry: Any = None, final: dict | None = None, init: dict | None = None,
            seed: int = 0, settings: dict[str, Any] | None = None, trained_steps: int = 40,
            store: Any = None) -> MeasureContext:
    """A context for a freshly built model (default: a one-hidden-layer MLP of width 6 on
    :func:`tiny_data`), fitted ``trained_steps`` Adam steps so it sits near a minimum;
    ``final``/``init`` override entries of its states; ``registry`` defaults to the
    installed plugins."""
    from genbench.plugins import get_registry
    from genbench.training import build_model

    config = config or mlp_config(widths=[6])
    data = data or tiny_data()
    registry = registry or get_registry()
    torch.manual_seed(seed)
    model = build_model(registry, config, data).model
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if trained_steps:
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(trained_steps):
            opt.zero_grad()
            F.cross_entropy(model(data.train_x), data.train_y).backward()
            opt.step()
    final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    init_state.update(init or {})
    final_state.update(final or {})
    return MeasureContext(key="0" * 20, hparams={}, config=config, data=data, registry=registry,
                          store=store, init_state=init_state, final_state=final_state,
                          device="cpu", settings=settings or {})


def measure_value(measure: Any, ctx: MeasureContext) -> float:
    """What the runner would store as the measure's value on ``ctx`` (parts dropped)."""
    from genbench.tasks import measure_value as split

    return split(measure.compute(ctx))[0]
