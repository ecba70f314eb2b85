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
    res = runner.invoke(app, ["leaderboard", "--store", str(store), "--json"])
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
    res = runner.invoke(app, ["plugins", "--json"])
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


def test_suites_command_lists_registry():
    res = runner.invoke(app, ["suites", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["default"]["models"] == 24
    assert {"dropout-rates", "noise", "controls", "vgg-cifar10"} <= set(rows)
