"""Tests of the example plugin: they import the module from this source tree, never
an installed copy of it (which would be tested instead, silently, by a plain import)."""

import importlib.util
import math
from pathlib import Path

from genbench.plugins import load_registry
from genbench.testing import context, measure_value

SOURCE = Path(__file__).resolve().parents[1] / "src" / "genbench_example_measure.py"
spec = importlib.util.spec_from_file_location("example_measure_under_test", SOURCE)
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)


def test_weight_count_is_the_log_of_the_weights_times_scale(monkeypatch):
    monkeypatch.setenv("GENBENCH_PLUGINS", "")  # no installed third-party plugin: only ours
    registry = load_registry(extra=[("example_measure", plugin)])
    measure = registry.create("measure", "weight_count", {"scale": 2.0})
    assert type(measure) is plugin.WeightCount
    ctx = context(registry=registry)  # a 5-6-3 MLP: 5*6 + 6*3 = 48 weights
    assert measure_value(measure, ctx) == 2.0 * math.log(48)
