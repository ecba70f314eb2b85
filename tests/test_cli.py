"""The command line, through Typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from genbench.cli import app
from tests.helpers import TINY_SUITE, install_dist, write_suite

runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys, genbench.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "leaderboard" in res.stdout


def test_validate_ok_and_errors(tmp_path):
    res = runner.invoke(app, ["validate", str(write_suite(tmp_path, TINY_SUITE))])
    assert res.exit_code == 0 and "4 models" in res.stdout
    bad = write_suite(tmp_path, TINY_SUITE.replace("lr = 0.1", "lr = 0").replace('"mlp"', '"mpl"'), "bad.toml")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 2 and all(l.startswith("error: ") for l in lines)
    assert "Traceback" not in res.output


def test_run_then_leaderboard_from_store(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE)
    store, out = tmp_path / "store", tmp_path / "run.json"
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--json", str(out),
                              "--device", "cpu", "--markdown", str(tmp_path / "board.md")])
    assert res.exit_code == 0, res.output
    assert "4 trained" in res.stderr and "frobenius_distance" in res.stdout
    result = json.loads(out.read_text())
    assert result["summary"]["trained"] == 4
    assert "frobenius_distance" in (tmp_path / "board.md").read_text()
    res = runner.invoke(app, ["leaderboard", "--store", str(store), "--json", "-"])
    assert res.exit_code == 0
    board = json.loads(res.stdout)["leaderboard"]
    assert board == result["leaderboard"] and list(board) == list(result["leaderboard"])
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert "0 trained, 4 reused" in res.stderr and "0 computed" in res.stderr


def test_leaderboard_without_store_is_one_line(tmp_path):
    res = runner.invoke(app, ["leaderboard", "--store", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no genbench store there" in res.stderr


def test_plugins_json_shows_broken_plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    install_dist(tmp_path / "site", "broken-plugin", "0.3", "broken_plugin",
                 "raise ImportError('missing dependency foo')\n", "broken")
    monkeypatch.setenv("GENBENCH_PLUGINS", "broken")
    res = runner.invoke(app, ["plugins", "--json", "-"])
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["broken"]["error"] == "ImportError: missing dependency foo"
    assert "model:mlp" in rows["models"]["components"]
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and "FAILED" in res.stdout
    res = runner.invoke(app, ["validate", "default"])  # the CLI keeps working
    assert res.exit_code == 0
    sys.modules.pop("broken_plugin", None)


def test_volume_command_on_a_stored_suite(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE)
    store = tmp_path / "store"
    res = runner.invoke(app, ["volume", "--store", str(store), "--suite", str(suite),
                              "--device", "cpu", "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["estimator"] == "laplace" and len(report["models"]) == 4
    for m in report["models"].values():
        assert 0 < m["vol_per_dim_mean"] <= 1 and m["log_vol_sum"] <= 0
        assert set(m["layers"]) == {"0.weight", "2.weight"} or len(m["layers"]) == 2
    res = runner.invoke(app, ["volume", "--store", str(store), "--param", "damping=0.01", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["volume", "--store", str(store), "--param", "dampingg=0.01"])
    assert res.exit_code == 2 and "dampingg" in res.stderr
    # The sampling estimate says how it was obtained: every draw kept, independent, its cost.
    res = runner.invoke(app, ["volume", "--store", str(store), "--estimator", "sampling",
                              "--param", "n_samples=12", "--device", "cpu",
                              "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    for m in json.loads((tmp_path / "s.json").read_text())["models"].values():
        d = m["diagnostics"]
        assert (d["mode"], d["kept"], d["tried"], d["ess_min"]) == ("exact", 12, 12, 12.0)
        assert d["residual"] < 1e-2 and d["epochs"] > d["iterations"] * 12
    # A damaged weights file fails its model only, named; the others are estimated.
    victim = sorted((store / "weights").glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    res = runner.invoke(app, ["volume", "--store", str(store), "--device", "cpu",
                              "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 3 and "1 of 4 laplace estimates failed" in res.output
    damaged = json.loads((tmp_path / "d.json").read_text())
    assert len(damaged["models"]) == 3 and list(damaged["failed"]) == [victim.stem]
    assert victim.name in damaged["failed"][victim.stem] and "Traceback" not in res.output


def test_suites_command_lists_registry():
    res = runner.invoke(app, ["suites", "--json", "-"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["default"]["models"] == 24
    assert {"dropout-rates", "noise", "controls", "vgg-cifar10"} <= set(rows)


# -- a run shared by the tests below (4 tiny models, trained once) -------------------------
import csv  # noqa: E402
import logging  # noqa: E402

import pytest  # noqa: E402
import typer  # noqa: E402

from genbench.export import flat_rows, header_roles  # noqa: E402

CNN_ON_FLAT_DIGITS = TINY_SUITE.replace('name = "mlp"\nparams = { width = 16, depth = 1 }',
                                        'name = "cnn"\nparams = { channels = [4], dense = [8] }'
                                        ).replace('"model.width" = [8, 16]', '"train.lr" = [0.1, 0.05]')


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """genbench.run from Python (default progress: log lines), its store and run JSON."""
    import genbench

    tmp = tmp_path_factory.mktemp("tiny")
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("genbench.progress")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        result = genbench.run(str(write_suite(tmp, TINY_SUITE)), store=tmp / "store",
                              json_path=tmp / "run.json", device="cpu")
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return {"dir": tmp, "store": tmp / "store", "json": tmp / "run.json", "result": result,
            "progress": seen}


def test_a_rerun_with_nothing_to_do_trains_measures_and_imports_nothing(tiny_run, tmp_path):
    """A no-op rerun decides from the store alone: no preflight build, no dataset, no
    torch (its import was most of the rerun's time; docs/performance.md, "Start-up")."""
    code = ("import sys\n"
            "from genbench.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('torch' in sys.modules, code)")
    out = tmp_path / "again.json"
    args = ["run", str(tiny_run["dir"] / "tiny.toml"), "--store", str(tiny_run["store"]),
            "--json", str(out)]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert res.stdout.split()[-2:] == ["False", "0"], res.stderr
    again = json.loads(out.read_text())
    s = again["summary"]
    assert (s["trained"], s["reused"], s["measures_computed"], s["measures_reused"]) == (0, 4, 0, 12)
    assert again["leaderboard"] == tiny_run["result"]["leaderboard"]


def test_library_run_logs_progress_by_default(tiny_run):
    lines = tiny_run["progress"]
    assert any(line.startswith("train: 4/4") for line in lines), lines
    assert any(line.startswith("measure: 12/12") for line in lines), lines   # 4 models x 3 measures


def test_leaderboard_fits_a_100_column_terminal(tiny_run, monkeypatch):
    from rich.console import Console

    import genbench.cli as cli

    monkeypatch.setenv("COLUMNS", "100")      # read by the console at start-up, as in a shell
    monkeypatch.setattr(cli, "console", Console())
    res = runner.invoke(app, ["leaderboard", "--store", str(tiny_run["store"])])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 100, res.stdout
    assert "GG |ω|=1" in res.stdout and "sign-err" in res.stdout and "…" not in res.stdout
    res = runner.invoke(app, ["leaderboard", "--wide", "--store", str(tiny_run["store"])])
    assert "max sign-err" in res.stdout and "…" not in res.stdout      # whole, even if wider


def test_validate_and_run_reject_a_cnn_on_flat_digits(tmp_path):
    suite = write_suite(tmp_path, CNN_ON_FLAT_DIGITS, "cnn.toml")
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model 'cnn'" in lines[0] and "(64,)" in lines[0], res.stderr
    assert "layout" in lines[0] and "Traceback" not in res.output
    res = runner.invoke(app, ["run", str(suite), "--store", str(tmp_path / "s"), "--device", "cpu"])
    assert res.exit_code == 2 and "model 'cnn'" in res.stderr
    assert not (tmp_path / "s" / "genbench.sqlite").exists()             # before any training
    ok = write_suite(tmp_path, CNN_ON_FLAT_DIGITS.replace('name = "digits"',
                                                          'name = "digits"\nparams = { layout = "image" }'),
                     "cnn-image.toml")
    res = runner.invoke(app, ["validate", str(ok)])
    assert res.exit_code == 0 and "4 models (2 architectures built" in res.stdout, res.output


def test_export_then_score_reproduces_the_run_leaderboard(tiny_run, tmp_path):
    want = json.loads(tiny_run["json"].read_text())
    csv_path, jsonl_path = tmp_path / "models.csv", tmp_path / "models.jsonl"
    res = runner.invoke(app, ["export", "--store", str(tiny_run["store"]), "--csv", str(csv_path),
                              "--jsonl", str(jsonl_path)])
    assert res.exit_code == 0, res.output
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert list(rows[0])[:2] == ["key", "seed"] and list(rows[0])[4:6] == ["train_loss", "test_loss"]
    assert set(list(rows[0])[2:4]) == {"against:regularizers.dropout.rate", "hp:model.width"}
    assert {"frobenius_distance", "parameter_norm", "spectral_norm", "engine"} <= set(rows[0])
    assert {r["engine"] for r in rows} == {"batched"}                  # 2 widths x 2 rates: stacked
    for table in (csv_path, jsonl_path, tiny_run["json"]):             # the run's own JSON too
        out = tmp_path / f"{table.name}.scores.json"
        res = runner.invoke(app, ["score", str(table), "--json", str(out)])
        assert res.exit_code == 0, res.output
        got = json.loads(out.read_text())
        assert got["leaderboard"] == want["leaderboard"], table.name   # exactly, every number
        assert got["options"]["condition_on"] == ["model.width"]
        assert got["options"]["against"] == ["regularizers.dropout.rate"]
    # naming the hyperparameter without its role prefix works too
    res = runner.invoke(app, ["score", str(csv_path), "--condition-on", "model.width",
                              "--against", "regularizers.dropout.rate", "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["leaderboard"] == want["leaderboard"]


def test_export_of_a_missing_run_is_one_line(tiny_run):
    res = runner.invoke(app, ["export", "--store", str(tiny_run["store"]), "--run", "99", "--csv", "-"])
    assert res.exit_code == 2 and "--run 99: no such run" in res.stderr
    res = runner.invoke(app, ["export", "--store", str(tiny_run["store"])])
    assert res.exit_code == 2 and "--csv PATH" in res.stderr


def test_export_header_roles_keep_hyperparameters_and_parts_out_of_measures():
    model = {"key": "k1", "seed": 3, "hparams": {"model.depth": 2, "regularizers.dropout.rate": 0.3,
                                                 "train.lr": 0.1},
             "train_loss": 0.1, "test_loss": 0.5, "train_acc": 1.0, "test_acc": 0.9, "gap": 0.4,
             "acc_gap": 0.1, "epochs": 7, "converged": True, "measures": {"pac_s_laplace": 12.5},
             "parts": {"pac_s_laplace": {"sharpness_term": 10.0, "volume_term": 2.5}}}
    (row,) = flat_rows([model], condition_on=["model.depth"], against=["regularizers.dropout.rate"])
    assert row["hp:model.depth"] == 2 and row["against:regularizers.dropout.rate"] == 0.3
    assert row["param:train.lr"] == 0.1                     # in neither role
    assert row["pac_s_laplace.volume_term"] == 2.5 and row["converged"] is True
    cond, against, measures = header_roles(list(row))
    assert cond == ["hp:model.depth"] and against == ["against:regularizers.dropout.rate"]
    assert measures == ["pac_s_laplace"]
    assert header_roles(["lr", "gap", "good"]) == ([], [], None)      # a plain table: no roles


def test_score_leaves_unconverged_models_out(tiny_run, tmp_path):
    rows = [dict(r) for r in flat_rows(tiny_run["result"]["models"], ["model.width"],
                                       ["regularizers.dropout.rate"]) * 2]
    for i, r in enumerate(rows):
        r["converged"] = i != 0
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["score", str(table), "--json", "-"])
    board = json.loads(res.stdout)
    assert board["n_models"] == 7 and board["left_out"] == {"unconverged": 1}
    res = runner.invoke(app, ["score", str(table), "--include-unconverged", "--json", "-"])
    assert json.loads(res.stdout)["n_models"] == 8


def test_batching_off_is_recorded_as_sequential(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE.replace('"model.width" = [8, 16]', '"model.width" = [8]'))
    store = tmp_path / "store"
    res = runner.invoke(app, ["-q", "run", str(suite), "--store", str(store), "--device", "cpu",
                              "--batching", "off"])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""                                             # -q: no summary, no bars
    res = runner.invoke(app, ["export", "--store", str(store), "--csv", "-"])
    rows = list(csv.DictReader(res.stdout.splitlines()))
    assert [r["engine"] for r in rows] == ["sequential", "sequential"]


def _commands():
    return sorted(typer.main.get_command(app).commands)


def test_habits_version_help_and_no_bool_in_help():
    from genbench import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"genbench {__version__}"
    res = runner.invoke(app, ["-h"])
    assert res.exit_code == 0 and "--install-completion" in res.stdout and "-v, --verbose" in res.stdout
    assert {"run", "validate", "leaderboard", "score", "export", "describe", "version"} <= set(_commands())
    for name in _commands():
        res = runner.invoke(app, [name, "-h"])
        assert res.exit_code == 0 and res.stdout.startswith("Usage: ") and f" {name} " in res.stdout, name
        assert "<bool>" not in res.stdout, name
        if name != "export":                                           # a path everywhere
            assert "--json PATH" in res.stdout and "--json " not in res.stdout.replace(
                "--json PATH", ""), name
    assert "--sort COLUMN" in runner.invoke(app, ["leaderboard", "-h"]).stdout
    assert "robust_sign_error" in runner.invoke(app, ["leaderboard", "-h"]).stdout


def test_version_command_reports_torch_cuda_and_plugins():
    import torch

    res = runner.invoke(app, ["version", "--json", "-"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["torch"] == torch.__version__ and info["cuda_build"] == torch.version.cuda
    assert info["plugins"]["models"] and "datasets" in info["plugins"]


def test_json_dash_is_stdout_only_and_a_path_writes_a_file(tiny_run, tmp_path):
    res = runner.invoke(app, ["leaderboard", "--store", str(tiny_run["store"]), "--json", "-"])
    assert json.loads(res.stdout)["suite"] == "tiny"                   # nothing but the JSON
    out = tmp_path / "lb.json"
    res = runner.invoke(app, ["leaderboard", "--store", str(tiny_run["store"]), "--json", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["suite"] == "tiny"
    assert "Measure" in res.stdout                                     # and the table is shown


def test_verbose_shows_info_logs(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE.replace('"model.width" = [8, 16]', '"model.width" = [8]'))
    res = runner.invoke(app, ["-vv", "validate", str(suite)])
    assert res.exit_code == 0
    assert logging.getLogger("genbench").level == logging.DEBUG
    runner.invoke(app, ["-q", "validate", str(suite)])
    assert logging.getLogger("genbench").level == logging.ERROR


def test_describe_lists_params_from_the_pydantic_model():
    res = runner.invoke(app, ["describe", "digits", "--json", "-"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "dataset" and info["plugin"] == "datasets"
    layout = {p["name"]: p for p in info["params"]}["layout"]
    # as written in plugins/datasets.py
    assert layout["type"] == "str" and layout["default"] == "flat"
    assert layout["description"] == "'flat' (N, 64) or 'image' (N, 1, 8, 8)"
    res = runner.invoke(app, ["plugins", "--params", "dataset:digits"])
    assert res.exit_code == 0 and "test_fraction" in res.stdout and "0.3" in res.stdout
    res = runner.invoke(app, ["describe", "digitz"])
    assert res.exit_code == 2 and "did you mean 'digits'" in res.stderr


def test_volume_blames_the_estimator_name_not_its_params():
    res = runner.invoke(app, ["volume", "--estimator", "samplin"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: --estimator:") and "did you mean 'sampling'" in res.stderr


def test_run_with_failed_models_exits_3(tiny_run, tmp_path, monkeypatch):
    import genbench.runner as runner_module

    result = json.loads(json.dumps(tiny_run["result"]))
    result["summary"]["failed"] = 1
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: result)
    res = runner.invoke(app, ["run", str(write_suite(tmp_path, TINY_SUITE)), "--store", str(tmp_path / "s")])
    assert res.exit_code == 3 and "1 failed" in res.stderr, res.output


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, capsys):
    import genbench.cli as cli
    import genbench.introspect as introspect

    def boom(name):
        raise RuntimeError("boom")

    monkeypatch.setattr(introspect, "describe_component", boom)
    monkeypatch.setattr(sys, "argv", ["genbench", "describe", "digits"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err_lines == ["error: internal error: RuntimeError: boom (genbench -vv ... shows the traceback)"]
