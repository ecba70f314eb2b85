"""Plugin registration: built-ins, duplicates, broken plugins, third-party entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

import genbench
from genbench.components import Measure
from genbench.plugins import PluginError, load_registry
from tests.helpers import EXAMPLE_PLUGIN, install_dist


def plugin_module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, genbench.hookimpl(fn))
    return mod


def measure_class(measure_name: str) -> type[Measure]:
    return type("M", (Measure,), {"name": measure_name, "compute": lambda self, ctx: 1.0})


def test_builtins_register_every_kind():
    reg = load_registry()
    assert {"mnist1d", "digits"} <= set(reg.names("dataset"))
    assert "mlp" in reg.names("model")
    assert "dropout" in reg.names("regularizer")
    assert {"frobenius_distance", "parameter_norm", "spectral_norm"} <= set(reg.names("measure"))
    assert "local" in reg.names("executor")
    assert not reg.failed
    entry = reg.get("measure", "parameter_norm")
    assert entry.plugin == "measures" and entry.plugin_version == genbench.__version__


def test_loading_the_registry_and_genbench_plugins_do_not_import_torch():
    """Every command loads the registry: importing torch there cost each one ~1 s. The
    components import it when they are first used (building a model, computing a value)."""
    code = ("import sys\n"
            "from genbench.plugins import load_registry\n"
            "reg = load_registry()\n"
            "assert not reg.failed and all(reg.names(k) for k in reg.components), reg.failed\n"
            "from genbench.cli import app\n"
            "try:\n    app(['plugins'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n"
            "reg.create('model', 'mlp').build((4,), 3)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "GENBENCH_PLUGINS": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "True"] and "mlp" in out.stdout


def test_duplicate_name_names_both_plugins():
    one = plugin_module("one", register_measures=lambda register: register(measure_class("dup")))
    two = plugin_module("two", register_measures=lambda register: register(measure_class("dup")))
    reg = load_registry(extra=[("plugin-one", one), ("plugin-two", two)])
    assert reg.get("measure", "dup").plugin == "plugin-one"
    err = reg.plugins["plugin-two"].error
    assert "duplicate measure name 'dup'" in err and "plugin-one" in err and "plugin-two" in err


def test_duplicate_of_a_builtin_is_rejected():
    bad = plugin_module("bad", register_measures=lambda register: register(measure_class("parameter_norm")))
    reg = load_registry(extra=[("impostor", bad)])
    assert reg.get("measure", "parameter_norm").plugin == "measures"
    assert "registered by both 'measures' and 'impostor'" in reg.plugins["impostor"].error


def test_hook_that_raises_marks_plugin_failed_and_rolls_back():
    def hook(register):
        register(measure_class("half_registered"))
        raise RuntimeError("boom")

    reg = load_registry(extra=[("raiser", plugin_module("r", register_measures=hook))])
    assert reg.plugins["raiser"].error == "RuntimeError: boom"
    assert "half_registered" not in reg.names("measure")


def test_misspelled_hook_is_reported():
    mod = plugin_module("typo", register_measure=lambda register: None)
    reg = load_registry(extra=[("typo", mod)])
    assert "register_measure" in reg.plugins["typo"].error


def test_wrong_component_type_is_reported():
    mod = plugin_module("wrong", register_measures=lambda register: register(int))
    reg = load_registry(extra=[("wrong", mod)])
    assert "subclass of genbench.components.Measure" in reg.plugins["wrong"].error


def test_unknown_name_suggests_close_match():
    reg = load_registry()
    with pytest.raises(PluginError, match="did you mean 'parameter_norm'"):
        reg.get("measure", "parameter_nrom")


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    for name in ("genbench_example_measure", "broken_plugin"):
        sys.modules.pop(name, None)


def test_third_party_entry_point_loads_with_its_version(site, monkeypatch):
    source = (EXAMPLE_PLUGIN / "src" / "genbench_example_measure.py").read_text()
    install_dist(site, "genbench-example-measure", "1.0.0", "genbench_example_measure", source,
                 "example_measure")
    monkeypatch.setenv("GENBENCH_PLUGINS", "example_measure")
    reg = load_registry()
    entry = reg.get("measure", "weight_count")
    assert (entry.plugin, entry.plugin_version) == ("example_measure", "1.0.0")
    assert not reg.plugins["example_measure"].builtin


def test_autoload_off_and_deny_list(site, monkeypatch):
    source = (EXAMPLE_PLUGIN / "src" / "genbench_example_measure.py").read_text()
    install_dist(site, "genbench-example-measure", "1.0.0", "genbench_example_measure", source,
                 "example_measure")
    monkeypatch.setenv("GENBENCH_PLUGINS", "")
    assert "weight_count" not in load_registry().names("measure")
    monkeypatch.delenv("GENBENCH_PLUGINS")
    monkeypatch.setenv("GENBENCH_DISABLE_PLUGINS", "example_measure,regularizers")
    reg = load_registry()
    assert "weight_count" not in reg.names("measure") and "dropout" not in reg.names("regularizer")


def test_broken_import_is_reported_not_fatal(site, monkeypatch):
    install_dist(site, "broken-plugin", "0.3", "broken_plugin", "raise ImportError('no numpyy')\n",
                 "broken")
    monkeypatch.setenv("GENBENCH_PLUGINS", "broken")
    reg = load_registry()
    assert reg.plugins["broken"].error == "ImportError: no numpyy"
    assert "mlp" in reg.names("model")


def test_every_hook_is_documented_and_has_a_kind():
    from genbench import hookspecs
    from genbench.plugins import HOOK_FOR_KIND

    hooks = {n for n in dir(hookspecs) if n.startswith("register_")}
    assert hooks == set(HOOK_FOR_KIND.values())
    for name in hooks:
        assert len((getattr(hookspecs, name).__doc__ or "").strip()) > 40, name
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md").read_text()
    for name in hooks:
        assert f"`{name}`" in doc, f"docs/writing-a-plugin.md does not document {name}"


def test_measure_value_accepts_numbers_and_names_everything_else():
    import math

    import numpy as np

    from genbench.plugins import measure_value

    assert measure_value(2) == 2.0 and measure_value(np.float32(0.5)) == 0.5
    assert measure_value({"value": 1.5, "parts": {"a": 1.0}}) == 1.5
    for bad, why in [(math.nan, "non-finite"), (-math.inf, "non-finite"), ("1", "returned str"),
                     (None, "returned NoneType"), (True, "returned bool"), ([1.0], "returned list"),
                     ({"parts": {}}, "returned NoneType")]:
        with pytest.raises(ValueError, match=why):
            measure_value(bad)


def test_contain_describes_sys_exit_and_lets_ctrl_c_through():
    from genbench.limits import Terminated
    from genbench.plugins import contain

    assert contain(SystemExit(3)) == "SystemExit: plugin code called sys.exit(3)"
    assert contain(RuntimeError("first line\nsecond")) == "RuntimeError: first line"
    for stop in (KeyboardInterrupt(), Terminated()):
        with pytest.raises(KeyboardInterrupt):
            contain(stop)
