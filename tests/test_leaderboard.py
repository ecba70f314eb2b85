"""The leaderboard renders the score dict: columns, signed MI, best-value bold, sorting, width."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from genbench.leaderboard import columns, headline, print_table, rich_table, rows, to_markdown
from genbench.scoring import score_population


def _board(bootstrap=0, max_omega=2, preset="jiang"):
    rng = np.random.default_rng(0)
    n = 60
    g = rng.normal(size=n)
    hp = {"a": rng.integers(0, 2, n), "b": rng.integers(0, 3, n), "dropout": rng.choice([0.0, 0.3], n)}
    measures = {"good": g + 0.3 * rng.normal(size=n), "reversed": -g, "noise": rng.normal(size=n)}
    return score_population(measures, {"loss": g, "acc": g}, hp, ["a", "b"], ["dropout"],
                            preset=preset, max_omega=max_omega, bootstrap=bootstrap, seed=1)


def _entry(mi2, tau, se=0.3, rse=1.0, n=24, **extra):
    return {"mi": {"0": mi2 / 2, "1": mi2 / 1.5, "2": mi2}, "mi_min": {"0": mi2 / 2, "1": mi2 / 2, "2": mi2 / 3},
            "mi_hparam": {"regularizers.dropout.rate": 0.1}, "kendall_tau": tau,
            "granulated_kendall": tau, "sign_error": se, "robust_sign_error": rse,
            "n_models": n, "ci": {}, **extra}


def _hand_board(**extra):
    """A board written by hand: every expected cell below is read off these numbers."""
    return {"preset": "paper", "n_models": 24,
            "options": {"gap": "loss", "normalize": False, "log_base": 2.0, "tie_rule": "drop",
                        "cell_reduce": "mean", "reduce": "mean", "against": ["regularizers.dropout.rate"]},
            "leaderboard": {"perfect": _entry(0.9, 0.8, se=0.1),
                            "backwards": _entry(1.0, -1.0, se=0.9),
                            "weak": _entry(0.2, 0.1, se=0.4)},
            **extra}


def _render(table, width=250) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, color_system=None)
    print_table(console, table)
    return console.export_text()


def _md_cells(line):
    """The cells of a Markdown table row, escaped pipes restored."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _md_body(md):
    lines = md.splitlines()
    header = _md_cells(lines[0])
    body = {}
    for line in lines[2:]:
        if not line.startswith("| "):
            break
        cells = _md_cells(line)
        body[cells[0]] = dict(zip(header, cells))
    return header, body


def test_compact_columns_are_the_headline_gg_tau_and_sign_error():
    board = _hand_board()
    assert [c.id for c in columns(board)] == ["gg2", "gg1", "gg0", "tau", "sign_error"]
    assert headline(board).id == "gg2"
    wide = [c.id for c in columns(board, wide=True)]
    assert wide == ["mi_regularizers.dropout.rate", "gg2", "gg1", "gg0", "gg2_min", "gg1_min",
                    "gg0_min", "tau", "gtau", "sign_error", "robust_sign_error", "sign_error_q90"]
    # the minimum-reducing presets headline the minimum over omega
    jiang = _board()
    assert headline(jiang).id == "gg2_min"
    assert [c.id for c in columns(jiang)] == ["gg2_min", "gg1_min", "gg0_min", "tau", "sign_error"]
    assert "gg2" not in [c.id for c in columns(_board(max_omega=1), wide=True)]


def test_signed_mi_reads_minus_one_for_a_backwards_measure_and_is_not_bold():
    header, body = _md_body(to_markdown(_hand_board()))
    assert header[:3] == ["Measure", "n", "GG |ω|=2"]
    assert body["backwards"]["GG |ω|=2"] == "-1.000"        # MI 1.0 times sign(tau) = -1
    assert body["perfect"]["GG |ω|=2"] == "**0.900**"        # the best signed value is bold
    assert body["backwards"]["tau"] == "-1.000"
    assert body["perfect"]["sign-err"] == "**0.100**"            # lowest sign-error is best
    # sorted by the headline, best first
    assert list(body) == ["perfect", "weak", "backwards"]


def test_direction_from_the_scores_json_wins_over_tau():
    board = _hand_board()
    board["leaderboard"]["weak"]["direction"] = -1                # scores says: backwards
    _, body = _md_body(to_markdown(board))
    assert body["weak"]["GG |ω|=2"] == "-0.200"


def test_none_is_n_a_with_the_reason_and_left_out_in_the_caption():
    board = _hand_board(notes={"robust_sign_error": "every environment holds a single pair"},
                        left_out={"unconverged": 5})
    for e in board["leaderboard"].values():
        e["robust_sign_error"] = None
    md = to_markdown(board, wide=True)
    _, body = _md_body(md)
    assert body["perfect"]["max sign-err"] == "n/a"
    assert "n/a in max sign-err: every environment holds a single pair" in md
    assert "5 unconverged model(s) left out" in md
    text = _render(rich_table(board, wide=True))
    assert "n/a" in text and "single pair" in text and "5 unconverged" in text


def test_sorting_directions_choices_and_unknown_column():
    board = _board()
    lb = board["leaderboard"]
    by_tau = [name for name, _ in rows(board, "tau")]
    assert by_tau == sorted(lb, key=lambda m: -lb[m]["kendall_tau"])
    assert by_tau[-1] == "reversed"
    by_se = [name for name, _ in rows(board, "sign_error")]
    assert by_se == sorted(lb, key=lambda m: lb[m]["sign_error"]) and by_se[0] == "good"
    assert [n for n, _ in rows(board, "mi.0")] == [n for n, _ in rows(board, "gg0")]
    # default: the headline (signed), so the exactly reversed measure comes last, not first
    assert [n for n, _ in rows(board)][-1] == "reversed"
    with pytest.raises(ValueError, match="robust_sign_error"):
        rows(board, "nope")


def test_missing_values_sort_last():
    board = _board()
    board["leaderboard"]["good"]["kendall_tau"] = None
    assert [n for n, _ in rows(board, "tau")][-1] == "good"


def test_fits_100_columns_with_long_names_and_big_populations():
    board = _hand_board()
    names = ["frobenius_distance", "parameter_norm", "spectral_norm", "path_norm",
             "sharpness_alpha", "pac_sharpness", "pac_s_laplace", "pac_s_sampling"]
    board["leaderboard"] = {n: _entry(0.123456 + i / 10, -0.5 + i / 10, n=10000)
                            for i, n in enumerate(names)}
    board["n_models"] = 10000
    text = _render(rich_table(board, title="default: 10000 models"), width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "10000" in text and "…" not in text                    # nothing cut
    assert "GG |ω|=2: sign-MI with the gap" in text               # a legend line per column
    for header in ("GG |ω|=1", "GG |ω|=0", "tau", "sign-err"):
        assert f"{header}:" in text


def test_intervals_are_whole_when_asked_and_wider_than_the_terminal():
    board = _board(bootstrap=20)
    e = board["leaderboard"]["reversed"]
    lo, hi = e["ci"]["mi_min.2"]
    text = _render(rich_table(board, intervals=True), width=60)
    # the reversed measure's interval is flipped with its sign, printed whole
    assert f"[{-hi:.3f}, {-lo:.3f}]" in text and "…" not in text
    assert "[" not in to_markdown(board).split("\n\n")[0]         # not asked: not shown
    assert "shown with --intervals" in to_markdown(board)
    assert f"[{-hi:.3f}, {-lo:.3f}]" in to_markdown(board, intervals=True)


def test_json_is_the_dict():
    board = _board(bootstrap=5)
    assert json.loads(json.dumps(board)) == board


def test_empty_board():
    board = {"preset": "paper", "n_models": 0, "options": {}, "leaderboard": {}}
    assert to_markdown(board).startswith("| Measure | n |")
    assert len(rich_table(board).columns) == 2 + len(columns(board))
    assert [c.id for c in columns(board)] == ["tau", "sign_error"]
