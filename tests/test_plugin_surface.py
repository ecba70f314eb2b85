"""The plugin author's surface: the names a plugin imports, genbench.testing, the
documented testing recipe, and every hook documented *and* exercised by a test."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import genbench
from genbench import hookspecs
from tests.helpers import EXAMPLE_PLUGIN, TINY_SUITE, install_dist, write_suite

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "writing-a-plugin.md").read_text()
EXAMPLE_TEST = EXAMPLE_PLUGIN / "tests" / "test_weight_count.py"


def test_a_measure_needs_one_import_and_it_does_not_import_torch():
    code = ("import sys; from genbench import hookimpl, Measure, Params; "
            "assert 'torch' not in sys.modules; from genbench import MeasureContext; "
            "from genbench.components import Measure as M; from genbench.context import "
            "MeasureContext as C; assert Measure is M and MeasureContext is C")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_documented_test_is_the_examples_test():
    snippet = DOC.split("## Testing your plugin", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = EXAMPLE_TEST.read_text()
    assert snippet.strip() in source


def test_the_examples_test_tests_the_source_even_with_another_copy_installed(tmp_path, monkeypatch):
    """A wrong copy of the plugin is installed (on sys.path, with its entry point): the
    example's test still tests the source tree's module, and passes."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    wrong = (EXAMPLE_PLUGIN / "src" / "genbench_example_measure.py").read_text().replace(
        "math.log(n)", "math.log(n) + 1.0")
    install_dist(tmp_path / "site", "genbench-example-measure", "0.9.0", "genbench_example_measure",
                 wrong, "example_measure")
    monkeypatch.setenv("GENBENCH_PLUGINS", "example_measure")
    spec = importlib.util.spec_from_file_location("example_test", EXAMPLE_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as mp:
        module.test_weight_count_is_the_log_of_the_weights_times_scale(mp)
    import genbench_example_measure as installed  # the wrong copy is importable, and wrong

    from genbench.testing import context, measure_value

    assert measure_value(installed.WeightCount(), context()) != measure_value(
        module.plugin.WeightCount(), context())
    sys.modules.pop("genbench_example_measure", None)


def test_every_hook_is_documented_and_exercised_by_a_test():
    """A hook counts as exercised when some test module implements it (a function or
    attribute named after it, registered as a plugin)."""
    hooks = [n for n, f in vars(hookspecs).items() if callable(f) and n.startswith("register_")]
    assert len(hooks) == 6
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py")}
    for hook in hooks:
        assert f"### `{hook}`" in DOC, f"{hook} is not documented in docs/writing-a-plugin.md"
        assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
        implemented = [name for name, text in sources.items()
                       if re.search(rf"(def {hook}\(|\.{hook} = )", text)]
        assert implemented, f"no test implements the hook {hook}"


# -- the two hooks no other test implements -----------------------------------------
def run_with(tmp_path, plugin: types.ModuleType, suite_text: str, **kwargs):
    from genbench.plugins import load_registry

    registry = load_registry(extra=[(plugin.__name__, plugin)])
    return genbench.run(write_suite(tmp_path, suite_text), store=tmp_path / "s", device="cpu",
                        registry=registry, **kwargs), registry


def test_a_third_party_executor_runs_both_stages(tmp_path):
    from genbench.components import Executor
    from genbench.tasks import execute

    stages = []

    class Backwards(Executor):
        """Runs the tasks in reverse order, in this process."""

        name = "backwards"

        def run(self, tasks, setup, on_done):
            worker = setup.worker()
            for task in reversed(tasks):
                stages.append(task.stage)
                on_done(task, execute(task, worker))

    plugin = types.ModuleType("backwards_executor")
    plugin.register_executors = genbench.hookimpl(lambda register: register(Backwards))
    result, _ = run_with(tmp_path, plugin, TINY_SUITE, executor="backwards")
    assert set(stages) == {"train", "measure"} and stages.count("measure") == 4
    assert result["summary"]["measures_computed"] == 12
    plain = genbench.run(write_suite(tmp_path, TINY_SUITE), store=tmp_path / "plain", device="cpu")
    assert [m["measures"] for m in result["models"]] == [m["measures"] for m in plain["models"]]


def test_a_third_party_regularizer_acts_on_training(tmp_path):
    """A regularizer whose model override drops the biases: every stored model has
    weights and no bias."""
    from genbench.components import Regularizer
    from genbench.store import Store

    class NoBias(Regularizer):
        """Biases off (a test regularizer)."""

        name = "no_bias"

        def model_overrides(self):
            return {"bias": False}

    plugin = types.ModuleType("no_bias_regularizer")
    plugin.register_regularizers = genbench.hookimpl(lambda register: register(NoBias))
    text = TINY_SUITE.replace("[regularizers.dropout]\nrate = 0.0\n", "[regularizers.no_bias]\n"
                              "[regularizers.dropout]\nrate = 0.0\n")
    result, _ = run_with(tmp_path, plugin, text)
    with Store(tmp_path / "s") as st:
        for m in result["models"]:
            final = st.load_weights(m["key"])[1]
            assert any(k.endswith("weight") for k in final)
            assert not any(k.endswith("bias") for k in final)
