"""`genbench score TABLE`: populations trained elsewhere, and bad tables in one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from genbench.cli import app
from genbench.scoring import score_population

runner = CliRunner()


def population(n=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dropout, depth = [0.0, 0.15, 0.3][i % 3], [1, 2][(i // 3) % 2]
        gap = 1.0 - dropout + 0.1 * depth + 0.05 * rng.standard_normal()
        rows.append({"dropout": dropout, "depth": depth, "gap": gap, "acc_gap": rng.standard_normal(),
                     "good": 2 * gap + 1, "noise": rng.standard_normal(), "name": f"m{i}"})
    return rows


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_scores_match_the_library(tmp_path):
    rows = population()
    table = write_csv(tmp_path / "pop.csv", rows)
    res = runner.invoke(app, ["score", str(table), "--condition-on", "depth", "--against", "dropout",
                              "--json", str(tmp_path / "s.json"), "--markdown", str(tmp_path / "s.md")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "s.json").read_text())
    assert set(got["leaderboard"]) == {"good", "noise"}  # every other numeric column
    arr = lambda k: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
    want = score_population({"good": arr("good"), "noise": arr("noise")},
                            {"loss": arr("gap"), "acc": arr("acc_gap")},
                            {"depth": arr("depth").astype(object), "dropout": arr("dropout").astype(object)},
                            condition_on=["depth"], against=["dropout"], preset="paper")
    assert got == json.loads(json.dumps(want))
    assert got["leaderboard"]["good"]["kendall_tau"] == pytest.approx(1.0)
    assert "good" in (tmp_path / "s.md").read_text()


def test_jsonl_and_pgdl_preset_use_the_accuracy_gap(tmp_path):
    rows = population()
    rows[0]["widths"] = [8, 8]  # a list-valued column is not a measure, and does no harm
    table = tmp_path / "pop.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = runner.invoke(app, ["score", str(table), "--preset", "pgdl", "--measures", "good",
                              "--condition-on", "depth,dropout", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "s.json").read_text())
    arr = lambda k: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
    hp = {h: arr(h).astype(object) for h in ("depth", "dropout")}
    score = lambda gaps: json.loads(json.dumps(score_population(  # noqa: E731
        {"good": arr("good")}, gaps, hp, condition_on=["depth", "dropout"], against=[], preset="pgdl")))
    assert got == score({"loss": arr("gap"), "acc": arr("acc_gap")})
    assert got["leaderboard"] != score({"loss": arr("gap"), "acc": arr("gap")})["leaderboard"]


@pytest.mark.parametrize("mutate, args, message", [
    (lambda rows: rows, ["--gap", "gapp"], "--gap: no column 'gapp' in the table"),
    (lambda rows: rows, ["--condition-on", "width"], "--condition-on: no column 'width'"),
    (lambda rows: [dict(r, good="abc") if i == 4 else r for i, r in enumerate(rows)], [],
     "row 5, column 'good': 'abc' is not a number"),
    (lambda rows: rows[:2], [], "2 model row(s); scoring needs at least 3"),
    (lambda rows: [dict(r, gap=0.5) for r in rows], [], "column 'gap' (--gap) is constant"),
    (lambda rows: [dict(r, gap="") if i == 2 else r for i, r in enumerate(rows)], [],
     "row 3, column 'gap' (--gap): empty"),
    (lambda rows: [dict(r, gap="nan") if i == 1 else r for i, r in enumerate(rows)], [],
     "row 2, column 'gap' (--gap): 'nan' is not finite"),
])
def test_bad_tables_get_one_line(tmp_path, mutate, args, message):
    table = write_csv(tmp_path / "pop.csv", mutate(population()))
    res = runner.invoke(app, ["score", str(table), "--measures", "good,noise", *args])
    assert res.exit_code == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_missing_measure_cells_are_allowed(tmp_path):
    rows = [dict(r, good="") if i < 2 else r for i, r in enumerate(population())]
    table = write_csv(tmp_path / "pop.csv", rows)
    res = runner.invoke(app, ["score", str(table), "--measures", "good", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["leaderboard"]["good"]["n_models"] == 10
