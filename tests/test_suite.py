"""Suite loading and validation: every problem found before any work, one line each."""

from __future__ import annotations

import pytest

from genbench.population import expand
from genbench.plugins import get_registry
from genbench.suite import SuiteError, apply_point, load_suite, short_names
from tests.helpers import TINY_SUITE, write_suite


def problems_of(tmp_path, text):
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(tmp_path, text))
    return info.value.problems


def test_tiny_suite_expands_to_grid_times_seeds(tmp_path):
    suite = load_suite(write_suite(tmp_path, TINY_SUITE.replace("seeds = [0]", "seeds = [0, 1]")))
    specs = expand(suite, get_registry())
    assert len(specs) == 2 * 2 * 2
    assert len({s.key for s in specs}) == 8
    assert suite.against() == ["regularizers.dropout.rate"]
    assert suite.condition_on() == ["model.width"]


def test_registry_default_suite_is_valid_and_big_enough():
    suite = load_suite("default")
    specs = expand(suite, get_registry())
    assert len(specs) >= 24
    assert sorted({s.hparams["regularizers.dropout.rate"] for s in specs}) == [0.0, 0.15, 0.3]
    assert len(suite.hyperparameters()) >= 3


def test_keys_are_content_keys(tmp_path):
    a = expand(load_suite(write_suite(tmp_path, TINY_SUITE)), get_registry())
    b = expand(load_suite(write_suite(tmp_path, TINY_SUITE.replace("max_epochs = 2", "max_epochs = 2\n"))),
               get_registry())
    assert [s.key for s in a] == [s.key for s in b]  # same content, same keys
    c = expand(load_suite(write_suite(tmp_path, TINY_SUITE.replace("max_epochs = 2", "max_epochs = 3"))),
               get_registry())
    assert not {s.key for s in a} & {s.key for s in c}  # changed recipe: all new keys
    # defaults filled in: writing a default explicitly does not change the key
    d = expand(load_suite(write_suite(tmp_path, TINY_SUITE.replace("lr = 0.1", "lr = 0.1\nmomentum = 0.9"))),
               get_registry())
    assert [s.key for s in a] == [s.key for s in d]


def test_explicit_points_are_added(tmp_path):
    text = TINY_SUITE + '\n[[points]]\n"regularizers.dropout.rate" = 0.5\n"model.width" = 4\n'
    specs = expand(load_suite(write_suite(tmp_path, text)), get_registry())
    assert len(specs) == 5 and specs[-1].hparams == {"regularizers.dropout.rate": 0.5, "model.width": 4}


def test_every_problem_reported_with_its_path(tmp_path):
    text = (TINY_SUITE.replace('name = "mlp"', 'name = "mpl"')
            .replace("lr = 0.1", "lr = -1")
            .replace('"model.width" = [8, 16]', '"model.width" = [8, 16]\n"train.batch_size" = [0, 32]')
            .replace("spectral_norm = {}", "spectral_norm = {}\nnot_a_measure = {}")
            .replace("[regularizers.dropout]\nrate = 0.0", "[regularizers.dropout]\nrate = 1.5"))
    probs = problems_of(tmp_path, text)
    joined = "\n".join(probs)
    assert "model: unknown model 'mpl' (did you mean 'mlp'?)" in joined
    assert any(p.startswith("train.lr: Input should be greater than 0") for p in probs)
    assert any(p.startswith("train.batch_size: Input should be greater than or equal to 1")
               and "grid.train.batch_size=0" in p for p in probs)
    assert any(p.startswith("measures.not_a_measure: unknown measure") for p in probs)
    assert any(p.startswith("regularizers.dropout.rate: Input should be less than 1") for p in probs)
    assert all("\n" not in p for p in probs)


def test_bad_grid_key_and_unknown_field(tmp_path):
    probs = problems_of(tmp_path, TINY_SUITE.replace('"model.width"', '"width"')
                        .replace("[train]", "[train]\nepochs = 3"))
    assert any(p.startswith("train.epochs: unknown field") for p in probs)
    probs = problems_of(tmp_path, TINY_SUITE.replace('"model.width"', '"width"'))
    assert any(p.startswith("grid.width: a grid key is a dotted path") for p in probs)


def test_model_param_errors_name_the_param(tmp_path):
    probs = problems_of(tmp_path, TINY_SUITE.replace('"model.width" = [8, 16]', '"model.width" = [8, "wide"]'))
    assert any(p.startswith("model.params.width: Input should be a valid integer") for p in probs)


def test_scoring_options_checked(tmp_path):
    probs = problems_of(tmp_path, TINY_SUITE + '\n[scoring]\npreset = "papre"\nagainst = ["dropout"]\n')
    assert any(p.startswith("scoring.preset: unknown preset 'papre'") for p in probs)
    assert any(p.startswith("scoring.against: 'dropout' is not a grid key") for p in probs)


def test_missing_suite_and_bad_toml(tmp_path):
    with pytest.raises(SuiteError, match="did you mean 'default'"):
        load_suite("defualt")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(bad)


def test_apply_point_and_short_names():
    base = {"model": {"name": "mlp", "params": {}}, "train": {}, "regularizers": {}}
    cfg = apply_point(base, {"model.depth": 3, "train.lr": 0.5, "regularizers.dropout.rate": 0.2})
    assert cfg["model"]["params"]["depth"] == 3 and cfg["train"]["lr"] == 0.5
    assert cfg["regularizers"] == {"dropout": {"rate": 0.2}}
    assert base["model"]["params"] == {}  # the base is not mutated
    assert short_names(["model.depth", "train.lr", "regularizers.dropout.rate"]) == {
        "model.depth": "depth", "train.lr": "lr", "regularizers.dropout.rate": "dropout.rate"}


def test_points_without_a_grid_add_no_empty_point(tmp_path):
    text = TINY_SUITE.split("[grid]")[0] + TINY_SUITE.split('"model.width" = [8, 16]')[1]
    text += '\n[[points]]\n"model.width" = 4\n\n[[points]]\n"model.width" = 6\n'
    specs = expand(load_suite(write_suite(tmp_path, text)), get_registry())
    assert [s.hparams for s in specs] == [{"model.width": 4}, {"model.width": 6}]


def test_n_models_counts_the_grid_without_expanding_it():
    """Truth: len(expand(...)) on every registry suite and on grids with extra points."""
    from genbench.plugins import get_registry
    from genbench.population import expand
    from genbench.suite import Suite, available_suites, load_suite

    registry = get_registry()
    for name in available_suites():
        s = load_suite(name, registry)
        assert s.n_models() == len(expand(s, registry)), name
    base = load_suite("default", registry).model_dump()
    grid = {"model.width": [8, 16], "train.lr": [0.1, 0.2]}
    for points in ([], [{"model.width": 8, "train.lr": 0.1}], [{"model.width": 32, "train.lr": 0.1}] * 2):
        s = Suite(**{**base, "grid": grid, "points": points, "seeds": [0, 1]})
        assert s.n_models() == len(expand(s, registry)), points
    s = Suite(**{**base, "grid": {}, "points": [{"model.width": 8}, {"model.width": 9}]})
    assert s.n_models() == len(expand(s, registry)) == 2 * len(s.seeds)
