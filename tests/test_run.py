"""End to end: train -> store -> measure -> score, reruns, resume after interruption."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

import genbench
from genbench.components import Measure
from genbench.plugins import load_registry
from genbench.store import Store
from tests.helpers import EXAMPLE_PLUGIN, TINY_SUITE, install_dist, write_suite

N_MODELS = 4  # TINY_SUITE: dropout {0, 0.3} x width {8, 16}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    suite = write_suite(tmp, TINY_SUITE)
    result = genbench.run(suite, store=tmp / "store", device="cpu", json_path=tmp / "run.json")
    return tmp, suite, result


def test_run_json_contract(first_run):
    tmp, _, result = first_run
    assert json.loads((tmp / "run.json").read_text()) == json.loads(json.dumps(result))
    s = result["summary"]
    assert (s["models"], s["trained"], s["reused"], s["failed"]) == (N_MODELS, N_MODELS, 0, 0)
    assert s["measures_computed"] == 3 * N_MODELS and s["measures_reused"] == 0
    assert s["measures_failed"] == 0 and s["workers"] == {"train": 1, "measure": 1}
    assert set(s["stage_seconds"]) == {"train", "measure", "score"}
    assert set(result) >= {"suite", "store", "summary", "models", "leaderboard"}
    for m in result["models"]:
        assert set(m) >= {"key", "hparams", "train_loss", "test_loss", "train_acc", "test_acc",
                          "gap", "measures"}
        assert m["gap"] == pytest.approx(m["test_loss"] - m["train_loss"])
        assert set(m["measures"]) == {"frobenius_distance", "parameter_norm", "spectral_norm"}
    for name, row in result["leaderboard"].items():
        assert set(row) >= {"mi", "mi_hparam", "kendall_tau"}
        assert "0" in row["mi"] and "regularizers.dropout.rate" in row["mi_hparam"]


def test_rerun_trains_and_computes_nothing(first_run):
    tmp, suite, result = first_run
    again = genbench.run(suite, store=tmp / "store", device="cpu")
    s = again["summary"]
    assert (s["trained"], s["reused"], s["measures_computed"]) == (0, N_MODELS, 0)
    assert s["measures_reused"] == 3 * N_MODELS
    assert again["models"] == result["models"]


def test_stored_weights_reproduce_the_measures(first_run):
    tmp, _, result = first_run
    with Store(tmp / "store") as st:
        for m in result["models"]:
            init, final = st.load_weights(m["key"])
            names = [k for k in final if k.endswith("weight")]
            frob = sum(((final[n].double() - init[n].double()) ** 2).sum().item() for n in names)
            assert m["measures"]["frobenius_distance"] == pytest.approx(frob, rel=1e-12)
            prov = st.model(m["key"])["provenance"]
            assert {"kind": "model", "name": "mlp", "version": "1", "plugin": "models",
                    "plugin_version": genbench.__version__} in prov


def test_training_is_deterministic(first_run):
    tmp, suite, result = first_run
    fresh = genbench.run(suite, store=tmp / "store2", device="cpu")
    # equal up to float rounding (the thread count follows the machine's load)
    assert [m["train_loss"] for m in fresh["models"]] == pytest.approx(
        [m["train_loss"] for m in result["models"]], rel=1e-6)


class Interrupt(Exception):
    pass


def interrupting_progress(stage_to_stop: str, after: int):
    def progress(stage, total):
        count = {"n": 0}

        def advance(desc):
            count["n"] += 1
            if stage == stage_to_stop and count["n"] >= after:
                raise KeyboardInterrupt
        return advance
    return progress


def test_interrupted_run_resumes_without_losing_work(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE)
    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        genbench.run(suite, store=store, device="cpu", progress=interrupting_progress("train", 1))
    with Store(store) as st:
        assert [m["status"] for m in st.models()] == ["done"]  # finished before the interrupt: kept
    with pytest.raises(KeyboardInterrupt):
        genbench.run(suite, store=store, device="cpu", progress=interrupting_progress("measure", 5))
    resumed = genbench.run(suite, store=store, device="cpu")
    s = resumed["summary"]
    assert (s["trained"], s["reused"]) == (0, N_MODELS)
    assert s["measures_computed"] == 3 * N_MODELS - 5 and s["measures_reused"] == 5


def test_failing_measure_is_stored_and_run_goes_on(tmp_path):
    class Flaky(Measure):
        name = "flaky"

        def compute(self, ctx):
            if ctx.hparams["model.width"] == 8:
                raise RuntimeError("cannot measure narrow nets")
            return 1.0 + ctx.hparams["regularizers.dropout.rate"]

    mod = types.ModuleType("flaky_plugin")
    mod.register_measures = genbench.hookimpl(lambda register: register(Flaky))
    registry = load_registry(extra=[("flaky", mod)])
    suite = write_suite(tmp_path, TINY_SUITE.replace("spectral_norm = {}", "flaky = {}"))
    result = genbench.run(suite, store=tmp_path / "s", device="cpu", registry=registry)
    values = [m["measures"]["flaky"] for m in result["models"]]
    assert values.count(None) == 2 and result["leaderboard"]["flaky"]["n_models"] == 2
    with Store(tmp_path / "s") as st:
        errors = [r["error"] for r in st.results(kind="measure") if r["name"] == "flaky" and r["error"]]
    assert errors == ["RuntimeError: cannot measure narrow nets"] * 2


def test_third_party_measure_appears_in_leaderboard(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = (EXAMPLE_PLUGIN / "src" / "genbench_example_measure.py").read_text()
    install_dist(tmp_path / "site", "genbench-example-measure", "1.0.0", "genbench_example_measure",
                 source, "example_measure")
    monkeypatch.setenv("GENBENCH_PLUGINS", "example_measure")
    registry = load_registry()
    suite = write_suite(tmp_path, TINY_SUITE.replace("spectral_norm = {}", "weight_count = { scale = 2.0 }"))
    result = genbench.run(suite, store=tmp_path / "s", device="cpu", registry=registry)
    assert "weight_count" in result["leaderboard"]
    m = result["models"][0]
    assert m["measures"]["weight_count"] == pytest.approx(2.0 * torch.log(torch.tensor(
        64.0 * m["hparams"]["model.width"] + m["hparams"]["model.width"] * 10)).item())
    with Store(tmp_path / "s") as st:
        prov = [r["provenance"] for r in st.results(kind="measure") if r["name"] == "weight_count"]
    assert prov[0]["plugin"] == "example_measure" and prov[0]["plugin_version"] == "1.0.0"
    sys.modules.pop("genbench_example_measure", None)


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="no CUDA device"):
        genbench.run(write_suite(tmp_path, TINY_SUITE), store=tmp_path / "s", device="cuda")


def test_values_of_other_params_are_never_shown(tmp_path):
    """Two suites share models but ask for a measure with different params: each run
    and each re-rendered leaderboard shows its own suite's values."""
    a = write_suite(tmp_path, TINY_SUITE.replace("spectral_norm = {}", "path_norm = { bias = true }"), "a.toml")
    b = write_suite(tmp_path, TINY_SUITE.replace("spectral_norm = {}", "path_norm = { bias = false }")
                    .replace('name = "tiny"', 'name = "tiny-b"'), "b.toml")
    store = tmp_path / "s"
    first = genbench.run(a, store=store, device="cpu")
    other = genbench.run(b, store=store, device="cpu")
    again = genbench.run(a, store=store, device="cpu")
    values = lambda r: [m["measures"]["path_norm"] for m in r["models"]]  # noqa: E731
    assert values(first) != values(other)
    assert values(again) == values(first) and again["summary"]["measures_computed"] == 0
    assert values(genbench.runner.leaderboard(store, suite="tiny")) == values(first)


def test_missing_dataset_is_an_error_not_a_failed_model(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE.replace('name = "digits"', f'name = "mnist"\nparams = {{ root = "{tmp_path / "nowhere"}" }}'))
    with pytest.raises(FileNotFoundError):
        genbench.run(suite, store=tmp_path / "s", device="cpu")
    with Store(tmp_path / "s") as st:
        assert st.models() == []  # nothing recorded as failed: fixing the data is enough


def test_equal_grid_values_are_rejected(tmp_path):
    from genbench.suite import SuiteError

    suite = write_suite(tmp_path, TINY_SUITE.replace("lr = 0.1", "").replace(
        '"model.width" = [8, 16]', '"model.width" = [8]\n"train.lr" = [1, 1.0]'))
    with pytest.raises(SuiteError, match="describe the same model"):
        genbench.run(suite, store=tmp_path / "s", device="cpu")


def plugin_registry(*measures: type) -> object:
    mod = types.ModuleType("run_test_measures")
    mod.register_measures = genbench.hookimpl(lambda register: [register(m) for m in measures])
    return load_registry(extra=[("run_test_measures", mod)])


class NeedlessVolume(Measure):
    """Reads a volume without declaring it in ``needs``."""

    name = "needless_volume"

    def compute(self, ctx):
        return -ctx.volume("laplace")["log_vol_sum"]


def test_an_undeclared_volume_lookup_is_recomputed_when_its_params_change(tmp_path):
    """The dependency is recorded while the measure runs: a rerun under another Laplace
    damping recomputes the value (and only it), which then equals a fresh estimate
    under the new damping."""
    from genbench.context import MeasureContext

    registry = plugin_registry(NeedlessVolume)
    text = TINY_SUITE.replace("spectral_norm = {}", "needless_volume = {}")
    store = tmp_path / "s"
    first = genbench.run(write_suite(tmp_path, text + "[volume.laplace]\ndamping = 1e-3\n"),
                         store=store, device="cpu", registry=registry)
    second = genbench.run(write_suite(tmp_path, text + "[volume.laplace]\ndamping = 1e-1\n"),
                          store=store, device="cpu", registry=registry)
    assert second["summary"]["measures_computed"] == N_MODELS  # the other two are reused
    with Store(store) as st:
        for before, after in zip(first["models"], second["models"]):
            m = st.model(after["key"])
            init, final = st.load_weights(m["key"])
            from genbench.runner import DataCache

            fresh = MeasureContext(key=m["key"], hparams=m["hparams"], config=m["config"],
                                   data=DataCache(registry).get(m["config"]), registry=registry,
                                   store=None, init_state=init, final_state=final,
                                   settings={"volume": {"laplace": {"damping": 0.1}}})
            truth = -fresh.volume("laplace")["log_vol_sum"]
            # Equal up to summation order (the run's BLAS threads differ from this process's:
            # the last bit moved once in many runs); the old damping's value is far off.
            assert after["measures"]["needless_volume"] == pytest.approx(truth, rel=1e-12)
            assert before["measures"]["needless_volume"] != pytest.approx(truth, rel=1e-6)


class Split(Measure):
    """A value with parts (a sum of two named terms)."""

    name = "split"

    def compute(self, ctx):
        a, b = float(len(ctx.weight_names())), float(ctx.hparams["model.width"])
        return {"value": a + b, "parts": {"layers": a, "width": b}}


class BadDict(Measure):
    name = "bad_dict"

    def compute(self, ctx):
        return {"val": 1.0}


def test_values_with_parts_are_stored_and_shown(tmp_path):
    registry = plugin_registry(Split, BadDict)
    suite = write_suite(tmp_path, TINY_SUITE.replace("spectral_norm = {}",
                                                     "split = {}\nbad_dict = {}"))
    result = genbench.run(suite, store=tmp_path / "s", device="cpu", registry=registry)
    for m in result["models"]:
        width = m["hparams"]["model.width"]
        assert m["measures"]["split"] == 2.0 + width  # a depth-1 MLP: two weight matrices
        assert m["parts"] == {"split": {"layers": 2.0, "width": float(width)}}
        assert m["measures"]["bad_dict"] is None
    assert result["summary"]["measures_failed"] == N_MODELS
    with Store(tmp_path / "s") as st:
        errors = {r["error"] for r in st.results(kind="measure") if r["name"] == "bad_dict"}
    assert errors == {"TypeError: a measure returns a number or {'value': number, 'parts': "
                      "{name: number}}, not a dict with keys ['val']"}
