"""The leaderboard renders the score dict: columns, best-value highlighting, sorting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genbench.leaderboard import COLUMNS, columns, rich_table, rows, to_markdown
from genbench.scoring import score_population


def _board(bootstrap=0, max_omega=2):
    rng = np.random.default_rng(0)
    n = 60
    g = rng.normal(size=n)
    hp = {"a": rng.integers(0, 2, n), "b": rng.integers(0, 3, n), "dropout": rng.choice([0.0, 0.3], n)}
    measures = {"good": g + 0.3 * rng.normal(size=n), "reversed": -g, "noise": rng.normal(size=n)}
    return score_population(measures, {"loss": g, "acc": g}, hp, ["a", "b"], ["dropout"],
                            preset="jiang", max_omega=max_omega, bootstrap=bootstrap, seed=1)


def _render(table) -> str:
    from rich.console import Console

    console = Console(record=True, width=250, color_system=None)
    console.print(table)
    return console.export_text()


def test_columns_follow_table_2():
    board = _board()
    cols = columns(board)
    ids = [c[0] for c in cols]
    assert ids[:4] == ["mi_dropout", "gg2", "gg1", "gg0"]
    assert ids[4:] == ["gg2_min", "gg1_min", "tau", "gtau", "sign_error", "robust_sign_error"]
    assert dict((c[0], c[3]) for c in cols)["sign_error"] == "low"
    assert dict((c[0], c[3]) for c in cols)["tau"] == "high"
    assert all(len(c) == 4 for c in COLUMNS)
    # a board without |omega| = 2 has no |omega| = 2 columns
    assert "gg2" not in [c[0] for c in columns(_board(max_omega=1))]


def test_sorting_directions_and_unknown_column():
    board = _board()
    lb = board["leaderboard"]
    by_tau = [name for name, _ in rows(board, "tau")]
    assert by_tau == sorted(lb, key=lambda m: -lb[m]["kendall_tau"])
    assert by_tau[-1] == "reversed"                       # tau best = largest (signed)
    by_se = [name for name, _ in rows(board, "sign_error")]
    assert by_se == sorted(lb, key=lambda m: lb[m]["sign_error"])
    assert by_se[0] == "good"                             # sign-error best = smallest
    assert [n for n, _ in rows(board, "mi.0")] == [n for n, _ in rows(board, "gg0")]  # path works too
    with pytest.raises(ValueError, match="gg0"):
        rows(board, "nope")
    with pytest.raises(ValueError, match="sign_error"):
        to_markdown(board, sort_by="nope")


def test_missing_values_sort_last():
    board = _board()
    board["leaderboard"]["noise"]["kendall_tau"] = None
    assert [n for n, _ in rows(board, "tau")][-1] == "noise"


def test_markdown_highlights_best_per_column():
    board = _board()
    md = to_markdown(board, sort_by="gg0")
    lines = md.splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header[0] == "Measure" and "GG ω0" in lines[0]
    assert "\\|" in md.split("\n\n", 1)[1]                           # pipes in |ω| escaped
    body = {l.split("|")[1].strip(): [c.strip() for c in l.strip().strip("|").split("|")]
            for l in lines[2:] if l.startswith("| ") and not l.startswith("| Measure")}
    assert set(body) == {"good", "reversed", "noise"}
    cols = columns(board)
    idx = {c[0]: i + 2 for i, c in enumerate(cols)}
    assert body["good"][idx["tau"]].startswith("**")              # largest tau
    assert not body["reversed"][idx["tau"]].startswith("**")
    assert body["good"][idx["sign_error"]].startswith("**")       # smallest sign-error
    assert not body["reversed"][idx["sign_error"]].startswith("**")
    # MI is blind to direction: the exactly reversed measure has the best MI
    assert body["reversed"][idx["gg0"]].startswith("**")
    # sorted by gg0 (high is better): reversed (MI 1) first
    assert lines[2].startswith("| reversed")


def test_rich_table_renders_and_sorts():
    board = _board()
    table = rich_table(board, sort_by="sign_error", title="T")
    assert table.title == "T"
    assert len(table.columns) == 2 + len(columns(board))
    text = _render(table)
    assert text.index("good") < text.index("noise") < text.index("reversed")
    assert "τ" in text and "MI dropout" in text and "Kendall's tau" in text
    assert "[bold green]" in "".join(str(c) for col in table.columns for c in col._cells)


def test_intervals_shown_when_bootstrapped():
    board = _board(bootstrap=20)
    md = to_markdown(board)
    assert md.count("[") >= 3 and "bootstrap interval" in md
    plain = to_markdown(_board())
    assert "bootstrap" not in plain


def test_json_is_the_dict():
    board = _board(bootstrap=5)
    assert json.loads(json.dumps(board)) == board


def test_empty_board():
    board = {"preset": "paper", "n_models": 0, "options": {}, "leaderboard": {}}
    assert to_markdown(board).startswith("| Measure | n |")
    assert len(rich_table(board).columns) == 2 + len(columns(board))
    assert [c[0] for c in columns(board)] == ["tau", "gtau", "sign_error", "robust_sign_error"]
